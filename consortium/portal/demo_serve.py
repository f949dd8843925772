"""After ``confed demo``: keep its coordinator running with the portal, until Ctrl-C.

Issues a one-day admin token and a one-time sign-in link for it (audited like any
token and link), prints the portal's address and the link, then serves the demo's
coordinator root with :func:`consortium.server.serve`.
"""

from __future__ import annotations

from pathlib import Path

DEMO_PORT = 8700


def signin_link(root: Path, url: str) -> str:
    """A one-time sign-in link for a new one-day admin token of ``root``."""
    from consortium.auth import issue_token
    from consortium.coordinator import Coordinator
    from consortium.portal.sessions import issue_link

    coord = Coordinator.open(root)
    try:
        with coord.db.session() as session:
            token, _plaintext = issue_token(session, "admin", label="demo portal", days=1)
            secret = issue_link(session, token.id, "demo:operator", hours=24)
    finally:
        coord.close()
    return f"{url}/signin/link/{secret}"


def serve_demo(root: Path, port: int = DEMO_PORT, echo=print) -> None:
    """Print the portal address and a sign-in link, then serve until Ctrl-C."""
    from consortium.server import serve

    url = f"http://127.0.0.1:{port}"
    echo(f"\nportal: {url}/   (API: {url}/api/v1)")
    echo(f"sign in as the operator (one-time link): {signin_link(root, url)}")
    echo("serving until Ctrl-C ...")
    try:
        serve(str(root), host="127.0.0.1", port=port)
    except KeyboardInterrupt:
        pass
