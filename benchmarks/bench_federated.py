"""Benchmark: federated vs pooled mass-univariate edges on the REST-meta-MDD design.

The published design (1,642 subjects, 17 sites; Yan et al. 2019 PNAS) with simulated
outcomes for the 12,720 edges of the Dosenbach 160 atlas (the simulation of
``bench_mass_mixed.py``). Pooled: :func:`consortium.analysis.mass.mass_mixed_model` on
all subjects. Federated, in this process and without HTTP: each site computes its
signed-message payload with :func:`sites.federated.compute.mass_stats` (cross-products
of its own subjects, base64 float64 arrays), the message goes through JSON, and the
coordinator fits from the 17 messages (:func:`consortium.federated.combine.combine_mass`).
Prints both times, their ratio (issue #16 target: federated within 2x of pooled) and
the largest difference in estimate, SE and t.

Run: ``.venv/bin/python benchmarks/bench_federated.py [--edges 12720] [--repeat 1]``
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
from bench_mass_mixed import DESIGN, simulate

from consortium.analysis.mass import mass_mixed_model
from consortium.federated.combine import combine_mass
from sites.federated.compute import mass_stats
from sites.federated.messages import validate_message

COVARIATES = ["age", "sex", "education_years", "mean_fd"]
FED_DESIGN = {"dx": "dx", "fixed": ["dx", *COVARIATES], "random_slopes": ["dx"], "codes": {}}


def phenotypes(design: pd.DataFrame) -> pd.DataFrame:
    """The design file's columns under the canonical names (dx +1/-1, sex 1/2)."""
    return pd.DataFrame({
        "site": design.Site.astype(str), "dx": design.Dx.astype(float),
        "age": design.Age.astype(float), "sex": design.Sex.astype(float),
        "education_years": design.Edu.astype(float), "mean_fd": design.Motion.astype(float),
    })  # fmt: skip


def pooled(Y: np.ndarray, pheno: pd.DataFrame):
    return mass_mixed_model(Y, pheno, ["dx", *COVARIATES], "site", ["dx"], reml=False)


def federated(Y: np.ndarray, pheno: pd.DataFrame):
    messages = []
    for site in sorted(pheno.site.unique()):
        rows = (pheno.site == site).to_numpy()
        task = {"id": f"bench-{site}", "kind": "mass_stats", "params": {"design": FED_DESIGN}}
        out = mass_stats(task, site, pheno[rows].reset_index(drop=True), Y[rows], 1)
        wire = json.loads(json.dumps(out))
        validate_message(wire, {"feature": Y.shape[1]})
        messages.append(wire)
    return combine_mass(messages, FED_DESIGN, reml=False), messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=12720)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    design = pd.read_csv(DESIGN)
    pheno = phenotypes(design)
    Y = simulate(design, args.edges, seed=0)
    times = {"pooled": [], "federated": []}
    for _ in range(args.repeat):
        start = time.perf_counter()
        ref = pooled(Y, pheno)
        times["pooled"].append(time.perf_counter() - start)
        start = time.perf_counter()
        got, messages = federated(Y, pheno)
        times["federated"].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    size = sum(len(json.dumps(m)) for m in messages)
    print(f"design: {len(pheno)} subjects, {pheno.site.nunique()} sites, {Y.shape[1]} edges")
    print(f"pooled mass_mixed_model: {best['pooled']:.2f} s")
    print(f"federated (site stats + combine): {best['federated']:.2f} s "
          f"({len(messages)} messages, {size / 1e6:.1f} MB of JSON)")  # fmt: skip
    print(f"ratio federated / pooled: {best['federated'] / best['pooled']:.2f}")
    for name in ("params", "bse", "tvalues", "llf"):
        diff = np.abs(getattr(got, name).to_numpy() - getattr(ref, name).to_numpy()).max()
        print(f"max |federated - pooled| {name}: {diff:.3g}")


if __name__ == "__main__":
    main()
