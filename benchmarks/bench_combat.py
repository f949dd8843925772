"""ComBat: confed's engine against neuroHarmonize.harmonizationLearn, same process, same data.

Prints both wall times (one untraced call each), their ratio, the peak memory
traced by ``tracemalloc`` during a second call of each, relative to the size
of X (numpy reports its buffers to tracemalloc; X is allocated before tracing
starts), and the maximum absolute difference of the harmonized data
(neuroHarmonize's float32 cast of the covariates is applied to our input too).

    .venv/bin/python benchmarks/bench_combat.py [--subjects 2400] [--features 50000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import tracemalloc

import numpy as np
import pandas as pd


def simulate(n: int, V: int, n_sites: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.3, 1.7, n_sites)
    sites = rng.choice(n_sites, size=n, p=weights / weights.sum())
    age = rng.uniform(8, 80, n)
    sex = rng.choice(["F", "M"], n)
    X = rng.normal(size=(n, V))
    X *= rng.gamma(4, 0.25, (n_sites, 1))[sites]
    X += rng.normal(0, 0.5, (n_sites, V))[sites]
    X += 0.01 * age[:, None] + 0.2 * (sex == "M")[:, None]
    labels = np.array([f"site{k:02d}" for k in range(n_sites)])[sites]
    return X, labels, pd.DataFrame({"age": age, "sex": sex})


def measure(fn):
    """Wall time of an untraced call, then the traced peak of a second call."""
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    del out
    tracemalloc.start()
    out = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, elapsed, peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--subjects", type=int, default=2400)
    p.add_argument("--features", type=int, default=50_000)
    p.add_argument("--sites", type=int, default=25)
    args = p.parse_args()

    from neuroHarmonize import harmonizationLearn

    from harmonization.combat import combat

    X, sites, cov = simulate(args.subjects, args.features, args.sites)
    cov32 = cov.assign(age=cov["age"].astype(np.float32).astype(np.float64))
    covars = pd.DataFrame(
        {"SITE": sites, "age": cov["age"], "sex": (cov["sex"] == "M").astype(float)}
    )
    size = X.nbytes
    print(
        f"X: {X.shape[0]} subjects x {X.shape[1]} features, {args.sites} sites, "
        f"{size / 2**20:.0f} MiB float64"
    )

    ours, t_ours, m_ours = measure(lambda: combat(X, sites, cov32))
    with contextlib.redirect_stdout(io.StringIO()):
        (_, ref), t_ref, m_ref = measure(lambda: harmonizationLearn(X, covars))
    diff = np.abs(ours - ref).max()
    print(f"confed ComBat:       {t_ours:8.2f} s   peak traced memory {m_ours / size:5.2f} x X")
    print(f"neuroHarmonize:      {t_ref:8.2f} s   peak traced memory {m_ref / size:5.2f} x X")
    print(f"speed-up:            {t_ref / t_ours:8.1f} x")
    print(f"max |difference|:    {diff:.3e}")


if __name__ == "__main__":
    main()
