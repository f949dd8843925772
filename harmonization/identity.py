"""The identity harmonizer: no harmonization, with the same interface as ComBat.

Importing this module is cheap (numpy and scikit-learn's base classes only);
dask is never imported here: a dask array is recognised by duck typing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError

from ._design import _check_shape, _check_X

__all__ = ["IdentityHarmonizer"]

_ENGINES = ("numpy", "dask")


def _is_lazy(X: Any) -> bool:
    """True for a dask (or other lazy) array: it has ``chunks`` and ``compute``."""
    return hasattr(X, "chunks") and hasattr(X, "compute")


class IdentityHarmonizer(TransformerMixin, BaseEstimator):
    """Returns X unchanged (as float64) after checking its shape against the sites.

    Parameters
    ----------
    engine : {"numpy", "dask"}, default="numpy"
        ``"dask"`` keeps a dask array lazy (``X.astype(float64)``).
    chunk, client
        Accepted for a uniform interface with the other harmonizers; unused.

    Attributes
    ----------
    n_features_in_ : int
        Number of features seen at fit.
    """

    def __init__(self, engine: str = "numpy", chunk: int | None = None, client: Any = None):
        self.engine = engine
        self.chunk = chunk
        self.client = client

    def fit(
        self, X: Any, sites: Any = None, covariates: pd.DataFrame | None = None
    ) -> IdentityHarmonizer:
        """Check the inputs and record the number of features."""
        if self.engine not in _ENGINES:
            raise ValueError(f"engine must be one of {_ENGINES}, got {self.engine!r}")
        X = self._check(X, sites, covariates)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: Any, sites: Any = None, covariates: pd.DataFrame | None = None) -> Any:
        """X as float64 (a lazy dask array stays lazy)."""
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError("this IdentityHarmonizer is not fitted yet; call fit first")
        X = self._check(X, None, None)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but IdentityHarmonizer is expecting "
                f"{self.n_features_in_} features as input"
            )
        return self._check(X, sites, covariates)

    def fit_transform(
        self, X: Any, sites: Any = None, covariates: pd.DataFrame | None = None, **fit_params: Any
    ) -> Any:
        """``fit(X, sites, covariates).transform(X, sites, covariates)``."""
        return self.fit(X, sites, covariates).transform(X, sites, covariates)

    @staticmethod
    def _check(X: Any, sites: Any, covariates: pd.DataFrame | None) -> Any:
        if _is_lazy(X):
            _check_shape(X.shape, X.dtype)
            X = X.astype(np.float64)
        else:
            X = _check_X(X).astype(np.float64, copy=False)
        n = X.shape[0]
        if sites is not None and len(np.asarray(sites, dtype=object).ravel()) != n:
            raise ValueError(
                f"sites has {len(np.asarray(sites, dtype=object).ravel())} labels "
                f"but X has {n} subjects"
            )
        if covariates is not None and len(covariates) != n:
            raise ValueError(f"covariates have {len(covariates)} rows but X has {n} subjects")
        return X
