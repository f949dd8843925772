"""Site key material for tests: Ed25519 key pairs and ``confed site init`` folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sites.keys import generate_keypair
from sites.pseudonym import new_secret


@dataclass(frozen=True)
class SiteFiles:
    """What ``confed site init`` makes for one site.

    Attributes
    ----------
    site_id : str
        The site's identifier.
    root : Path
        The site's folder.
    config_path, private_key_path, public_key_path, secret_path : Path
        ``site.toml``, the Ed25519 key pair (PEM) and the pseudonymization secret.
    """

    site_id: str
    root: Path
    config_path: Path
    private_key_path: Path
    public_key_path: Path
    secret_path: Path

    @property
    def keys_toml(self) -> str:
        """The ``[keys]`` table of a ``site.toml`` naming these files (no final newline)."""
        return (
            f'[keys]\nprivate_key = "{self.private_key_path}"\n'
            f'public_key = "{self.public_key_path}"\nsecret = "{self.secret_path}"'
        )


def make_keys(folder: Path, site_id: str) -> tuple[Path, Path]:
    """Write an Ed25519 key pair ``<site_id>.pem`` / ``<site_id>.pub.pem`` into ``folder``.

    Returns
    -------
    tuple of Path
        (private PEM path, public PEM path).
    """
    folder.mkdir(parents=True, exist_ok=True)
    return generate_keypair(folder / f"{site_id}.pem", folder / f"{site_id}.pub.pem")


def make_site(tmp_path: Path, site_id: str) -> SiteFiles:
    """Run ``confed site init`` for ``site_id`` in ``tmp_path / site_id``.

    Makes the key pair, the pseudonymization secret and a template ``site.toml``.
    """
    from typer.testing import CliRunner

    from sites.cli import app

    root = Path(tmp_path) / site_id
    root.mkdir(parents=True, exist_ok=True)
    config = root / "site.toml"
    result = CliRunner().invoke(app, ["init", "--site-id", site_id, "--out", str(config)])
    if result.exit_code != 0:
        raise RuntimeError(f"confed site init failed: {result.output}")
    return SiteFiles(
        site_id=site_id,
        root=root,
        config_path=config,
        private_key_path=root / "keys" / "site_ed25519.pem",
        public_key_path=root / "keys" / "site_ed25519.pub.pem",
        secret_path=root / "keys" / "pseudonym.secret",
    )


def site_files_in(root: Path, site_id: str) -> SiteFiles:
    """Key pair and secret for ``site_id`` directly in ``root`` (made once, then reused).

    ``config_path`` is ``root / "site.toml"`` and is not written.
    """
    root.mkdir(parents=True, exist_ok=True)
    private, public = root / "site_ed25519.pem", root / "site_ed25519.pub.pem"
    if not private.exists():
        generate_keypair(private, public)
        new_secret(root / "pseudonym.secret")
    return SiteFiles(site_id, root, root / "site.toml", private, public, root / "pseudonym.secret")
