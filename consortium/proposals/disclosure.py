"""Statistical disclosure control for remote analyses.

Rules checked before any result leaves the coordinator (a refusal names its rule):

``min_cell_size``
    Every group a result describes has at least ``min_cell_size`` subjects: each
    site, each diagnostic group, and each level of every categorical covariate in
    the analysed subset (default 10, as REST-meta-MDD's per-site minimum).
``differencing``
    Two queries of the same proposal whose analysed subject sets differ in fewer
    than ``min_cell_size`` subjects (symmetric difference, not zero) are refused,
    since subtracting their aggregates would describe that small set. Only released
    queries count; identical subject sets are allowed (another model, same people).
    The rule compares pairs of queries; a chain of three or more queries is limited
    only through the per-pair rule.
``aggregate_only``
    Results are built from a fixed schema of model-level aggregates (coefficients,
    standard errors, test statistics, variance components, group counts); no
    residuals, fitted values, random-effect predictions or subject identifiers.

References
----------
Hundepool A et al. (2012). Statistical Disclosure Control. Wiley. Chapter 4.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

from consortium.errors import ConfedError


class DisclosureRefused(ConfedError):
    """A remote query refused by a disclosure rule (HTTP 422, code ``disclosure_refused``)."""

    def __init__(self, rule: str, message: str):
        super().__init__("disclosure_refused", f"refused by rule {rule}: {message}", 422)
        self.rule = rule


def check_cells(frame: pd.DataFrame, columns: Iterable[str], minimum: int) -> dict:
    """Counts per level of each column; refuse if any is below ``minimum``."""
    counts = {}
    for column in columns:
        levels = frame[column].value_counts().sort_index()
        small = levels[levels < minimum]
        if len(small):
            level, n = small.index[0], int(small.iloc[0])
            raise DisclosureRefused(
                "min_cell_size",
                f"group {column}={level} has {n} subjects, fewer than the minimum cell "
                f"size {minimum}",
            )
        counts[column] = {str(k): int(v) for k, v in levels.items()}
    if len(frame) < minimum:
        raise DisclosureRefused(
            "min_cell_size", f"{len(frame)} subjects, fewer than the minimum {minimum}"
        )
    return counts


def check_differencing(subjects: set[str], previous: Mapping[int, set[str]], minimum: int) -> None:
    """Refuse if the subject set differs from an earlier query's by 1..minimum-1 subjects."""
    for query_id, other in previous.items():
        diff = len(subjects ^ other)
        if 0 < diff < minimum:
            raise DisclosureRefused(
                "differencing",
                f"the subjects of this query differ from those of query {query_id} by {diff}, "
                f"fewer than the minimum cell size {minimum}; comparing the two would "
                "disclose a small group",
            )
