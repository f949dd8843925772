"""The site's own data a federated task names: its subject table and outcome array.

A task's ``source`` says which outcomes of the site's bundle it uses::

    {"type": "networks", "atlas": "ho111", "columns": ["default__default"]}
    {"type": "connectivity", "atlas": "ho111"}        # every edge
    {"type": "columns", "columns": ["some_phenotype"]}

The subject table is the bundle's ``subjects.parquet``, rows in the bundle's order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from sites.federated.messages import MessageError

__all__ = ["resolve"]


def resolve(bundle: Any, source: Mapping[str, Any]) -> tuple[pd.DataFrame, np.ndarray]:
    """Subject table and outcomes (subjects x features, float64) named by ``source``."""
    kind = source.get("type")
    table = bundle.subjects.reset_index(drop=True)
    if kind == "connectivity":
        return table, np.asarray(bundle.connectivity(source["atlas"]), dtype=np.float64)
    if kind in ("networks", "columns"):
        frame = (
            bundle.network_summaries(source["atlas"]) if kind == "networks" else bundle.subjects
        )
        columns = list(source.get("columns") or [])
        missing = [c for c in columns if c not in frame.columns]
        if not columns or missing:
            raise MessageError(
                f"source.columns: {missing or 'none given'} not in the site's {kind} "
                f"(available: {sorted(map(str, frame.columns))[:10]})"
            )
        return table, frame[columns].to_numpy(dtype=np.float64)
    raise MessageError(f"source.type: {kind!r} is not one of connectivity, networks, columns")
