"""Fixtures of the prediction tests: simulated multi-site data and real ABIDE features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from consortium.analysis.prediction import Features, features_from_abide


def simulate_sites(
    seed: int = 0,
    n_sites: int = 8,
    n_per_site: int = 40,
    n_features: int = 200,
    effect: float = 0.0,
    confound: float = 1.5,
) -> Features:
    """Multi-site features with site effects whose direction follows the site's case fraction.

    Even sites have 80 % cases, odd sites 20 %. Each site adds a location shift
    (random plus ``confound * (case fraction - 0.5)`` along one fixed direction)
    and a per-feature scale. ``effect`` is the true case-control difference
    along that same direction (in SD units of the projected noise); 0 is the
    null hypothesis.
    """
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=n_features)
    rows, blocks = [], []
    for s in range(n_sites):
        frac = 0.8 if s % 2 == 0 else 0.2
        y = (rng.random(n_per_site) < frac).astype(int)
        y[:2] = [0, 1]  # every site has both classes
        gamma = rng.normal(0, 0.5, n_features) + (frac - 0.5) * confound * direction
        scale = np.sqrt(rng.uniform(0.5, 2.0, n_features))
        age = rng.uniform(20, 60, n_per_site)
        sex = rng.choice(["M", "F"], n_per_site)
        signal = effect * y[:, None] * direction / np.linalg.norm(direction)
        noise = scale * rng.normal(size=(n_per_site, n_features))
        blocks.append(gamma + noise + 0.01 * (age[:, None] - 40) + signal)
        rows += [
            {"subject_key": f"s{s}-{i}", "site": f"site{s}", "dx": "case" if y[i] else "control",
             "age": age[i], "sex": sex[i]}
            for i in range(n_per_site)
        ]
    subjects = pd.DataFrame(rows)
    subjects["y"] = (subjects["dx"] == "case").astype(int)
    names = [f"f{j}" for j in range(n_features)]
    return Features(np.vstack(blocks), subjects, names, "edges",
                    {"case": "case", "control": "control"}, {"type": "simulated"})


@pytest.fixture(scope="session")
def abide_features(abide_dir):
    """Harvard-Oxford connectivity of all 871 ABIDE PCP subjects, computed once per session."""
    if not abide_dir.is_dir():
        pytest.fail(f"ABIDE data not found at {abide_dir}")
    return features_from_abide(abide_dir)
