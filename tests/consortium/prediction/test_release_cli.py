"""`confed predict run --release NAME --root DIR`: features read through ``open_release``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from consortium.cli.main import app
from consortium.coordinator import Coordinator
from consortium.ingest import ingest_archive
from consortium.registry import add_site
from consortium.releases import create_release, get_release
from sites.bundle import read_bundle
from tests.helpers.archives import tar_dir
from tests.helpers.bundles import synthetic_bundle
from tests.helpers.keys import make_keys
from tests.helpers.server import init_coordinator

SITES = ("S01", "S02", "S03", "S04")


def _coordinator_root(tmp_path):
    """A root with four ingested sites and release r1 of three of them, one subject out."""
    root = tmp_path / "coord"
    init_coordinator(root)
    coord = Coordinator.open(root)
    bundles = {}
    for i, site in enumerate(SITES):
        private, public = make_keys(tmp_path / "keys", site)
        with coord.db.session() as s:
            add_site(s, site, site, public.read_text(), "test")
        bundles[site] = synthetic_bundle(tmp_path / "b" / site, site, private, seed=i)
        ingest_archive(coord, tar_dir(bundles[site], tmp_path / f"{site}.tar"), site, "test")
    dropped = read_bundle(bundles["S02"]).subjects["subject_key"].iloc[0]
    with coord.db.session() as s:
        release = create_release(s, "r1", "test", sites=["S01", "S02", "S03"],
                                 exclude_subjects=[dropped])  # fmt: skip
        release_hash = release.release_hash
    with coord.db.session() as s:
        assert get_release(s, "r1").release_hash == release_hash
    return root, bundles, release_hash, dropped


def test_predict_run_on_a_release(tmp_path):
    root, bundles, release_hash, dropped = _coordinator_root(tmp_path)
    expected = pd.concat(
        [read_bundle(bundles[s]).subjects.assign(site=s) for s in ("S01", "S02", "S03")],
        ignore_index=True,
    )
    expected = expected[expected["subject_key"] != dropped]

    out = tmp_path / "pred"
    args = ["predict", "run", "--release", "r1", "--root", str(root), "--out", str(out),
            "--scheme", "leave-one-site-out", "--scheme", "stratified-kfold", "--folds", "3",
            "--model", "logistic", "--grid", "1", "--permutations", "0",
            "--harmonize", "none"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "prediction.json").read_text())

    data = doc["data"]
    assert data["type"] == "release"
    assert data["release_name"] == "r1" and data["release_hash"] == release_hash
    assert data["n_subjects"] == len(expected) == 3 * 24 - 1
    assert data["n_sites"] == 3 and "S04" not in data["sites"]
    for site, rows in expected.groupby("site"):
        assert data["sites"][site]["n"] == len(rows)
        assert data["sites"][site]["n_case"] == int((rows["dx"] == "ASD").sum())
    assert data["n_features"] == 45 and data["atlas"] == "toy"  # 10 ROIs -> 45 edges

    predictions = pd.read_csv(out / "predictions.csv")
    loso = predictions[predictions["scheme"] == "leave-one-site-out"]
    assert len(loso) == len(expected)
    assert set(loso["subject_key"]) == set(expected["subject_key"])  # release rows only
    assert set(loso["site"]) == {"S01", "S02", "S03"}
    assert np.isfinite(loso["score"].to_numpy(dtype=float)).all()
    assert doc["config"]["grid"] == [1.0] and doc["config"]["n_folds"] == 3


def test_predict_run_release_errors(tmp_path):
    root, *_ = _coordinator_root(tmp_path)
    runner = CliRunner()
    common = ["--out", str(tmp_path / "o"), "--model", "logistic", "--grid", "1"]
    missing = runner.invoke(app, ["predict", "run", "--release", "nope", "--root", str(root),
                                  *common])  # fmt: skip
    # a clear one-line error, not a traceback from an unhandled ConfedError
    assert missing.exit_code == 1 and isinstance(missing.exception, SystemExit)
    assert "error: release nope not found" in missing.output
    no_root = runner.invoke(app, ["predict", "run", "--release", "r1", *common])
    assert no_root.exit_code == 2 and "--root" in no_root.output
    assert not (tmp_path / "o").exists()
