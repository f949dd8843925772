"""Covariate sensitivity: the main effect with all covariates and each one left out.

A conclusion that holds only with one particular covariate set is fragile:
in ABIDE, adjusting the edge-wise model for mean framewise displacement
changes the number of FDR-significant edges from 80 to 1,053. The table built
here refits the main effect once with every covariate and once more per
covariate, leaving that one out.

The refit itself belongs to the analysis kind: :func:`covariate_sensitivity`
calls ``fit(covariates)`` and only tabulates. ``fit`` must redo every step
that depends on the covariates (a harmonizer that preserves covariates is
refitted too) on the same subjects, so that the rows differ by the covariate
alone.

A main effect is either a single model's diagnosis effect (estimate, t, d, p)
or a mass-univariate summary (:meth:`MainEffect.from_mass`: the number of
features with FDR q below alpha, and t and d of the feature with the largest
|t|).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from consortium.analysis.design import Design
    from consortium.analysis.results import MixedModelFit

__all__ = [
    "CovariateSensitivity",
    "MainEffect",
    "SensitivityRow",
    "covariate_sensitivity",
    "design_with_covariates",
    "effect_of_model",
]


@dataclass(frozen=True)
class MainEffect:
    """The diagnosis effect of one model fit.

    Attributes
    ----------
    t, d : float
        t and Cohen's d of diagnosis (for a mass analysis: of the feature with
        the largest |t|).
    estimate, p : float or None
        Diagnosis coefficient and its p (single-model analyses).
    n_significant, n_features : int or None
        Features with FDR q < alpha, and features tested (mass analyses).
    """

    t: float
    d: float
    estimate: float | None = None
    p: float | None = None
    n_significant: int | None = None
    n_features: int | None = None

    @classmethod
    def from_mass(
        cls, t: np.ndarray, d: np.ndarray, q: np.ndarray, alpha: float = 0.05
    ) -> MainEffect:
        """Summary of a mass-univariate fit: FDR count and the peak |t| feature."""
        t, d, q = (np.asarray(v, dtype=float) for v in (t, d, q))
        if not (t.shape == d.shape == q.shape) or t.ndim != 1 or t.size == 0:
            raise ValueError(f"t, d and q must be 1-D of equal length, got {t.shape}, {d.shape}, "
                             f"{q.shape}")
        peak = int(np.nanargmax(np.abs(t)))
        return cls(
            t=float(t[peak]),
            d=float(d[peak]),
            n_significant=int((q < alpha).sum()),
            n_features=int(t.size),
        )


@dataclass(frozen=True)
class SensitivityRow:
    """One refit: which covariate was left out (None: all kept) and its effect."""

    left_out: str | None
    covariates: tuple[str, ...]
    effect: MainEffect | None
    error: str | None = None


@dataclass(frozen=True)
class CovariateSensitivity:
    """The sensitivity table of one analysis (first row: all covariates)."""

    outcome: str
    harmonizer: str
    rows: tuple[SensitivityRow, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able record."""
        return {
            "outcome": self.outcome,
            "harmonizer": self.harmonizer,
            "rows": [
                {
                    "left_out": r.left_out,
                    "covariates": list(r.covariates),
                    "effect": asdict(r.effect) if r.effect is not None else None,
                    "error": r.error,
                }
                for r in self.rows
            ],
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> CovariateSensitivity:
        """Inverse of :meth:`to_dict`."""
        try:
            rows = tuple(
                SensitivityRow(
                    r["left_out"],
                    tuple(r["covariates"]),
                    MainEffect(**r["effect"]) if r.get("effect") else None,
                    r.get("error"),
                )
                for r in record["rows"]
            )
            return cls(str(record["outcome"]), str(record["harmonizer"]), rows)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"covariate sensitivity: malformed record ({exc})") from exc


def covariate_sensitivity(
    fit: Callable[[tuple[str, ...]], MainEffect],
    covariates: Sequence[str],
    *,
    outcome: str,
    harmonizer: str,
    main: MainEffect | None = None,
) -> CovariateSensitivity:
    """Refit the main effect with all covariates and with each one left out in turn.

    Parameters
    ----------
    fit : callable
        ``fit(covariates) -> MainEffect`` for a tuple of covariate names (same
        subjects every time). A ``ValueError`` it raises (a singular design,
        say) is recorded in that row's ``error`` instead of failing the table.
    covariates : sequence of str
        The covariates of the main analysis, in order.
    outcome : str
        What the effect is on, in words ("mean DMN FC", "edges").
    harmonizer : str
        Registered name of the harmonizer of the main analysis.
    main : MainEffect, optional
        The main analysis' own effect, used for the all-covariates row instead
        of a refit (the same fit: saves one model).

    Returns
    -------
    CovariateSensitivity
    """
    covariates = tuple(covariates)
    if len(set(covariates)) != len(covariates):
        raise ValueError(f"covariates are listed twice: {covariates}")
    rows = [_row(fit, None, covariates, main)]
    for name in covariates:
        kept = tuple(c for c in covariates if c != name)
        rows.append(_row(fit, name, kept, None))
    return CovariateSensitivity(outcome, harmonizer, tuple(rows))


def _row(
    fit: Callable[[tuple[str, ...]], MainEffect],
    left_out: str | None,
    covariates: tuple[str, ...],
    known: MainEffect | None,
) -> SensitivityRow:
    if known is not None:
        return SensitivityRow(left_out, covariates, known)
    try:
        effect = fit(covariates)
    except ValueError as exc:
        return SensitivityRow(left_out, covariates, None, str(exc))
    if not isinstance(effect, MainEffect):
        raise TypeError(f"fit returned {type(effect).__name__}, expected MainEffect")
    return SensitivityRow(left_out, covariates, effect)


def design_with_covariates(design: Design, covariates: Sequence[str]) -> Design:
    """The same subjects (rows, sites, diagnosis) with only ``covariates`` in the model."""
    unknown = [c for c in covariates if c not in design.covariates]
    if unknown:
        raise ValueError(f"covariate {unknown[0]!r} is not in the design ({design.covariates})")
    data = design.data[["site", "dx", *covariates]].copy()
    return dataclasses.replace(design, data=data, covariates=list(covariates))


def effect_of_model(fit: MixedModelFit, term: str = "dx") -> MainEffect:
    """The diagnosis effect of a :class:`~consortium.analysis.results.MixedModelFit`."""
    estimate = next((c.estimate for c in fit.coefficients if c.term == term), None)
    if estimate is None:
        raise ValueError(f"the model has no term {term!r}")
    return MainEffect(t=fit.t, d=fit.d, estimate=float(estimate), p=fit.p)
