"""Input checks and design helpers shared by the harmonization modules (private).

Site labels to codes, the subjects x features check of X, the rank check of
the design and the non-finite value report. No numerical pass lives here
(see :mod:`harmonization._engine`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def _py(v: Any) -> Any:
    """A numpy scalar as the equivalent Python scalar (JSON-friendly)."""
    return v.item() if isinstance(v, np.generic) else v


def _is_categorical(s: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)


def _check_no_missing(s: pd.Series, col: Any) -> None:
    bad = np.flatnonzero(pd.isna(s).to_numpy())
    if bad.size == 0 and pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        bad = np.flatnonzero(~np.isfinite(s.to_numpy(dtype=np.float64)))
    if bad.size:
        raise ValueError(
            f"covariate column {col!r} has missing or non-finite values in rows {bad[:10]}"
        )


def _site_codes(sites: Any, n: int) -> tuple[list[Any], np.ndarray]:
    """Sorted site labels and each subject's index into them."""
    if sites is None:
        raise ValueError("sites are required: one site label per subject (row of X)")
    s = pd.Series(np.asarray(sites, dtype=object).ravel())
    if len(s) != n:
        raise ValueError(f"sites has {len(s)} labels but X has {n} subjects")
    bad = np.flatnonzero(pd.isna(s).to_numpy())
    if bad.size:
        raise ValueError(f"sites has missing labels in rows {bad[:10]}")
    labels = sorted(pd.unique(s), key=lambda v: (str(type(v)), v))
    index = {v: k for k, v in enumerate(labels)}
    return [_py(v) for v in labels], s.map(index).to_numpy(dtype=np.intp)


def _site_labels(sites: Any, n: int) -> list[Any]:
    """Site labels of the subjects, in order (for transform: no sorting)."""
    if sites is None:
        raise ValueError("sites are required: one site label per subject (row of X)")
    labels = list(pd.Series(np.asarray(sites, dtype=object).ravel()))
    if len(labels) != n:
        raise ValueError(f"sites has {len(labels)} labels but X has {n} subjects")
    return labels


def _check_X(X: Any) -> np.ndarray:
    """X as a 2-D floating numpy array (float32 stays float32)."""
    if type(X).__module__.startswith("scipy.sparse"):
        raise ValueError("sparse input is not supported: pass X as a dense array")
    X = np.asarray(X)
    _check_shape(X.shape, X.dtype)
    if not np.issubdtype(X.dtype, np.floating):
        try:
            X = X.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"X must hold numbers ({exc})") from exc
    return X


def _check_shape(shape: tuple[int, ...], dtype: Any) -> None:
    """X must be 2-D, real, with subjects and features (numpy or dask alike)."""
    if len(shape) != 2:
        raise ValueError(
            f"X must be subjects x features (2-D), got shape {shape}. "
            "Reshape your data to (n_subjects, n_features)"
        )
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError("Complex data not supported: X must hold real numbers")
    if shape[0] == 0:
        raise ValueError(f"X has 0 subject(s) (shape={shape}) while a minimum of 2 is required.")
    if shape[1] == 0:
        raise ValueError(f"X has 0 feature(s) (shape={shape}) while a minimum of 1 is required.")


def _check_rank(design: np.ndarray, names: list[str]) -> None:
    """Raise naming the first design column that is collinear with earlier ones."""
    if np.linalg.matrix_rank(design) == design.shape[1]:
        return
    for k in range(1, design.shape[1] + 1):
        if np.linalg.matrix_rank(design[:, :k]) < k:
            raise ValueError(
                f"covariate column {names[k - 1]!r} is collinear with site or earlier covariates "
                "(the design matrix is rank deficient)"
            )


def _check_finite_chunk(Xc: np.ndarray, cols: slice, row0: int = 0) -> None:
    """Raise naming the first non-finite value of a block (row, feature index)."""
    if np.isfinite(Xc).all():
        return
    row, col = np.argwhere(~np.isfinite(Xc))[0]
    raise ValueError(
        f"X has a non-finite value (NaN or inf) at subject row {row0 + row}, "
        f"feature index {cols.start + col}"
    )


def _check_site_columns(design: np.ndarray, site_idx: np.ndarray, n_sites: int) -> None:
    onehot = np.zeros((site_idx.size, n_sites))
    onehot[np.arange(site_idx.size), site_idx] = 1.0
    if not np.array_equal(design[:, :n_sites], onehot):
        raise ValueError("the first design columns must be the one-hot site indicators")
