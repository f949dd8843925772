"""Covariates to design columns: numeric columns linear, categorical columns one-hot.

The encoding is fitted once (the levels of each categorical column) and
applied to new subjects; an unseen level, a missing column or a missing value
raises ``ValueError`` naming the column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ._design import _check_no_missing, _is_categorical, _py

__all__ = ["CovariateEncoder"]


@dataclass
class CovariateEncoder:
    """Turns a covariate DataFrame into design columns (float64).

    Numeric columns enter linearly; strings, booleans and pandas categoricals
    are one-hot encoded without their first level (sorted values, or the
    categorical's own order).
    """

    columns: list[str] = field(default_factory=list)
    levels: dict[str, list[Any]] = field(default_factory=dict)

    def fit(self, covariates: pd.DataFrame | None) -> CovariateEncoder:
        self.columns, self.levels = [], {}
        if covariates is None:
            return self
        for col in covariates.columns:
            s = covariates[col]
            self.columns.append(str(col))
            if _is_categorical(s):
                _check_no_missing(s, col)
                cats = s.cat.categories if isinstance(s.dtype, pd.CategoricalDtype) else None
                values = list(cats) if cats is not None else sorted(pd.unique(s), key=str)
                self.levels[str(col)] = [_py(v) for v in values]
        return self

    @property
    def names(self) -> list[str]:
        """One name per design column, e.g. ``age`` or ``sex[M]``."""
        out: list[str] = []
        for col in self.columns:
            if col in self.levels:
                out += [f"{col}[{lev}]" for lev in self.levels[col][1:]]
            else:
                out.append(col)
        return out

    def transform(self, covariates: pd.DataFrame | None, n: int) -> np.ndarray:
        if not self.columns:
            return np.zeros((n, 0))
        if covariates is None:
            raise ValueError(f"covariates are required: columns {self.columns}")
        missing = [c for c in self.columns if c not in map(str, covariates.columns)]
        if missing:
            raise ValueError(f"covariates lack the column(s) {missing} used at fit")
        if len(covariates) != n:
            raise ValueError(f"covariates have {len(covariates)} rows but X has {n} subjects")
        cov = covariates.rename(columns=str)
        blocks = [self._column(cov[c], c) for c in self.columns]
        return np.hstack(blocks)

    def _column(self, s: pd.Series, col: str) -> np.ndarray:
        _check_no_missing(s, col)
        if col not in self.levels:
            if _is_categorical(s):
                raise ValueError(f"covariate column {col!r} was numeric at fit but is not now")
            return s.to_numpy(dtype=np.float64).reshape(-1, 1)
        levels = self.levels[col]
        values = [_py(v) for v in s.to_numpy()]
        unknown = sorted({str(v) for v in values} - {str(v) for v in levels})
        if unknown:
            raise ValueError(f"covariate column {col!r} has level(s) {unknown} not seen at fit")
        index = {str(v): k for k, v in enumerate(levels)}
        codes = np.array([index[str(v)] for v in values])
        return (codes[:, None] == np.arange(1, len(levels))[None, :]).astype(np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "levels": self.levels}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CovariateEncoder:
        return cls(columns=list(d["columns"]), levels={k: list(v) for k, v in d["levels"].items()})
