"""Standardization of subject summary maps (Yan et al. 2013, DPABI).

Each subject's summary map (ALFF, ReHo, degree centrality, seed FC, ...) is
rescaled so that global, nuisance differences between subjects (and therefore
between scanners) are removed before group statistics. The formulas follow
DPABI's ``y_Standardization.m``; standard deviations use ``N - 1`` as
MATLAB's ``std`` does, percentiles use MATLAB's ``prctile`` rule (numpy's
``method="hazen"``).

Per-subject methods (``z``, ``mean_division``, ``mean_subtraction``,
``median_iqr``, ``rank``, ``gaussian_fit``) use only the subject's own map.
Group methods (``mean_regression``, ``mean_regression_sd``,
``mean_regression_logsd``, ``quantile``) use all subjects passed together, so
they must run where the whole group is: at the site, over the site's subjects.

References
----------
Yan, C.-G., Craddock, R. C., Zuo, X.-N., Zang, Y.-F., Milham, M. P. (2013).
Standardizing the intrinsic brain: towards robust measurement of
inter-individual variation in 1000 functional connectomes. NeuroImage 80,
246-262. https://doi.org/10.1016/j.neuroimage.2013.04.081
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import optimize, stats

__all__ = ["standardize", "METHODS", "GROUP_METHODS"]

GROUP_METHODS = ("mean_regression", "mean_regression_sd", "mean_regression_logsd", "quantile")


def standardize(maps: np.ndarray, method: str = "mean_regression_sd") -> np.ndarray:
    """Standardize subjects x voxels maps as DPABI does.

    Parameters
    ----------
    maps : ndarray of shape (n_subjects, n_voxels)
        In-mask voxel values of each subject's map; all finite.
    method : str, default="mean_regression_sd"
        One of ``METHODS``:

        - ``"mean_regression"``: with subject means m and the voxel means
          mu_v over subjects, c = (m - mean(m)) / std(m); c is regressed
          (no intercept) out of (X - mu_v) voxel by voxel; mu_v is added back.
          Group method.
        - ``"mean_regression_sd"``: as above, then each subject's residual map
          is divided by the SD of its raw map before mu_v is added back.
          Group method.
        - ``"mean_regression_logsd"``: after mean regression, the sign of the
          residual is kept and z-scored log(SD) is regressed out of
          log|residual| (centred per voxel, centre added back); the result is
          exponentiated, the sign restored and mu_v added back. Group method.
        - ``"z"``: (x - m_s) / sd_s; NaN (a constant map) becomes 0.
        - ``"mean_division"``: x / m_s.
        - ``"mean_subtraction"``: x - m_s.
        - ``"median_iqr"``: (x - median_s) / IQR_s, MATLAB ``prctile``
          interpolation.
        - ``"rank"``: ranks within the subject's map (1..n_voxels, ties get
          their average rank as MATLAB's ``tiedrank``).
        - ``"quantile"``: quantile normalization; each value is replaced by the
          across-subject mean of the sorted maps at its rank. Group method.
        - ``"gaussian_fit"``: (x - mu_g) / sigma_g where a Gaussian curve is
          fitted by least squares to the histogram (100 bins) of the
          subject's values.

    Returns
    -------
    ndarray of shape (n_subjects, n_voxels), float64
        The standardized maps.

    Raises
    ------
    ValueError
        If ``maps`` is not 2-D or holds non-finite values (naming the subject
        row), if a method needs a quantity that is zero for a subject (its SD,
        mean or IQR) or the group (too few subjects, all subject means equal).

    Notes
    -----
    Group methods depend on every subject passed in the same call; run them
    over one site's subjects at the site.

    References
    ----------
    Yan et al. (2013), NeuroImage 80, 246-262.
    """
    if method not in METHODS:
        raise ValueError(f"unknown standardization method {method!r}; choose from {list(METHODS)}")
    x = _check_maps(maps)
    if method in GROUP_METHODS and x.shape[0] < 3:
        raise ValueError(
            f"method {method!r} uses the whole group and needs at least 3 subjects, "
            f"got {x.shape[0]}"
        )
    return METHODS[method](x)


def _check_maps(maps: np.ndarray) -> np.ndarray:
    x = np.asarray(maps, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"maps must be subjects x voxels (2-D), got shape {x.shape}")
    if x.shape[0] < 1 or x.shape[1] < 2:
        raise ValueError(f"maps needs at least 1 subject and 2 voxels, got shape {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:10]
        raise ValueError(f"maps has non-finite values for subject row(s) {rows}")
    return x


def _subject_sd(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=1, ddof=1)
    zero = np.flatnonzero(sd == 0)
    if zero.size:
        raise ValueError(f"subject row(s) {zero[:10]} have a constant map (SD 0)")
    return sd


def _zscore(v: np.ndarray, what: str) -> np.ndarray:
    sd = v.std(ddof=1)
    if sd == 0:
        raise ValueError(f"all subjects have the same {what}; it cannot be regressed out")
    return (v - v.mean()) / sd


def _regress_out(y: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Residuals of y (subjects x voxels) on c without intercept, in place."""
    beta = c @ y / (c @ c)
    y -= np.outer(c, beta)
    return y


