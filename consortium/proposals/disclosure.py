"""Statistical disclosure control for remote analyses.

Rules checked before any result leaves the coordinator (a refusal names its rule):

``min_cell_size``
    Every group a result describes has at least ``min_cell_size`` subjects: each
    site, each diagnostic group, and each level of every categorical covariate in
    the analysed subset (default 10, as REST-meta-MDD's per-site minimum).
``strata``
    Every released result is computed on a union of whole cells (site x diagnosis x
    the grant's strata, :mod:`consortium.proposals.strata`), each of at least
    ``min_cell_size`` subjects; filters that would split a cell are refused.
``differencing``
    Kept per researcher across all their proposals: the subject sets of every
    released result. A new result is refused if, together with them, it would let
    any combination of released subject sets (differences, intersections, unions)
    describe 1 to ``min_cell_size - 1`` subjects of one site and diagnosis. Checking
    pairs of queries is not enough (three or four overlapping queries can isolate one
    subject while every pair differs by many); the check runs on the *atoms* of all
    released sets -- the groups of subjects that lie in exactly the same released
    sets -- since every combination of released sets is a union of atoms.
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
from sites.disclosure import CellSizeError, cell_counts


class DisclosureRefused(ConfedError):
    """A remote query refused by a disclosure rule (HTTP 422, code ``disclosure_refused``)."""

    def __init__(self, rule: str, message: str):
        super().__init__("disclosure_refused", f"refused by rule {rule}: {message}", 422)
        self.rule = rule


def check_cells(frame: pd.DataFrame, columns: Iterable[str], minimum: int) -> dict:
    """Counts per level of each column; refuse if any is below ``minimum``.

    The rule itself is :func:`sites.disclosure.cell_counts` (shared with the site
    agents, which apply it before computing a federated remote analysis).
    """
    try:
        return cell_counts(frame, columns, minimum)
    except CellSizeError as exc:
        raise DisclosureRefused(exc.rule, str(exc)) from None


def check_history(
    released: Mapping[str, set[str]],
    history: Mapping[int, Mapping[str, set[str]]],
    minimum: int,
) -> None:
    """Refuse a subject set that would let released results isolate a small group.

    Parameters
    ----------
    released : mapping
        ``"site/dx"`` -> subject ids of the set about to be released.
    history : mapping
        Id of every earlier released set of the same researcher (all proposals) ->
        its ``"site/dx"`` -> subject ids (ids comparable across proposals).
    minimum : int
        The minimum cell size.

    Notes
    -----
    Every combination of released sets (differences, intersections, unions, and so
    any signed sum of their aggregates) is a union of *atoms*: subjects sharing the
    same membership in all released sets. Within each site and diagnosis, every
    atom the new set creates or splits must hold 0 or >= ``minimum`` subjects.
    Atoms the new set does not touch are left as they are.
    """
    for group, new in released.items():
        membership: dict[str, set[int]] = {}
        for set_id, groups in history.items():
            for subject in groups.get(group, ()):
                membership.setdefault(subject, set()).add(set_id)
        touched = {frozenset(membership.get(s, ())) for s in new}
        counts: dict[tuple[frozenset[int], bool], int] = {}
        for subject in new:
            key = (frozenset(membership.get(subject, ())), True)
            counts[key] = counts.get(key, 0) + 1
        for subject, sets in membership.items():
            atom = frozenset(sets)
            if subject not in new and atom in touched:
                counts[atom, False] = counts.get((atom, False), 0) + 1
        small = sorted(sorted(atom) for (atom, _), n in counts.items() if 0 < n < minimum)
        if small:
            earlier = sorted({i for atom in small for i in atom})
            raise DisclosureRefused(
                "differencing",
                f"combined with your earlier released results (released sets "
                f"{', '.join(map(str, earlier)) or 'none'}), this query would let a group of "
                f"fewer than {minimum} subjects of {group} be isolated by differencing; "
                "choose whole strata that coincide with, or differ by whole cells from, "
                "what you have already received",
            )
