"""Atlas rules of the contract: the layout of an atlas table ``atlases/<name>.tsv``.

Part of the site–coordinator contract (:mod:`sites.contract` re-exports the
public names): the ROI label rule (:data:`ATLAS_LABEL_RE`), the columns
(:data:`ATLAS_COLUMNS`) and :func:`check_atlas_table`.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from sites.naming import ContractError, check_name
from sites.table_rules import check_columns

#: One ROI label of an atlas table: a letter or digit, then up to 79 letters, digits,
#: spaces or ``_ . , : ' ( ) / + -`` (``"Left Frontal Pole"``); never a tab or newline.
ATLAS_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.,:'()/+-]{0,79}")
#: Columns of an atlas table ``atlases/<name>.tsv`` (``x, y, z`` optional, together).
ATLAS_COLUMNS = ("index", "label", "network", "dmn", "x", "y", "z")


def n_rois_of(n_edges: int) -> int:
    """The number of ROIs whose upper triangle has ``n_edges`` edges (or -1 if none)."""
    n = int(round((1 + math.sqrt(1 + 8 * n_edges)) / 2))
    return n if n * (n - 1) // 2 == n_edges else -1


def check_atlas_table(table: pd.DataFrame, n_edges: int | None, where: str) -> None:
    """Check an atlas table (``atlases/<name>.tsv``) of a bundle.

    Parameters
    ----------
    table : DataFrame
        Columns :data:`ATLAS_COLUMNS` (``x, y, z`` optional); one row per ROI.
    n_edges : int or None
        Edges of the atlas's connectivity; the table must have the ROIs they imply.
    where : str
        The file, for messages.

    Raises
    ------
    ContractError
        ``index`` not 1..n in order, a label outside :data:`ATLAS_LABEL_RE`, a
        network that is not a valid name, ``dmn`` not 0/1, coordinates not
        finite numbers, or a row count that does not match ``n_edges``.
    """
    required = ATLAS_COLUMNS[:4]
    coords = [c for c in ("x", "y", "z") if c in table.columns]
    if coords and len(coords) != 3:
        raise ContractError(f"{where}: columns x, y, z must come together")
    check_columns(table, ATLAS_COLUMNS, required, where)
    n = len(table)
    index = pd.to_numeric(table["index"], errors="coerce").to_numpy()
    if n == 0 or not np.array_equal(index, np.arange(1, n + 1)):
        raise ContractError(f"{where}: column 'index' must be 1..{n} in order")
    if n_edges is not None and n * (n - 1) // 2 != n_edges:
        raise ContractError(
            f"{where}: {n} ROIs but the connectivity has {n_edges} edges "
            f"({n_rois_of(n_edges)} ROIs)"
        )
    for i, label in enumerate(table["label"]):
        if not isinstance(label, str) or not ATLAS_LABEL_RE.fullmatch(label):
            raise ContractError(
                f"{where}: label of ROI {i + 1} {str(label)[:80]!r} is not a valid atlas "
                "label (1-80 letters, digits, spaces or _ . , : ' ( ) / + -)"
            )
    for i, network in enumerate(table["network"]):
        check_name(network, f"{where}: network of ROI {i + 1}")
    if not table["dmn"].isin([0, 1]).all():
        raise ContractError(f"{where}: column 'dmn' must hold 0 or 1")
    if coords:
        values = table[coords].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(values).all():
            raise ContractError(f"{where}: columns x, y, z must hold finite numbers")