def _mean_regression_residual(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = _zscore(x.mean(axis=1), "map mean")
    mu = x.mean(axis=0)
    return _regress_out(x - mu, c), mu


def _mean_regression(x: np.ndarray) -> np.ndarray:
    r, mu = _mean_regression_residual(x)
    r += mu
    return r


def _mean_regression_sd(x: np.ndarray) -> np.ndarray:
    sd = _subject_sd(x)
    r, mu = _mean_regression_residual(x)
    r /= sd[:, None]
    r += mu
    return r


def _mean_regression_logsd(x: np.ndarray) -> np.ndarray:
    d = _zscore(np.log(_subject_sd(x)), "log map SD")
    r, mu = _mean_regression_residual(x)
    sign = np.sign(r)
    zero = np.argwhere(sign == 0)
    if zero.size:
        s, v = zero[0]
        raise ValueError(
            f"mean-regression residual is exactly 0 for subject row {s}, voxel {v}; "
            "its log is undefined (mean_regression_logsd)"
        )
    log_r = np.log(np.abs(r))
    centre = log_r.mean(axis=0)
    log_r -= centre
    _regress_out(log_r, d)
    log_r += centre
    out = np.exp(log_r, out=log_r)
    out *= sign
    out += mu
    return out


def _z(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=1, ddof=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (x - x.mean(axis=1, keepdims=True)) / sd
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def _mean_division(x: np.ndarray) -> np.ndarray:
    m = x.mean(axis=1)
    zero = np.flatnonzero(m == 0)
    if zero.size:
        raise ValueError(f"subject row(s) {zero[:10]} have map mean 0 (mean_division)")
    return x / m[:, None]


def _mean_subtraction(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=1, keepdims=True)


def _median_iqr(x: np.ndarray) -> np.ndarray:
    q25, q50, q75 = np.percentile(x, [25, 50, 75], axis=1, method="hazen", keepdims=True)
    iqr = q75 - q25
    zero = np.flatnonzero(iqr[:, 0] == 0)
    if zero.size:
        raise ValueError(f"subject row(s) {zero[:10]} have interquartile range 0 (median_iqr)")
    return (x - q50) / iqr


def _rank(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, method="average", axis=1).astype(np.float64)


def _quantile(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, axis=1, kind="stable")
    reference = np.take_along_axis(x, order, axis=1).mean(axis=0)
    out = np.empty_like(x)
    np.put_along_axis(out, order, np.broadcast_to(reference, x.shape), axis=1)
    return out


def gaussian_fit_parameters(values: np.ndarray, n_bins: int = 100) -> tuple[float, float]:
    """Centre and width of a Gaussian curve fitted to a map's histogram.

    Parameters
    ----------
    values : ndarray of shape (n_voxels,)
        One subject's map.
    n_bins : int, default=100
        Histogram bins over the value range.

    Returns
    -------
    mu, sigma : float
        Least-squares fit of ``a * exp(-(t - mu)^2 / (2 sigma^2))`` to the bin
        counts at the bin centres, started from the sample mean and SD.
    """
    counts, edges = np.histogram(values, bins=n_bins)
    centres = (edges[:-1] + edges[1:]) / 2
    start = (counts.max(), values.mean(), values.std(ddof=1))

    def curve(t: np.ndarray, a: float, mu: float, sigma: float) -> np.ndarray:
        return a * np.exp(-((t - mu) ** 2) / (2 * sigma**2))

    params, _ = optimize.curve_fit(curve, centres, counts, p0=start, maxfev=10_000)
    return float(params[1]), float(abs(params[2]))


def _gaussian_fit(x: np.ndarray) -> np.ndarray:
    _subject_sd(x)
    out = np.empty_like(x)
    for s, row in enumerate(x):
        try:
            mu, sigma = gaussian_fit_parameters(row)
        except RuntimeError as exc:
            raise ValueError(f"Gaussian fit did not converge for subject row {s}: {exc}") from exc
        out[s] = (row - mu) / sigma
    return out


METHODS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean_regression": _mean_regression,
    "mean_regression_sd": _mean_regression_sd,
    "mean_regression_logsd": _mean_regression_logsd,
    "z": _z,
    "mean_division": _mean_division,
    "mean_subtraction": _mean_subtraction,
    "median_iqr": _median_iqr,
    "rank": _rank,
    "quantile": _quantile,
    "gaussian_fit": _gaussian_fit,
}
