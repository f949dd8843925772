"""Named, timed steps of a run, reported to an optional callback (no display here).

The numerical code only calls ``with steps("mixed model") as advance: ...``;
whoever runs it (the CLI draws rich progress bars) passes a callback
``progress(step, done, total)``. The timings go to ``timing.json``, never to
``results.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["ProgressCallback", "Steps"]

ProgressCallback = Callable[[str, int, int], None]
"""``progress(step, done, total)``: step ``step`` has ``done`` of ``total`` units."""


class Steps:
    """Times named steps and reports their progress to ``callback`` (if any)."""

    def __init__(self, callback: ProgressCallback | None = None) -> None:
        self.timings: dict[str, float] = {}
        self._callback = callback

    def _report(self, step: str, done: int, total: int) -> None:
        if self._callback is not None:
            self._callback(step, done, total)

    @contextmanager
    def __call__(self, step: str, total: int = 1) -> Iterator[Callable[..., None]]:
        """Run one step; yields ``advance(done=None, total=None)`` (by one, or set)."""
        start = time.perf_counter()
        state = {"done": 0, "total": total}
        self._report(step, 0, total)

        def advance(done: int | None = None, total_now: int | None = None) -> None:
            if done is None:
                state["done"] += 1
            else:
                state["done"] = done
                state["total"] = total_now or state["total"]
            self._report(step, state["done"], state["total"])

        yield advance
        self._report(step, state["total"], state["total"])
        self.timings[step] = round(time.perf_counter() - start, 3)
