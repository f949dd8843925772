"""Benchmark: family-wise error rate of within-site permutation inference under the null.

Null simulations on the REST-meta-MDD design (1,642 subjects, 17 sites, drawn by
``consortium.simulate.ConsortiumSimulator`` from the published per-site facts), with
no diagnosis effect but with site random intercepts (SD 0.2-0.6 per feature) AND site
random Dx slopes (SD ``--slope-sd``, default 0.02; residual SD 1) in the generated
data, covariates age, sex, education and motion (with small true effects).

Per simulation:

* edges: ``--edges`` edges (upper triangle of a small atlas) correlated by a factor
  model (``--factors`` latent factors), site intercepts (SD drawn per edge) and Dx
  slopes; one :func:`~consortium.analysis.permutation.permutation_test` (Freedman-Lane
  on the mass mixed model with the random Dx slope, by default with the scheme the
  analysis kinds use: whole-site sign flips, variance components fitted under H0;
  ``--scheme permute`` for within-site permutation) gives the max-|t|
  FWE and, through :class:`~consortium.analysis.nbs.NbsNull` on the same
  permutations, NBS (extent and intensity) at the fixed primary threshold
  ``--nbs-threshold``;
* voxels: a ``--grid``^3 grid of Gaussian-smoothed noise maps with smooth site
  intercept and Dx slope maps; :func:`~consortium.analysis.tfce.tfce_test`
  (E = 0.5, H = 2, dh = max/100, 26-connectivity, two-sided);
* naive: the same edges by OLS ignoring sites (Dx + covariates, no site terms) with
  Freedman-Lane permutations across all subjects (sites ignored), max-|t|.

A family-wise error is any feature (edge, component, voxel) with FWE p <= alpha. The
FWER is printed with its Clopper-Pearson (exact binomial) 95% Monte Carlo interval.

Run: ``.venv/bin/python benchmarks/bench_fwer.py [--quick] [--sims 200] [--seed 0]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from restmeta_design import design
from scipy import ndimage, stats

from consortium.analysis.inference import permutation_scheme
from consortium.analysis.mass import mass_mixed_model
from consortium.analysis.nbs import NbsNull, nbs_components
from consortium.analysis.permutation import permutation_test
from consortium.analysis.tfce import tfce_test

FIXED = ["Dx", "age", "sex", "edu", "motion"]
METHODS = (
    "max-|t| (Freedman-Lane, --scheme)",
    "NBS extent (--scheme)",
    "NBS intensity (--scheme)",
    "TFCE (--scheme)",
    "naive: OLS ignoring sites, free permutation, max-|t|",
)


def _nuisance(data: pd.DataFrame) -> np.ndarray:
    """True covariate effects (no Dx effect), one column."""
    return (0.01 * (data["age"] - 35) - 2.0 * (data["motion"] - 0.1)
            + 0.05 * (data["sex"] - 1.5)).to_numpy()[:, None]  # fmt: skip


def null_edges(
    data: pd.DataFrame, m: int, k: int, slope_sd: float, rng: np.random.Generator
) -> np.ndarray:
    """Correlated null edges: factors + noise, site intercepts and site Dx slopes."""
    n, site, dx = len(data), data["site"].to_numpy(), data["Dx"].to_numpy()[:, None]
    G = site.max() + 1
    Y = rng.normal(size=(n, k)) @ rng.normal(0, 0.5, (k, m)) + rng.normal(size=(n, m))
    Y += rng.uniform(0.2, 0.6, m) * rng.normal(size=(G, m))[site]
    Y += slope_sd * rng.normal(size=(G, m))[site] * dx
    return Y + _nuisance(data)


def _smooth(x: np.ndarray, grid: int, fwhm: float) -> np.ndarray:
    """Smooth maps (rows) on a grid^3 cube, rescaled to unit SD per voxel."""
    sigma = fwhm / np.sqrt(8 * np.log(2))
    cube = ndimage.gaussian_filter(x.reshape(-1, grid, grid, grid), (0, sigma, sigma, sigma))
    cube = cube.reshape(x.shape[0], -1)
    return cube / cube.std(axis=0, keepdims=True)


def null_voxels(data: pd.DataFrame, grid: int, fwhm: float, slope_sd: float, rng) -> np.ndarray:
    """Smooth null maps with smooth site intercept and Dx slope maps."""
    n, site, dx = len(data), data["site"].to_numpy(), data["Dx"].to_numpy()[:, None]
    G, v = site.max() + 1, grid**3
    Y = _smooth(rng.normal(size=(n, v)), grid, fwhm)
    Y += 0.3 * _smooth(rng.normal(size=(G, v)), grid, fwhm)[site]
    Y += slope_sd * _smooth(rng.normal(size=(G, v)), grid, fwhm)[site] * dx
    return Y + _nuisance(data)


def naive_ols_fwe(data: pd.DataFrame, Y: np.ndarray, n_perm: int, rng) -> float:
    """Smallest FWE p of Dx by OLS without site terms, Freedman-Lane over all subjects.

    Reduced model: intercept and covariates; its residuals are permuted freely across
    sites and the full model's t of Dx is recomputed (max over features).
    """
    n = len(data)
    Z = np.column_stack([np.ones(n), data[FIXED[1:]].to_numpy()])
    Q, _ = np.linalg.qr(Z)
    x = data["Dx"].to_numpy()
    xr = x - Q @ (Q.T @ x)
    xx, dof = xr @ xr, n - Z.shape[1] - 1
    R = Y - Q @ (Q.T @ Y)  # reduced-model residuals
    rr = (R**2).sum(axis=0)

    def tstat(perm: np.ndarray) -> np.ndarray:
        Rp = R[perm]
        beta = (xr @ Rp) / xx
        proj = Q.T @ Rp
        rss = rr - (proj**2).sum(axis=0) - beta**2 * xx
        return beta / np.sqrt(rss / dof / xx)

    observed = np.abs(tstat(np.arange(n))).max()
    null = np.array([np.abs(tstat(rng.permutation(n))).max() for _ in range(n_perm)])
    return float((1 + (null >= observed).sum()) / (n_perm + 1))


def _scheme(name: str) -> tuple[str, str]:
    """``(scheme, components)``: the analysis kinds' choice for 17 sites, or a named one."""
    if name == "auto":
        return permutation_scheme(17, random_slope=True)
    return {"permute": ("permute", "observed"), "signflip-observed": ("signflip", "observed"),
            "signflip": ("signflip", "null")}[name]  # fmt: skip


