"""Benchmark: Freedman-Lane permutations (max-|t|, NBS, TFCE) vs nilearn's permuted_ols.

The REST-meta-MDD design (1,642 subjects, 17 sites; ``consortium.simulate``) with
simulated outcomes that have site random intercepts and Dx slopes:

* edges: the 12,720 edges of a 160-ROI upper triangle; ``permutation_test`` with the
  NBS null statistic for ``--permutations`` (5,000) permutations, against nilearn's
  ``permuted_ols`` (OLS with site dummies and the covariates as confounds) timed for
  two numbers of permutations (up to ``--nilearn-permutations``) and extrapolated
  linearly to ``--permutations``;
* voxels: nilearn's MNI152 brain mask at 3 mm (69,765 voxels); ``tfce_test`` timed
  for two numbers of permutations (up to ``--tfce-permutations``) and extrapolated
  linearly to ``--permutations``, against nilearn's ``permuted_ols(tfce=True)`` timed
  and extrapolated the same way (up to ``--nilearn-tfce-permutations``).

* ``--fwer-sims N``: family-wise error rates over N null simulations (site random
  intercepts and Dx slopes, no Dx effect) on ``--fwer-edges`` edges: max-|t| and NBS
  with within-site Freedman-Lane permutations, and, for contrast, nilearn's
  ``permuted_ols`` with covariates but without site terms (a scheme ignoring sites).

The observed mass mixed-model fit (needed once for the variance components, the same
fit the pipeline does anyway) is timed separately. Times are wall-clock on this
machine; extrapolated figures are labelled as such.

Run: ``.venv/bin/python benchmarks/bench_permutation.py [--skip-voxels] [--permutations 5000]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

from consortium.analysis.inference import permutation_scheme
from consortium.analysis.mass import mass_mixed_model
from consortium.analysis.nbs import NbsNull, nbs_components
from consortium.analysis.permutation import permutation_test
from consortium.simulate import ConsortiumSimulator

FIXED = ["dx", "age", "sex", "edu", "motion"]


def design(seed: int = 0, subjects_scale: float = 1.0) -> pd.DataFrame:
    d = ConsortiumSimulator(seed=seed, subjects_scale=subjects_scale).simulate_design()
    return pd.DataFrame({
        "dx": (d["dx"] == "MDD").astype(float), "age": d["age"].astype(float),
        "sex": (d["sex"] == "M").astype(float), "edu": d["education_years"].astype(float),
        "motion": d["mean_fd"].astype(float), "site": pd.factorize(d["site_id"], sort=True)[0],
    })  # fmt: skip


def outcomes(data: pd.DataFrame, noise: np.ndarray, seed: int = 1) -> np.ndarray:
    """Site intercepts and Dx slopes (SDs varying per feature) added to ``noise``."""
    rng = np.random.default_rng(seed)
    site, dx = data["site"].to_numpy(), data["dx"].to_numpy()[:, None]
    G, m = site.max() + 1, noise.shape[1]
    noise += rng.uniform(0.0, 0.4, m) * rng.normal(size=(G, m))[site]
    noise += rng.uniform(0.0, 0.05, m) * rng.normal(size=(G, m))[site] * dx
    return noise


def timed(label: str, fn):
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    wall = time.perf_counter() - start
    print(f"  {label}: {wall:.1f} s wall ({time.process_time() - cpu:.1f} s CPU)", flush=True)
    return out, wall


def extrapolate(label: str, run, n1: int, n2: int, target: int) -> float:
    """Time ``run(n)`` for two permutation counts; linear extrapolation to ``target``.

    The difference of the two runs gives the cost per permutation without the fixed
    set-up cost; the result is printed and labelled EXTRAPOLATED. An untimed warm-up
    run comes first (process pools, compilation).
    """
    run(n1)
    _, t1 = timed(f"{label}, {n1} permutations", lambda: run(n1))
    _, t2 = timed(f"{label}, {n2} permutations", lambda: run(n2))
    per = max(t2 - t1, 0.0) / (n2 - n1)
    total = t2 + per * (target - n2)
    print(f"  {label}: {per:.3f} s per permutation; {target} permutations "
          f"EXTRAPOLATED: {total:.0f} s")
    return total


def nilearn_ols(data: pd.DataFrame, Y: np.ndarray, n_perm: int, **kwargs):
    from nilearn.mass_univariate import permuted_ols

    dummies = pd.get_dummies(data["site"], drop_first=True, dtype=float).to_numpy()
    confounds = np.column_stack([data[FIXED[1:]].to_numpy(), dummies])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nilearn's note on n_jobs vs n_perm
        return permuted_ols(
            data[["dx"]].to_numpy(), Y, confounding_vars=confounds, model_intercept=True,
            n_perm=n_perm, two_sided_test=True, random_state=0, n_jobs=min(2, n_perm),
            verbose=0, **kwargs,
        )  # fmt: skip


def _scheme(name: str, data: pd.DataFrame, slope: bool) -> tuple[str, str]:
    """``(scheme, components)``: the analysis kinds' choice, or within-site permutation."""
    if name == "auto":
        return permutation_scheme(data["site"].nunique(), slope)
    return "permute", "observed"


