"""Benchmark: coverage of the confidence interval of the DMN effect size d.

Simulations on the REST-meta-MDD design (1,642 subjects, 17 sites, drawn by
``consortium.simulate.ConsortiumSimulator`` from the published per-site facts) of

    y = 0.25 + beta Dx + covariates + a_site + b_site Dx + e,   e ~ N(0, 1),

with site intercepts ``a ~ N(0, 0.3^2)`` and site Dx slopes ``b ~ N(0, slope_sd^2)``,
Dx coded +1 (MDD) / -1 (HC). ``beta`` is set so that the planted d, the d of the
published analysis (``d = t (n1 + n2) / (sqrt(n - p) sqrt(n1 n2))`` from the mixed-model
t) expected on this design with the true covariance, equals ``--d``: the expected t is
``beta / se`` with ``se^2 = [(X'V^-1 X)^-1]_Dx`` for
``V = I + 0.3^2 S + slope_sd^2 S o (Dx Dx')`` (``S``: same site), computed densely.

Each simulation fits the REST-meta-MDD model (ML, random intercept and Dx slope per
site; :func:`~consortium.analysis.mass.mass_mixed_model`, all simulations at once) and
compares two 95% CIs of d:

* old: the large-sample Hedges-Olkin interval from n1, n2
  (:func:`~consortium.analysis.effects.cohens_d_ci`);
* jackknife: the leave-one-site-out jackknife, never narrower than the old interval,
  with t_{G-1} quantiles (:func:`~consortium.analysis.effects.leave_one_site_out_d`,
  :func:`~consortium.analysis.effects.jackknife_d_ci`), the CI of ``dmn_model`` until
  2026-11-30;
* bootstrap percentile: the parametric bootstrap of the fitted model (``--boot``
  draws per simulation; ``dmn_model`` uses 999), the percentile interval of
  ``d* = c t*`` (:mod:`consortium.analysis.d_bootstrap`), the CI of ``dmn_model`` now;
  the normal interval ``d -/+ t_{G-1} c sd(t*)`` of the same draws is printed for
  comparison.

Coverage is printed with its Clopper-Pearson 95% Monte Carlo interval.

Run: ``.venv/bin/python benchmarks/bench_d_coverage.py [--quick] [--sims 1000] [--seed 0]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from restmeta_design import design
from scipy import stats

from consortium.analysis.d_bootstrap import bootstrap_d_ci, bootstrap_t
from consortium.analysis.effects import d_from_t, jackknife_d_ci, leave_one_site_out_d
from consortium.analysis.mass import mass_mixed_model

FIXED = ["Dx", "age", "sex", "edu", "motion"]
SITE_SD = 0.3


def d_per_unit_beta(data: pd.DataFrame, slope_sd: float) -> float:
    """Expected published d for a Dx coefficient of 1 under the true covariance (dense GLS)."""
    dx, site = data["Dx"].to_numpy(), data["site"].to_numpy()
    X = np.column_stack([np.ones(len(data)), data[FIXED].to_numpy()])
    same = (site[:, None] == site[None, :]).astype(float)
    V = np.eye(len(data)) + SITE_SD**2 * same + slope_sd**2 * same * np.outer(dx, dx)
    se = np.sqrt(np.linalg.inv(X.T @ np.linalg.solve(V, X))[1, 1])
    n1, n2 = int((dx > 0).sum()), int((dx < 0).sum())
    return float((1 / se) * (n1 + n2) / (np.sqrt(len(dx) - X.shape[1]) * np.sqrt(n1 * n2)))


def simulate(data: pd.DataFrame, d: float, slope_sd: float, n_sims: int, rng) -> np.ndarray:
    """Outcomes (subjects x n_sims) with the planted d."""
    beta = d / d_per_unit_beta(data, slope_sd)
    dx, site = data["Dx"].to_numpy()[:, None], data["site"].to_numpy()
    G = site.max() + 1
    cov = (0.004 * (data["age"] - 35) - 0.3 * (data["motion"] - 0.1)
           + 0.02 * (data["sex"] == 1)).to_numpy()[:, None]  # fmt: skip
    return (0.25 + beta * dx + cov + rng.normal(0, SITE_SD, (G, n_sims))[site]
            + rng.normal(0, slope_sd, (G, n_sims))[site] * dx
            + rng.normal(0, 1, (len(data), n_sims)))  # fmt: skip


def coverage_line(name: str, covered: np.ndarray, width: np.ndarray) -> str:
    k, n = int(covered.sum()), covered.size
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    return (f"    {name:<34s} coverage {k / n:.3f} [{ci.low:.3f}, {ci.high:.3f}] ({k}/{n}), "
            f"mean width {width.mean():.4f}")  # fmt: skip


def run(
    data: pd.DataFrame, d_true: float, slope_sd: float, n_sims: int, n_boot: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    Y = simulate(data, d_true, slope_sd, n_sims, rng)
    fit = mass_mixed_model(Y, data, FIXED, "site", random_slopes=["Dx"], reml=False)
    n1, n2 = int((data["Dx"] > 0).sum()), int((data["Dx"] < 0).sum())
    d, low_old, high_old = d_from_t(fit.tvalues["Dx"].to_numpy(), n1, n2, fit.df_resid)
    d_out = leave_one_site_out_d(Y, data, FIXED, "site", "Dx", ["Dx"], reml=False)
    low_new, high_new, _ = jackknife_d_ci(d, d_out, n1, n2)
    t_boot = bootstrap_t(
        data, FIXED, "site", "Dx", ["Dx"], fit.params.to_numpy(),
        fit.variance_components.to_numpy(), fit.scale.to_numpy(), n_boot, seed,
    )  # fmt: skip
    low_p, high_p, se_boot = bootstrap_d_ci(t_boot, n1, n2, fit.df_resid)
    q = stats.t.ppf(0.975, data["site"].nunique() - 1)
    low_b, high_b = d - q * se_boot, d + q * se_boot
    print(f"  slope SD {slope_sd}: mean d {d.mean():.4f} (planted {d_true}), "
          f"SD of d {d.std(ddof=1):.4f}")  # fmt: skip
    for name, low, high in (
        ("old (Hedges-Olkin, n1 and n2)", low_old, high_old),
        ("jackknife (leave-one-site-out)", low_new, high_new),
        ("bootstrap percentile (dmn_model)", low_p, high_p),
        ("bootstrap normal, t_{G-1}", low_b, high_b),
    ):
        covered = (low < d_true) & (d_true < high)
        print(coverage_line(name, covered, high - low), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sims", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="200 simulations")
    parser.add_argument("--d", type=float, default=-0.2, help="planted d")
    parser.add_argument("--slope-sds", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1])
    parser.add_argument("--boot", type=int, default=199, help="bootstrap draws per simulation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.sims = 200
    data = design(args.seed)
    print(f"design: {len(data)} subjects, {data['site'].nunique()} sites; planted d {args.d}; "
          f"{args.sims} simulations per slope SD, {args.boot} bootstrap draws each; "
          f"seed {args.seed}", flush=True)  # fmt: skip
    start = time.perf_counter()
    for k, slope_sd in enumerate(args.slope_sds):
        run(data, args.d, slope_sd, args.sims, args.boot, seed=args.seed * 1009 + k + 1)
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
