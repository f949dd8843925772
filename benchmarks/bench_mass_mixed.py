"""Benchmark: mass-univariate mixed model vs a statsmodels MixedLM loop.

The REST-meta-MDD design (1,642 subjects, 17 sites; Yan et al. 2019 PNAS) with
simulated outcomes for the 12,720 edges of the Dosenbach 160 atlas. Both tools run in
this process on the same data: ``mass_mixed_model`` on all edges, statsmodels
``MixedLM`` (default optimizer, as a user would call it) on a sample of edges; the
statsmodels time is extrapolated to all edges. Accuracy on the sample is reported
against statsmodels' default fits and against tightly converged statsmodels fits
(best of BFGS and Nelder-Mead at tight tolerances).

Run: ``.venv/bin/python benchmarks/bench_mass_mixed.py [--sample 20] [--edges 12720]``
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

from consortium.analysis import mass_mixed_model

SHARED = Path(os.environ.get("CONFED_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DESIGN = SHARED / "data" / "restmeta-pnas-design" / "design_848MDD_794NC.csv"
FIXED = ["Dx", "Age", "Sex", "Edu", "Motion"]
FORMULA = "y ~ Dx + Age + Sex + Edu + Motion"


def simulate(design: pd.DataFrame, n_edges: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    site = pd.factorize(design.Site)[0]
    n_sites = site.max() + 1
    dx = design.Dx.to_numpy(float)[:, None]
    effect = rng.normal(-0.05, 0.05, n_edges)
    return (
        0.3 + effect * dx + 0.003 * (design.Age.to_numpy(float)[:, None] - 35)
        + rng.uniform(0.0, 0.4, n_edges) * rng.normal(size=(n_sites, n_edges))[site]
        + rng.uniform(0.0, 0.1, n_edges) * rng.normal(size=(n_sites, n_edges))[site] * dx
        + rng.normal(size=(len(design), n_edges))
    )


def statsmodels_fit(data: pd.DataFrame, slope: bool, tight: bool):
    vc = {"Dx": "0 + Dx"} if slope else None
    model = smf.mixedlm(FORMULA, data, groups="Site", re_formula="1", vc_formula=vc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not tight:
            return model.fit(reml=False)
        fits = [model.fit(reml=False, method=[m], gtol=1e-12, xtol=1e-12, ftol=1e-14,
                          maxiter=20000) for m in ("bfgs", "nm")]
    return max(fits, key=lambda f: f.llf)


def compare(ours, sm_fits, sample: np.ndarray) -> dict[str, float]:
    """Max relative differences of coefficients and t (scale: max(|ref|, SE) and max(|t|, 1))."""
    coef, tval, coef_dx = [], [], []
    unusable = 0
    for j, f in enumerate(sample):
        sm = sm_fits[j]
        k = len(sm.fe_params)
        hess = sm.model.hessian(sm.params_object)[0][:k, :k]
        with np.errstate(invalid="ignore"):
            sm_se = np.sqrt(np.diag(np.linalg.inv(-hess)))  # conditional SE, as lme4 reports
        if not np.isfinite(sm_se).all():
            unusable += 1  # statsmodels stopped where its Hessian is not negative definite
            continue
        sm_t = sm.fe_params.to_numpy() / sm_se
        b = ours.params.iloc[f].to_numpy()
        t = ours.tvalues.iloc[f].to_numpy()
        coef.append(np.max(np.abs(b - sm.fe_params.to_numpy()) /
                           np.maximum(np.abs(sm.fe_params.to_numpy()), sm_se)))
        tval.append(np.max(np.abs(t - sm_t) / np.maximum(np.abs(sm_t), 1)))
        coef_dx.append(abs(b[1] / sm.fe_params.iloc[1] - 1))
    return {"coef": max(coef), "t": max(tval), "dx_coef_plain_rel": max(coef_dx),
            "unusable": unusable}


def run(n_edges: int, n_sample: int, slope: bool, Y: np.ndarray, design: pd.DataFrame) -> None:
    label = "(1|Site) + (0+Dx|Site)" if slope else "(1|Site)"
    slopes = ["Dx"] if slope else []
    start = time.perf_counter()
    ours = mass_mixed_model(Y, design, FIXED, "Site", random_slopes=slopes, reml=False)
    t_ours = time.perf_counter() - start
    sample = np.linspace(0, n_edges - 1, n_sample).astype(int)
    start = time.perf_counter()
    default = [statsmodels_fit(design.assign(y=Y[:, f]), slope, tight=False) for f in sample]
    t_sm = (time.perf_counter() - start) / n_sample
    tight = [statsmodels_fit(design.assign(y=Y[:, f]), slope, tight=True) for f in sample]
    extrapolated = t_sm * n_edges
    d_default = compare(ours, default, sample)
    d_tight = compare(ours, tight, sample)
    llf_gain = max(sm.llf - ours.llf.iloc[f] for sm, f in zip(tight, sample, strict=True))
    print(f"\nmodel y ~ Dx + Age + Sex + Edu + Motion + {label}, ML, {n_edges} edges")
    print(f"  mass_mixed_model, all edges:        {t_ours:8.2f} s "
          f"({1e3 * t_ours / n_edges:.3f} ms/edge; converged {ours.converged.mean():.4f})")
    print(f"  statsmodels MixedLM, per edge:      {t_sm:8.3f} s (mean of {n_sample} edges)")
    print(f"  statsmodels, extrapolated to all:   {extrapolated:8.0f} s")
    print(f"  speed-up:                           {extrapolated / t_ours:8.0f}x")
    print(f"  max rel. diff vs default statsmodels fits: coef {d_default['coef']:.1e}, "
          f"t {d_default['t']:.1e} ({d_default['unusable']} fits without usable SEs)")
    print(f"  max rel. diff vs tight statsmodels fits:   coef {d_tight['coef']:.1e}, "
          f"t {d_tight['t']:.1e}, Dx coef {d_tight['dx_coef_plain_rel']:.1e}; "
          f"max llf(statsmodels) - llf(ours) = {llf_gain:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=12720)
    parser.add_argument("--sample", type=int, default=20)
    args = parser.parse_args()
    design = pd.read_csv(DESIGN)
    Y = simulate(design, args.edges)
    print(f"design: {len(design)} subjects, {design.Site.nunique()} sites; "
          f"CPUs visible: {os.cpu_count()}")
    for slope in (False, True):
        run(args.edges, args.sample, slope, Y, design)


if __name__ == "__main__":
    main()
