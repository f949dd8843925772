"""The minimum-cell-size rule of remote analyses, shared by coordinator and site agent.

One definition of the rule ``min_cell_size``: every group a result describes (each
level of every listed column, and the whole analysed set) has at least ``minimum``
subjects. The coordinator applies it to pooled remote analyses
(:func:`consortium.proposals.disclosure.check_cells`); a site agent applies it to
its own subjects before it computes a federated remote analysis
(:mod:`sites.federated.query`). Pure: no coordinator code.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

__all__ = ["MIN_CELL_RULE", "CellSizeError", "cell_counts"]

MIN_CELL_RULE = "min_cell_size"


class CellSizeError(ValueError):
    """A group below the minimum cell size (``rule`` is ``"min_cell_size"``)."""

    rule = MIN_CELL_RULE


def cell_counts(frame: pd.DataFrame, columns: Iterable[str], minimum: int) -> dict:
    """Counts per level of each column; :class:`CellSizeError` if any is below ``minimum``.

    Parameters
    ----------
    frame : DataFrame
        The analysed subjects, one row each.
    columns : iterable of str
        Categorical columns whose every level is a group the result describes.
    minimum : int
        The minimum cell size.

    Returns
    -------
    dict
        ``{column: {level: count}}``.
    """
    counts = {}
    for column in columns:
        levels = frame[column].value_counts().sort_index()
        small = levels[levels < minimum]
        if len(small):
            level, n = small.index[0], int(small.iloc[0])
            raise CellSizeError(
                f"group {column}={level} has {n} subjects, fewer than the minimum cell "
                f"size {minimum}"
            )
        counts[column] = {str(k): int(v) for k, v in levels.items()}
    if len(frame) < minimum:
        raise CellSizeError(f"{len(frame)} subjects, fewer than the minimum {minimum}")
    return counts
