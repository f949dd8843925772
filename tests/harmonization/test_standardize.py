"""standardize() against a plain loop transcription of DPABI's y_Standardization.m formulas.

The reference functions below deliberately use per-subject / per-voxel Python
loops and hand-written MATLAB rules (std with N-1, prctile, tiedrank) so that
they share no vectorised code with harmonization.standardize.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from harmonization.standardize import METHODS, gaussian_fit_parameters, standardize


def _mean(v):
    return sum(v) / len(v)


def _std(v):
    m = _mean(v)
    return math.sqrt(sum((a - m) ** 2 for a in v) / (len(v) - 1))


def _regress_no_intercept(y, c):
    b = sum(ci * yi for ci, yi in zip(c, y, strict=True)) / sum(ci * ci for ci in c)
    return [yi - ci * b for ci, yi in zip(c, y, strict=True)]


def _ref_mean_regression(x, sd_divide=False, logsd=False):
    n, v = x.shape
    means = [_mean(list(x[s])) for s in range(n)]
    sds = [_std(list(x[s])) for s in range(n)]
    mm, sm = _mean(means), _std(means)
    c = [(m - mm) / sm for m in means]
    out = np.empty((n, v))
    resid = np.empty((n, v))
    mus = []
    for j in range(v):
        col = [x[s, j] for s in range(n)]
        mu = _mean(col)
        mus.append(mu)
        r = _regress_no_intercept([a - mu for a in col], c)
        resid[:, j] = r
        for s in range(n):
            out[s, j] = (r[s] / sds[s] if sd_divide else r[s]) + mu
    if not logsd:
        return out
    logsd_v = [math.log(s) for s in sds]
    lm, ls = _mean(logsd_v), _std(logsd_v)
    d = [(a - lm) / ls for a in logsd_v]
    for j in range(v):
        sign = [math.copysign(1.0, resid[s, j]) for s in range(n)]
        lr = [math.log(abs(resid[s, j])) for s in range(n)]
        centre = _mean(lr)
        rr = _regress_no_intercept([a - centre for a in lr], d)
        for s in range(n):
            out[s, j] = sign[s] * math.exp(rr[s] + centre) + mus[j]
    return out


def _matlab_prctile(v, p):
    v = sorted(v)
    n = len(v)
    pos = [100 * (i + 0.5) / n for i in range(n)]
    if p <= pos[0]:
        return v[0]
    if p >= pos[-1]:
        return v[-1]
    for i in range(n - 1):
        if pos[i] <= p <= pos[i + 1]:
            t = (p - pos[i]) / (pos[i + 1] - pos[i])
            return v[i] + t * (v[i + 1] - v[i])
    raise AssertionError("unreachable")


def _tiedrank(v):
    ranks = [0.0] * len(v)
    for i, a in enumerate(v):
        less = sum(1 for b in v if b < a)
        equal = sum(1 for b in v if b == a)
        ranks[i] = less + (equal + 1) / 2
    return ranks


def _ref_per_subject(x, method):
    out = np.empty_like(x, dtype=float)
    for s in range(x.shape[0]):
        row = [float(a) for a in x[s]]
        m, sd = _mean(row), _std(row)
        if method == "z":
            out[s] = [(a - m) / sd if sd != 0 else 0.0 for a in row]
        elif method == "mean_division":
            out[s] = [a / m for a in row]
        elif method == "mean_subtraction":
            out[s] = [a - m for a in row]
        elif method == "median_iqr":
            med = _matlab_prctile(row, 50)
            iqr = _matlab_prctile(row, 75) - _matlab_prctile(row, 25)
            out[s] = [(a - med) / iqr for a in row]
        elif method == "rank":
            out[s] = _tiedrank(row)
    return out


def _ref_quantile(x):
    n, v = x.shape
    sorted_rows = [sorted(list(x[s])) for s in range(n)]
    reference = [_mean([sorted_rows[s][k] for s in range(n)]) for k in range(v)]
    out = np.empty((n, v))
    for s in range(n):
        order = sorted(range(v), key=lambda k, s=s: (x[s, k], k))
        for k, idx in enumerate(order):
            out[s, idx] = reference[k]
    return out


@pytest.fixture
def maps():
    rng = np.random.default_rng(0)
    n, v = 9, 60
    scale = rng.uniform(0.5, 2.0, size=(n, 1))
    shift = rng.uniform(1.0, 3.0, size=(n, 1))
    pattern = rng.normal(size=(1, v))
    return (shift + scale * (pattern + 0.5 * rng.normal(size=(n, v)))).astype(np.float32)


@pytest.mark.parametrize(
    "method, kwargs",
    [
        ("mean_regression", {}),
        ("mean_regression_sd", {"sd_divide": True}),
        ("mean_regression_logsd", {"logsd": True}),
    ],
)
def test_group_methods_match_loop_reference(maps, method, kwargs):
    expected = _ref_mean_regression(maps.astype(np.float64), **kwargs)
    got = standardize(maps, method=method)
    assert got.shape == maps.shape
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_default_is_mean_regression_sd(maps):
    expected = _ref_mean_regression(maps.astype(np.float64), sd_divide=True)
    np.testing.assert_allclose(standardize(maps), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["z", "mean_division", "mean_subtraction", "median_iqr", "rank"])
def test_per_subject_methods_match_loop_reference(maps, method):
    expected = _ref_per_subject(maps.astype(np.float64), method)
    np.testing.assert_allclose(standardize(maps, method=method), expected, rtol=1e-10, atol=1e-12)


def test_rank_ties_get_average_rank():
    x = np.array([[3.0, 1.0, 3.0, 2.0, 3.0]])
    np.testing.assert_array_equal(standardize(x, "rank"), [[4.0, 1.0, 4.0, 2.0, 4.0]])


def test_quantile_matches_loop_reference(maps):
    expected = _ref_quantile(maps.astype(np.float64))
    got = standardize(maps, method="quantile")
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    # every subject now has the same sorted values
    np.testing.assert_allclose(np.sort(got, axis=1), np.sort(got, axis=1)[[0] * len(got)])


def test_z_constant_map_gives_zeros():
    x = np.array([[2.0, 2.0, 2.0], [1.0, 2.0, 4.0]])
    out = standardize(x, "z")
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_allclose(out[1], (x[1] - x[1].mean()) / x[1].std(ddof=1))


def test_gaussian_fit_recovers_normal_parameters():
    rng = np.random.default_rng(1)
    values = rng.normal(3.0, 0.7, size=200_000)
    mu, sigma = gaussian_fit_parameters(values)
    assert abs(mu - 3.0) < 0.01
    assert abs(sigma - 0.7) < 0.01
    out = standardize(values[None, :2000] * 1.0, "gaussian_fit")
    m2, s2 = gaussian_fit_parameters(values[:2000])
    np.testing.assert_allclose(out[0], (values[:2000] - m2) / s2, rtol=1e-12)


def test_gaussian_fit_ignores_heavy_tail_unlike_z():
    rng = np.random.default_rng(2)
    core = rng.normal(0.0, 1.0, size=50_000)
    tail = rng.uniform(5.0, 40.0, size=2_500)
    mu, sigma = gaussian_fit_parameters(np.concatenate([core, tail]))
    assert abs(mu) < 0.1 and abs(sigma - 1.0) < 0.1
    assert np.concatenate([core, tail]).std() > 3.0


def test_all_methods_keep_shape(maps):
    for method in METHODS:
        assert standardize(maps, method).shape == maps.shape


@pytest.mark.parametrize(
    "x, method, match",
    [
        (np.ones((4, 5)), "mean_regression", "same map mean"),
        (np.array([[1.0, np.nan], [1.0, 2.0]]), "z", r"subject row\(s\) \[0\]"),
        (np.array([[1.0, 2.0], [3.0, 3.0], [1.0, 5.0]]), "mean_regression_sd", r"\[1\]"),
        (np.array([[1.0, -1.0], [1.0, 2.0]]), "mean_division", r"\[0\]"),
        (np.ones(5), "z", "2-D"),
        (np.ones((2, 5)) + np.arange(5), "quantile", "at least 3 subjects"),
    ],
)
def test_bad_input_is_a_clear_error(x, method, match):
    with pytest.raises(ValueError, match=match):
        standardize(x, method)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown standardization method 'foo'"):
        standardize(np.ones((3, 3)), "foo")
