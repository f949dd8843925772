"""In-fold harmonization: any registered harmonizer, fitted on a training fold only.

The harmonizer comes from :func:`harmonization.registry.make_harmonizer`, so
``--harmonize`` takes every registered name (``combat``, ``combat-gam``, ...).
Test subjects are harmonized without their labels (see :class:`FoldHarmonizer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .features import Features, PredictionError

__all__ = ["FoldHarmonizer", "check_covariates", "covariate_table", "sex_codes"]


def sex_codes(values: pd.Series) -> pd.Series:
    """Numeric sex covariate: the shared coding (:func:`consortium.analysis.encodings.encode_sex`).

    Values other than ``M``/``F`` become NaN here, so that
    :func:`check_covariates` names the site and subject. The site-intercept
    harmonization design and the standardized features are invariant to this
    affine coding, so it does not change any result.
    """
    from consortium.analysis.encodings import SEX_CODES, encode_sex

    known = values.where(values.isin(list(SEX_CODES)))
    return pd.Series(encode_sex(known), index=values.index)


def covariate_table(phenotypes: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Numeric covariates (``sex`` coded by :func:`sex_codes`), unusable values as NaN."""
    out = pd.DataFrame(index=range(len(phenotypes)))
    for col in columns:
        values = phenotypes[col].reset_index(drop=True)
        if col == "sex":
            values = sex_codes(values)
        out[col] = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return out


def check_covariates(features: Features, columns: tuple[str, ...], why: str) -> None:
    """PredictionError naming the site, subject and column of a missing covariate."""
    subjects = features.subjects
    for col in columns:
        if col not in subjects.columns:
            raise PredictionError(f"{why}: the phenotype table has no column {col!r}")
        values = covariate_table(subjects[[col]], (col,))[col]
        bad = np.flatnonzero(~np.isfinite(values.to_numpy()))
        if bad.size:
            row = subjects.iloc[bad[0]]
            raise PredictionError(
                f"{why}: site {row['site']!r}, subject {row['subject_key']!r} has "
                f"{col}={row[col]!r} ({bad.size} subjects lack a usable {col})"
            )


def _estimable(table: pd.DataFrame, sites: np.ndarray) -> list[str]:
    """Covariate columns that add to the rank of the site design, in order."""
    design = (sites[:, None] == np.unique(sites)[None, :]).astype(float)
    keep = []
    for col in table.columns:
        trial = np.column_stack([design, table[col].to_numpy()])
        if np.linalg.matrix_rank(trial) > design.shape[1]:
            design, keep = trial, [*keep, col]
    return keep


class FoldHarmonizer:
    """A registered harmonizer fitted on a training fold, applied to its test fold without labels.

    Parameters
    ----------
    method : str
        A name of :func:`harmonization.registry.harmonizer_names` (``combat``,
        ``combat-gam``, ...).
    covariates : sequence of str
        Non-diagnostic covariates (columns of the phenotype table); ``sex`` is
        coded by :func:`sex_codes`. A column that is constant within every
        training site (an all-male sample, say) is collinear with the sites and
        left out for that fold.
    options : mapping, optional
        Options of the harmonizer (``eb``, ``ref_site``, ``smooth``, ...).

    Attributes
    ----------
    harmonizer_ : estimator
        The fitted harmonizer.
    columns_ : list of str
        Covariates used, then ``dx``.
    dx_fill_ : float
        Case fraction of the training fold: the value of the ``dx`` covariate
        for every test subject.

    Notes
    -----
    At fit, the covariates are the given columns plus the diagnosis (1 = case),
    so the group difference is preserved in the training data. At transform,
    the diagnosis column is the constant ``dx_fill_``. For a site not seen at
    fit, ComBat (and GAM ComBat) estimates its location as the mean of its
    standardized residuals: a constant diagnosis term shifts all of them
    equally and cancels out of the site's centred data, so only the site's
    features and its age/sex enter, never its labels. Subjects of a site seen
    at fit use that site's fitted effects.
    """

    def __init__(
        self,
        method: str = "combat",
        covariates: tuple[str, ...] = ("age", "sex"),
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.method = method
        self.covariates = covariates
        self.options = dict(options or {})

    def fit_transform(
        self, X: np.ndarray, sites: np.ndarray, phenotypes: pd.DataFrame, y: np.ndarray
    ) -> np.ndarray:
        """Fit on a training fold (labels ``y`` as the ``dx`` covariate) and harmonize it."""
        from harmonization.registry import make_harmonizer

        table = covariate_table(phenotypes, tuple(self.covariates))
        self.columns_ = _estimable(table, np.asarray(sites).astype(str)) + ["dx"]
        self.dx_fill_ = float(np.mean(y))
        design = table[self.columns_[:-1]].assign(dx=np.asarray(y, dtype=float))
        self.harmonizer_ = make_harmonizer(self.method, **self.options)
        return np.asarray(self.harmonizer_.fit_transform(X, sites, design))

    def transform(self, X: np.ndarray, sites: np.ndarray, phenotypes: pd.DataFrame) -> np.ndarray:
        """Harmonize a test fold; its ``dx`` covariate is the training case fraction."""
        table = covariate_table(phenotypes, tuple(self.covariates))
        design = table[self.columns_[:-1]].assign(dx=self.dx_fill_)
        return np.asarray(self.harmonizer_.transform(X, sites, design))
