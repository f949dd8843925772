"""The site's own data a federated task names: its subject table and outcome array.

A task's ``source`` says which outcomes of the site's bundle it uses::

    {"type": "networks", "atlas": "ho111", "columns": ["default__default"]}
    {"type": "connectivity", "atlas": "ho111"}        # every edge
    {"type": "columns", "columns": ["some_phenotype"]}

A ``connectivity`` or ``networks`` source may add ``"harmonized": "<task id>"``: the
site's connectivity harmonized by its own ``combat_apply`` task of that id (kept in
the agent's ``outputs/``, never sent); network means are then recomputed from the
harmonized edges with the bundle's atlas, as the pooled pipeline does.

The subject table is the bundle's ``subjects.parquet``, rows in the bundle's order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from sites.federated.messages import MessageError

__all__ = ["resolve"]


def _networks(bundle: Any, atlas: str, harmonized: np.ndarray | None) -> pd.DataFrame:
    if harmonized is None:
        return bundle.network_summaries(atlas)
    from sites.connectivity import network_summaries

    return network_summaries(harmonized, bundle.atlas(atlas))


def resolve(
    bundle: Any, source: Mapping[str, Any], harmonized: np.ndarray | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """Subject table and outcomes (subjects x features, float64) named by ``source``.

    ``harmonized`` is the site's harmonized connectivity the source names (see the
    module docstring), used instead of the bundle's.
    """
    kind = source.get("type")
    table = bundle.subjects.reset_index(drop=True)
    if harmonized is not None:
        if kind not in ("connectivity", "networks"):
            raise MessageError(f"source.harmonized: not available for source type {kind!r}")
        if harmonized.shape[0] != len(table):
            raise MessageError(
                f"source.harmonized: {harmonized.shape[0]} harmonized rows, "
                f"{len(table)} subjects in the bundle"
            )
    if kind == "connectivity":
        edges = bundle.connectivity(source["atlas"]) if harmonized is None else harmonized
        return table, np.asarray(edges, dtype=np.float64)
    if kind in ("networks", "columns"):
        frame = (
            _networks(bundle, source["atlas"], harmonized) if kind == "networks"
            else bundle.subjects
        )  # fmt: skip
        columns = list(source.get("columns") or [])
        missing = [c for c in columns if c not in frame.columns]
        if not columns or missing:
            raise MessageError(
                f"source.columns: {missing or 'none given'} not in the site's {kind} "
                f"(available: {sorted(map(str, frame.columns))[:10]})"
            )
        return table, frame[columns].to_numpy(dtype=np.float64)
    raise MessageError(f"source.type: {kind!r} is not one of connectivity, networks, columns")
