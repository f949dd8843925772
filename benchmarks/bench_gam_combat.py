"""GAM ComBat: confed's all-features-at-once fit against neuroHarmonize smooth_terms.

Times GAMComBat on N x V (default 2400 x 12,720, the edges of a 160-ROI
atlas) and neuroHarmonize ``harmonizationLearn(smooth_terms=["age"])`` on a
few features of the same data in the same process, and extrapolates
neuroHarmonize's per-feature time to V features.

    .venv/bin/python benchmarks/bench_gam_combat.py [--subjects 2400] [--features 12720]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np
import pandas as pd


def simulate(n: int, V: int, n_sites: int = 25, seed: int = 0):
    rng = np.random.default_rng(seed)
    sites = rng.integers(0, n_sites, n)
    age = rng.uniform(6, 85, n)
    sex = rng.choice(["F", "M"], n)
    X = rng.normal(size=(n, V))
    X *= rng.gamma(4, 0.25, (n_sites, 1))[sites]
    X += rng.normal(0, 0.5, (n_sites, V))[sites]
    X += np.sin(age / 15)[:, None] * rng.normal(0, 1, V) + 0.2 * (sex == "M")[:, None]
    labels = np.array([f"site{k:02d}" for k in range(n_sites)])[sites]
    return X, labels, pd.DataFrame({"age": age, "sex": sex})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--subjects", type=int, default=2400)
    p.add_argument("--features", type=int, default=12_720)
    p.add_argument("--nh-features", type=int, default=3)
    args = p.parse_args()

    from neuroHarmonize import harmonizationLearn

    from harmonization.gam import GAMComBat

    X, sites, cov = simulate(args.subjects, args.features)
    t0 = time.perf_counter()
    est = GAMComBat(smooth_terms=["age"])
    est.fit_transform(X, sites, cov)
    t_ours = time.perf_counter() - t0
    k = args.nh_features
    covars = pd.DataFrame({"SITE": sites, "age": cov["age"], "sex": (cov["sex"] == "M") * 1.0})
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        harmonizationLearn(X[:, :k], covars, smooth_terms=["age"], seed=0)
    per_feature = (time.perf_counter() - t0) / k
    print(f"X: {X.shape[0]} x {X.shape[1]}, 25 sites, smooth term age (df=10)")
    print(f"confed GAMComBat (GCV, all features):  {t_ours:8.2f} s")
    print(f"neuroHarmonize smooth_terms:           {per_feature:8.2f} s per feature ({k} features)")
    print(f"  extrapolated to {X.shape[1]} features:    {per_feature * X.shape[1]:8.0f} s")
    print(f"speed-up (extrapolated):               {per_feature * X.shape[1] / t_ours:8.0f} x")
    print(f"median edf {np.median(est.edf_):.2f}")


if __name__ == "__main__":
    main()
