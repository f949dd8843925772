"""Options of a prediction run (:class:`PredictionConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consortium.analysis.cv import SCHEMES

from .features import PredictionError
from .models import DEFAULT_C_GRID, make_model

__all__ = ["PredictionConfig"]


@dataclass
class PredictionConfig:
    """Options of a prediction run; every field is recorded in ``prediction.json``.

    Parameters
    ----------
    schemes : list of str
        Cross-validation schemes (see ``consortium.analysis.cv``), reported
        side by side. Leave-one-site-out first: it is the honest figure.
    models : list of str
        Model names for :func:`consortium.analysis.prediction.make_model`.
    grid : list of float
        ``C`` values of the nested search (``alpha = 1/C`` for ridge).
    n_folds : int
        Folds of the K-fold schemes.
    inner_folds : int
        Site-grouped folds of the nested search.
    harmonize : str
        A registered harmonizer (``harmonization.registry.harmonizer_names()``:
        ``combat``, ``combat-gam``, ..., or ``none``) fitted inside each
        training fold.
    harmonize_options : dict
        Options of that harmonizer (``ref_site`` for ``combat-ref``, ...).
    combat_covariates : list of str
        Non-diagnostic harmonization covariates (diagnosis is added in training).
    feature_covariates : list of str
        Phenotype columns appended to the features after harmonization.
    subject_standardize : bool
        Z-score each subject's features before everything else.
    n_permutations : int
        Within-site label permutations for the pooled scores (0: none).
    permutation_schemes : list of str
        Schemes that get a permutation test.
    permutation_tuning : {"nested", "fixed"}
        Permuted runs repeat the nested search, or use the value chosen
        most often in the real run (faster, slightly optimistic p).
    seed : int
        Seed of fold shuffling, permutations and stochastic models.
    n_jobs : int
        Outer folds fitted in parallel (joblib).
    """

    schemes: list[str] = field(default_factory=lambda: ["leave-one-site-out", "stratified-kfold"])
    models: list[str] = field(default_factory=lambda: ["logistic", "svm"])
    grid: list[float] = field(default_factory=lambda: list(DEFAULT_C_GRID))
    n_folds: int = 10
    inner_folds: int = 5
    harmonize: str = "combat"
    harmonize_options: dict[str, Any] = field(default_factory=dict)
    combat_covariates: list[str] = field(default_factory=lambda: ["age", "sex"])
    feature_covariates: list[str] = field(default_factory=list)
    subject_standardize: bool = False
    n_permutations: int = 0
    permutation_schemes: list[str] = field(default_factory=lambda: ["leave-one-site-out"])
    permutation_tuning: str = "nested"
    seed: int = 0
    n_jobs: int = 1

    @property
    def harmonized(self) -> bool:
        """Whether a harmonizer is fitted in each training fold (anything but ``none``)."""
        return self.harmonize != "none"

    def check(self) -> None:
        """PredictionError naming the first option that cannot be used."""
        for scheme in self.schemes:
            if scheme not in SCHEMES:
                raise PredictionError(f"unknown scheme {scheme!r}; choose from {SCHEMES}")
        self._check_harmonizer()
        if self.permutation_tuning not in ("nested", "fixed"):
            raise PredictionError("permutation_tuning must be 'nested' or 'fixed'")
        if not self.grid or min(self.grid) <= 0:
            raise PredictionError(f"the C grid must be positive values, got {self.grid}")
        if self.n_permutations < 0:
            raise PredictionError("n_permutations must be >= 0")
        for name in self.models:
            make_model(name, self.grid)

    def _check_harmonizer(self) -> None:
        from harmonization.registry import make_harmonizer

        try:
            make_harmonizer(self.harmonize, **self.harmonize_options)
        except ValueError as exc:
            raise PredictionError(f"harmonize: {exc}") from exc
