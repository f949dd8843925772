"""Session-wide synthetic bundles and one run of each analysis kind (shared by tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.analysis.pipeline import run_analysis
from consortium.dataset import Dataset
from tests.helpers.bundles import make_bundles

# Few permutations, random-intercept edges: keeps the suite fast (a random-slope fit of
# 12,720 edges takes ~8 s here); the slope model is covered by the dmn/networks/voxels runs.
PERMUTATIONS = 4
EDGE_OPTIONS = {"harmonize": "none", "permutations": PERMUTATIONS, "seed": 3,
                "random_slope": False, "progress": False}


@pytest.fixture(scope="session")
def synthetic_bundles(tmp_path_factory) -> list:
    return make_bundles(tmp_path_factory.mktemp("bundles"), n_sites=3, seed=1)


@pytest.fixture(scope="session")
def dataset(synthetic_bundles) -> Dataset:
    return Dataset.from_bundles(synthetic_bundles, release_name="test-release",
                                release_hash="f" * 64)


@pytest.fixture(scope="session")
def results(dataset, tmp_path_factory) -> dict[str, Path]:
    """One results directory per kind."""
    root = tmp_path_factory.mktemp("results")
    out = {}
    out["dmn"] = run_analysis(dataset, "dmn", root / "dmn", progress=False)
    out["networks"] = run_analysis(dataset, "networks", root / "networks", progress=False)
    out["edges"] = run_analysis(dataset, "edges", root / "edges", **EDGE_OPTIONS)
    out["voxels"] = run_analysis(dataset, "voxels", root / "voxels", harmonize="none",
                                 chunk_voxels=40, progress=False)
    return out