def bench_edges(data: pd.DataFrame, args) -> None:
    n_rois = int(round((1 + np.sqrt(1 + 8 * args.edges)) / 2))
    rng = np.random.default_rng(2)
    Y = outcomes(data, rng.normal(size=(len(data), args.edges)))
    rows, cols = np.triu_indices(n_rois, k=1)
    planted = (rows < 12) & (cols < 12)
    Y[:, planted] -= 0.25 * data["dx"].to_numpy()[:, None]
    print(f"edges: {len(data)} subjects x {args.edges} edges, {data['site'].nunique()} sites")
    fit, _ = timed("observed mass mixed model (once)", lambda: mass_mixed_model(
        Y, data, FIXED, "site", random_slopes=("dx",), reml=False))
    scheme, components = _scheme(args.scheme, data, slope=True)
    if components == "null":
        fit, _ = timed("H0 mass mixed model, for the held components (once)",
                       lambda: mass_mixed_model(Y, data, FIXED[1:], "site",
                                                random_slopes=("dx",), reml=False))
    res, ours = timed(f"{args.permutations} draws ({scheme}), max-|t| + NBS",
                      lambda: permutation_test(
        Y, data, FIXED, "site", "dx", random_slopes=("dx",), n_permutations=args.permutations,
        seed=0, fit=fit, components=components, scheme=scheme, batch_size=args.batch_size,
        scheduler=args.scheduler,
        null_statistics={"nbs": NbsNull(args.nbs_threshold, "both", n_rois)}))
    comps = nbs_components(res.t, args.nbs_threshold, "both", n_rois)
    null = res.null["nbs"][:, 0]
    p = [(1 + (null >= c.extent).sum()) / (args.permutations + 1) for c in comps[:3]]
    print(f"  FWE edges < 0.05: {(res.p_fwe < 0.05).sum()}; NBS largest extents "
          f"{[c.extent for c in comps[:3]]}, p {np.round(p, 4).tolist()}")
    n2 = args.nilearn_permutations
    theirs = extrapolate("nilearn permuted_ols", lambda n: nilearn_ols(data, Y, n),
                         max(2, n2 // 4), n2, args.permutations)
    print(f"  ratio nilearn (extrapolated) / ours (measured) = {theirs / ours:.1f}")


def bench_voxels(data: pd.DataFrame, args) -> None:
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.maskers import NiftiMasker
    from scipy.ndimage import gaussian_filter

    from consortium.analysis.tfce import tfce_test

    mask_img = load_mni152_brain_mask(resolution=3)
    mask = mask_img.get_fdata() > 0
    rng = np.random.default_rng(3)
    noise = np.empty((len(data), int(mask.sum())))
    for i in range(len(data)):
        volume = gaussian_filter(rng.normal(size=mask.shape).astype(np.float32), 1.0)
        noise[i] = volume[mask] / 0.2
    Y = outcomes(data, noise)
    print(f"voxels: {len(data)} subjects x {Y.shape[1]} voxels (MNI152 3 mm mask)")
    scheme, components = _scheme(args.scheme, data, slope=args.voxel_slope)
    slopes = ("dx",) if args.voxel_slope else ()
    held = FIXED[1:] if components == "null" else FIXED
    fit, _ = timed(f"mass mixed model for the held components ({components} fit, once)",
                   lambda: mass_mixed_model(Y, data, held, "site", random_slopes=slopes,
                                            reml=False, chunk_size=8192))

    def ours(n: int):
        return tfce_test(Y, data, FIXED, "site", "dx", mask, n_permutations=n, seed=0, fit=fit,
                         random_slopes=slopes, scheme=scheme, components=components,
                         batch_size=args.batch_size, scheduler=args.scheduler)

    res, _ = timed("TFCE, 64 permutations (a check)", lambda: ours(64))
    print(f"  TFCE max {np.abs(res.tfce).max():.1f}, voxels with FWE p < 0.05 "
          f"(64 permutations): {(res.p_fwe < 0.05).sum()}")
    B = args.tfce_permutations
    mine = extrapolate("ours, TFCE", ours, max(64, B // 4), B, args.permutations)
    masker = NiftiMasker(mask_img).fit()
    n2 = args.nilearn_tfce_permutations
    theirs = extrapolate("nilearn permuted_ols(tfce=True)",
                         lambda n: nilearn_ols(data, Y, n, tfce=True, masker=masker),
                         max(1, n2 // 2), n2, args.permutations)
    print(f"  ratio nilearn / ours (both extrapolated) = {theirs / mine:.1f}")


def bench_fwer(data: pd.DataFrame, args) -> None:
    from nilearn.mass_univariate import permuted_ols

    n_rois = int(round((1 + np.sqrt(1 + 8 * args.fwer_edges)) / 2))
    m = n_rois * (n_rois - 1) // 2
    N, B, T = args.fwer_sims, args.fwer_permutations, args.nbs_threshold
    hits = {"max-|t| (within-site Freedman-Lane)": 0, "NBS extent": 0, "NBS intensity": 0,
            "OLS ignoring sites (nilearn permuted_ols)": 0}
    start = time.perf_counter()
    for sim in range(N):
        rng = np.random.default_rng(10_000 + sim)
        Y = outcomes(data, rng.normal(size=(len(data), m)), seed=10_000 + sim)
        fit = mass_mixed_model(Y, data, FIXED, "site", random_slopes=("dx",), reml=False)
        res = permutation_test(Y, data, FIXED, "site", "dx", random_slopes=("dx",),
                               n_permutations=B, seed=sim, fit=fit, scheduler=args.scheduler,
                               null_statistics={"nbs": NbsNull(T, "both", n_rois)})
        comps = nbs_components(res.t, T, "both", n_rois)
        null = res.null["nbs"]
        hits["max-|t| (within-site Freedman-Lane)"] += res.p_fwe.min() <= 0.05
        hits["NBS extent"] += any((1 + (null[:, 0] >= c.extent).sum()) / (B + 1) <= 0.05
                                  for c in comps)
        hits["NBS intensity"] += any((1 + (null[:, 1] >= c.intensity).sum()) / (B + 1) <= 0.05
                                     for c in comps)
        ols = permuted_ols(data[["dx"]].to_numpy(), Y, confounding_vars=data[FIXED[1:]].to_numpy(),
                           model_intercept=True, n_perm=B, random_state=sim, n_jobs=2, verbose=0)
        hits["OLS ignoring sites (nilearn permuted_ols)"] += (
            10 ** -np.asarray(ols["logp_max_t"]).max() <= 0.05)
    se = np.sqrt(0.05 * 0.95 / N)
    print(f"FWER at alpha 0.05 over {N} null simulations ({m} edges, {B} permutations each; "
          f"Monte Carlo SE {se:.3f}), {time.perf_counter() - start:.0f} s:")
    for name, count in hits.items():
        print(f"  {name}: {count / N:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--permutations", type=int, default=5000)
    parser.add_argument("--edges", type=int, default=12720)
    parser.add_argument("--nbs-threshold", type=float, default=3.0)
    parser.add_argument("--nilearn-permutations", type=int, default=100)
    parser.add_argument("--tfce-permutations", type=int, default=320)
    parser.add_argument("--nilearn-tfce-permutations", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--scheduler", default="threads")
    parser.add_argument("--fwer-sims", type=int, default=0)
    parser.add_argument("--fwer-edges", type=int, default=990)
    parser.add_argument("--fwer-permutations", type=int, default=499)
    parser.add_argument("--subjects-scale", type=float, default=1.0,
                        help="scale the sites' sample sizes (a quick dry run: 0.05)")
    parser.add_argument("--scheme", choices=("auto", "permute"), default="auto",
                        help="auto: as the analysis kinds choose (17 sites with the Dx slope: "
                        "whole-site sign flips, H0 components); permute: within sites")
    parser.add_argument("--voxel-slope", action="store_true",
                        help="voxels with the site slope of Dx (the kinds' default)")
    parser.add_argument("--skip-edges", action="store_true")
    parser.add_argument("--skip-voxels", action="store_true")
    args = parser.parse_args()
    data = design(subjects_scale=args.subjects_scale)
    if not args.skip_edges:
        bench_edges(data, args)
    if not args.skip_voxels:
        bench_voxels(data, args)
    if args.fwer_sims:
        bench_fwer(data, args)


if __name__ == "__main__":
    main()
