"""`confed analyze --harmonize combat-gam`: the command's numbers against the library.

The command runs in its own process on bundle directories; the expected values are
computed here with :class:`harmonization.gam.GAMComBat` fitted directly on the edges
(diagnosis and covariates preserved, a smooth age term), then the mixed model.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from consortium.analysis import mixed_model
from harmonization.gam import GAMComBat
from tests.consortium.pipeline.test_pipeline import COVARIATES, _frame, _mean_dmn


@pytest.fixture(scope="module")
def gam_run(synthetic_bundles, tmp_path_factory):
    out = tmp_path_factory.mktemp("gam") / "dmn"
    bundles = [str(b.path) for b in synthetic_bundles]
    args = [sys.executable, "-m", "consortium.cli.main", "analyze", "dmn", "--out", str(out),
            "--harmonize", "combat-gam", "--quiet"]
    for bundle in bundles:
        args += ["--bundles", bundle]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads((out / "results.json").read_text())


def test_cli_combat_gam_equals_library_gam_combat(dataset, gam_run):
    frame = _frame(dataset)
    edges = dataset.connectivity("dosenbach160").astype(np.float64)
    covariates = frame[["dx", *COVARIATES]].reset_index(drop=True)
    harmonized = GAMComBat(smooth_terms=("age",)).fit_transform(edges, frame["site"].to_numpy(),
                                                          covariates)
    fit = mixed_model(frame.assign(y=_mean_dmn(harmonized)), "y", ["dx", *COVARIATES], "site",
                      random_slopes=("dx",), reml=False)
    models = gam_run["dmn"]["models"]
    assert gam_run["dmn"]["primary"] == "combat-gam"
    assert gam_run["provenance"]["parameters"]["harmonize"] == "combat-gam"
    assert models["combat-gam"]["t"] == pytest.approx(float(fit.tvalues["dx"]), rel=1e-8)
    # GAM ComBat is not plain ComBat: the smooth age term changes the harmonized data.
    assert models["combat-gam"]["t"] != models["none"]["t"]