def one_simulation(data: pd.DataFrame, args, seed: int) -> dict[str, bool]:
    rng = np.random.default_rng(seed)
    n_rois = int(round((1 + np.sqrt(1 + 8 * args.edges)) / 2))
    Y = null_edges(data, args.edges, args.factors, args.slope_sd, rng)
    scheme, components = _scheme(args.scheme)
    held = FIXED if components == "observed" else FIXED[1:]
    fit = mass_mixed_model(Y, data, held, "site", random_slopes=["Dx"], reml=False)
    res = permutation_test(
        Y, data, FIXED, "site", "Dx", random_slopes=["Dx"], fit=fit, components=components,
        n_permutations=args.permutations, seed=seed, scheme=scheme,
        null_statistics={"nbs": NbsNull(args.nbs_threshold, "both", n_rois)},
    )  # fmt: skip
    comps = nbs_components(res.t, args.nbs_threshold, "both", n_rois)
    null = res.null["nbs"]
    B = args.permutations

    def p_of(value: float, column: int) -> float:
        return (1 + (null[:, column] >= value).sum()) / (B + 1)

    p_ext = min([p_of(c.extent, 0) for c in comps], default=1.0)
    p_int = min([p_of(c.intensity, 1) for c in comps], default=1.0)
    V = null_voxels(data, args.grid, args.fwhm, args.slope_sd, rng)
    vfit = mass_mixed_model(V, data, held, "site", random_slopes=["Dx"], reml=False)
    tf = tfce_test(
        V, data, FIXED, "site", "Dx", np.ones((args.grid,) * 3, bool), random_slopes=["Dx"],
        fit=vfit, components=components, n_permutations=B, seed=seed, scheme=scheme,
    )  # fmt: skip
    p_naive = naive_ols_fwe(data, Y, B, rng)
    a = args.alpha
    return dict(zip(METHODS, [
        res.p_fwe.min() <= a, p_ext <= a, p_int <= a, tf.p_fwe.min() <= a, p_naive <= a,
    ], strict=True))  # fmt: skip


def report(hits: dict[str, int], n: int, alpha: float, wall: float) -> None:
    print(f"\nFWER at alpha = {alpha} over {n} null simulations "
          f"(Clopper-Pearson 95% Monte Carlo interval); wall time {wall:.0f} s")  # fmt: skip
    for name in METHODS:
        k = hits[name]
        ci = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
        print(f"  {name:<55s} {k / n:6.3f}  [{ci.low:.3f}, {ci.high:.3f}]  ({k}/{n})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sims", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="30 simulations, 200 permutations")
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--edges", type=int, default=300, help="n (n - 1) / 2 edges")
    parser.add_argument("--factors", type=int, default=5)
    parser.add_argument("--nbs-threshold", type=float, default=3.0)
    parser.add_argument("--grid", type=int, default=12)
    parser.add_argument("--fwhm", type=float, default=3.0, help="smoothing FWHM (voxels)")
    parser.add_argument(
        "--slope-sd",
        type=float,
        default=0.02,
        help="SD of the site random Dx slopes (residual SD 1)",
    )
    parser.add_argument(
        "--scheme",
        choices=("auto", "permute", "signflip", "signflip-observed"),
        default="auto",
        help="auto: as the analysis kinds choose (17 sites, random slope: whole-site sign "
        "flips with H0 variance components); permute: within sites; signflip-observed: "
        "flips with the full model's components",
    )
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.sims, args.permutations = 30, 200
    data = design(args.seed)
    print(f"design: {len(data)} subjects, {data['site'].nunique()} sites; {args.edges} edges, "
          f"{args.grid}^3 voxels, {args.permutations} permutations per simulation, "
          f"NBS threshold |t| > {args.nbs_threshold}, site Dx slope SD {args.slope_sd}, "
          f"scheme {args.scheme}, "
          f"seed {args.seed}", flush=True)  # fmt: skip
    hits = dict.fromkeys(METHODS, 0)
    start = time.perf_counter()
    for i in range(args.sims):
        for name, hit in one_simulation(data, args, seed=args.seed * 100_003 + i + 1).items():
            hits[name] += int(hit)
        if (i + 1) % 20 == 0:
            print(f"  {i + 1}/{args.sims} simulations, {time.perf_counter() - start:.0f} s: "
                  + ", ".join(f"{hits[m]}" for m in METHODS), flush=True)  # fmt: skip
    report(hits, args.sims, args.alpha, time.perf_counter() - start)


if __name__ == "__main__":
    main()
