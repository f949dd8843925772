"""Benchmark of the portal's paginated lists: 1,000 proposals and 10,000 audit entries.

Builds a coordinator root with ``P`` proposals (drafted by one researcher through
the lifecycle functions, on the release of three synthetic sites) and audit
entries up to ``A`` (appended through :func:`consortium.audit.append`, so the
hash chain is real), serves it with ``confed coord serve`` and requests each
page ``N`` times over HTTP with a signed-in session: first, middle and last page
of ``/proposals`` (committee and researcher) and of ``/audit`` (admin, also
filtered). Prints the median and the 90th percentile per page; exits 1 when a
median exceeds the 300 ms budget.

Run: ``.venv/bin/python benchmarks/bench_portal.py [N] [P] [A]`` (default 20 1000 10000).
"""

from __future__ import annotations

import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.consortium.test_authorization_matrix import REQUEST, World  # noqa: E402

BUDGET_S = 0.300


def seed(world: World, n_proposals: int, n_audit: int) -> None:
    from consortium import audit
    from consortium.db.models import AuditEntry
    from consortium.proposals import lifecycle
    from consortium.proposals.models import Member

    with world.coord.db.session() as s:
        member = s.get(Member, world.members["r_nogrant"])
        for i in range(n_proposals):
            lifecycle.create_proposal(s, world.coord.store, member, "bench",
                                      {**REQUEST, "title": f"Benchmark study {i}"})
    with world.coord.db.session() as s:
        have = s.query(AuditEntry).count()
        for i in range(max(0, n_audit - have)):
            audit.append(s, "bench", "bench.entry", f"bench:{i}", {"i": i})


def session(world: World, role: str) -> httpx.Client:
    c = httpx.Client(base_url=world.server.url, timeout=60)
    c.get("/signin")
    r = c.post("/signin", data={"token": world.tokens[role],
                                "csrf_token": c.cookies["confed_presession"]})
    assert r.status_code == 303, r.text
    return c


def pages(client: httpx.Client, path: str) -> int:
    found = re.search(r"Page \d+ of (\d+)", client.get(path).text)
    return int(found.group(1)) if found else 1


def timed(client: httpx.Client, path: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        r = client.get(path)
        times.append(time.perf_counter() - start)
        assert r.status_code == 200, (path, r.status_code)
    return times


def main(n: int = 20, n_proposals: int = 1000, n_audit: int = 10_000) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-portal-"))
    world = World(tmp)
    try:
        world.server.kill(signal.SIGTERM)
        start = time.perf_counter()
        seed(world, n_proposals, n_audit)
        print(f"seeded {n_proposals} proposals and {n_audit} audit entries in "
              f"{time.perf_counter() - start:.0f} s")
        world.server.start()
        clients = {r: session(world, r) for r in ("admin", "steering", "r_nogrant")}
        worst = 0.0
        for role, base in (("steering", "/proposals?"), ("r_nogrant", "/proposals?"),
                           ("admin", "/audit?"), ("admin", "/audit?action=bench.&")):
            last = pages(clients[role], base + "page=1")
            for number in sorted({1, max(1, last // 2), last}):
                path = f"{base}page={number}"
                times = timed(clients[role], path, n)
                median = statistics.median(times)
                p90 = statistics.quantiles(times, n=10)[-1]
                worst = max(worst, median)
                print(f"{role:<10} {path:<32} of {last:>4} pages: median {median * 1000:6.1f} ms, "
                      f"p90 {p90 * 1000:6.1f} ms")
        print(f"worst median {worst * 1000:.1f} ms (budget {BUDGET_S * 1000:.0f} ms)")
        return 0 if worst <= BUDGET_S else 1
    finally:
        world.close()


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:])))
