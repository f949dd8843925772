"""Benchmark of command-line start-up: ``confed --help`` and ``confed-site --help``.

Runs each installed console script (next to this interpreter, e.g. ``.venv/bin``)
``N`` times in a fresh process and prints the median and minimum wall time,
with ``python -c pass`` as the floor (the interpreter alone), and the median
CPU time (user + system) of the process, which depends less on what else
the machine is doing. Exits 1 when a median wall time exceeds the 0.5 s budget.

Run: ``.venv/bin/python benchmarks/bench_startup.py [N]`` (default 10).
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BUDGET_S = 0.5
BIN = Path(sys.executable).parent


def run_times(command: list[str], n: int) -> tuple[list[float], list[float]]:
    """Wall and CPU times of ``n`` runs of ``command`` (output discarded).

    Raises ``CalledProcessError`` on a non-zero exit.
    """
    walls, cpus = [], []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return walls, cpus


def main(n: int = 10) -> int:
    commands = {
        "python -c pass (floor)": ([sys.executable, "-c", "pass"], False),
        "confed --help": ([str(BIN / "confed"), "--help"], True),
        "confed-site --help": ([str(BIN / "confed-site"), "--help"], True),
    }
    over = []
    print(f"{'command':<24} {'median s':>9} {'min s':>7} {'cpu s':>7}  (wall; n={n})")
    for label, (command, budgeted) in commands.items():
        walls, cpus = run_times(command, n)
        median = statistics.median(walls)
        print(f"{label:<24} {median:>9.3f} {min(walls):>7.3f} {statistics.median(cpus):>7.3f}")
        if budgeted and median > BUDGET_S:
            over.append(label)
    if over:
        print(f"over the {BUDGET_S} s budget: {', '.join(over)}")
        return 1
    print(f"all medians within the {BUDGET_S} s budget")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10))
