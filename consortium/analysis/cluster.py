"""Open the ``dask.distributed`` client that runs permutation batches on a cluster.

Callers (``confed analyze --scheduler ADDRESS``, the coordinator's analysis jobs
with the ``scheduler`` setting) open the client with :func:`connect` and pass it
to :func:`consortium.analysis.pipeline.run`; numerical code never opens one.
Without an address the permutations run on dask's local scheduler. The results
are the same bit for bit either way (see :mod:`consortium.analysis.permutation`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from consortium.analysis.errors import AnalysisError

__all__ = ["CONNECT_TIMEOUT", "connect"]

CONNECT_TIMEOUT = 10  # seconds to reach the scheduler before giving up


@contextmanager
def connect(address: str | None) -> Iterator[Any]:
    """A client of the scheduler at ``address`` (None: yields None), closed on exit.

    While open the client is dask's default scheduler, so the dask arrays of an
    analysis (e.g. harmonized voxel chunks) run on the cluster too; the permutation
    batches are submitted to it explicitly.

    Raises
    ------
    AnalysisError
        The scheduler cannot be reached (naming the address).
    """
    if address is None:
        yield None
        return
    from distributed import Client

    try:
        client = Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise AnalysisError(f"scheduler {address!r} cannot be reached: {exc}") from exc
    try:
        yield client
    finally:
        client.close()
