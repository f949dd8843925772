"""Permutation inference wired into run_analysis, the CLI and AnalysisParams."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from consortium.analysis.design import build_design
from consortium.analysis.encodings import DEFAULT_COVARIATES
from consortium.analysis.nbs import nbs_components
from consortium.analysis.params import AnalysisParams, format_validation_error
from consortium.analysis.permutation import permutation_test
from consortium.analysis.pipeline import run_analysis
from consortium.analysis.results import NbsSection, TfceSection, from_json
from consortium.analysis.tfce import tfce_test
from consortium.cli.main import app as cli
from consortium.report import render_report
from sites.atlas import load_atlas
from tests.consortium.pipeline.conftest import EDGE_OPTIONS, PERMUTATIONS

NBS_OPTIONS = {**EDGE_OPTIONS, "nbs_threshold": 3.0}


def _model(dataset):
    design = build_design(dataset, "all", list(DEFAULT_COVARIATES), 10)
    return design, {
        "data": design.data,
        "fixed": design.fixed,
        "group": "site",
        "term": "dx",
        "reml": False,
    }


@pytest.fixture(scope="module")
def nbs_run(dataset, tmp_path_factory):
    return run_analysis(dataset, "edges", tmp_path_factory.mktemp("nbs") / "out", **NBS_OPTIONS)


def test_edge_p_fwe_is_the_engine_bit_for_bit(dataset, results):
    table = pd.read_parquet(results["edges"] / "edge_effects.parquet")
    design, model = _model(dataset)
    Y = dataset.connectivity("dosenbach160")[design.rows].astype(float)
    direct = permutation_test(Y, **model, n_permutations=PERMUTATIONS, seed=EDGE_OPTIONS["seed"])
    np.testing.assert_array_equal(table["p_fwe"].to_numpy(), direct.p_fwe)
    doc = json.loads((results["edges"] / "results.json").read_text())["edges"]
    assert doc["permutation"] == {
        "method": "freedman-lane", "scheme": "permute", "blocks": "site",
        "n_permutations": PERMUTATIONS, "seed": EDGE_OPTIONS["seed"], "two_sided": True,
    }  # fmt: skip
    assert doc["n_fwe"] == int((direct.p_fwe < 0.05).sum())
    grid = set(range(1, PERMUTATIONS + 2))
    assert {round(b["p_fwe"] * (PERMUTATIONS + 1)) for b in doc["blocks"]} <= grid


def test_nbs_section_names_edges_by_roi_and_network(dataset, nbs_run):
    result = from_json((nbs_run / "results.json").read_text())
    section = result.section("nbs")
    assert isinstance(section, NbsSection) and section.threshold == 3.0
    table = pd.read_parquet(nbs_run / "edge_effects.parquet")
    expected = nbs_components(table["t"].to_numpy(), 3.0, "both")
    assert section.n_components == len(expected) > 0
    atlas = load_atlas("dosenbach160")
    rows, cols = np.triu_indices(atlas.n_rois, k=1)
    for comp, ref in zip(section.components, expected, strict=True):
        assert comp.extent == ref.extent == len(comp.edges)
        # the engine's observed t equals the mass model's t to rounding
        assert comp.intensity == pytest.approx(ref.intensity, rel=1e-9)
        assert 1 / (PERMUTATIONS + 1) <= comp.p_extent <= 1
        for edge in comp.edges:
            assert edge.roi_a == atlas.labels[rows[edge.edge]]
            assert edge.roi_b == atlas.labels[cols[edge.edge]]
            assert edge.network_a == atlas.networks[rows[edge.edge]]
            assert edge.t == pytest.approx(table.loc[edge.edge, "t"], rel=1e-9)
            assert abs(edge.t) > 3.0
    parquet = pd.read_parquet(nbs_run / "nbs_components.parquet")
    assert len(parquet) == sum(c.extent for c in section.components)
    assert (nbs_run / "nbs_components.png").stat().st_size > 0


def test_same_seed_same_results_json(dataset, nbs_run, tmp_path):
    again = run_analysis(dataset, "edges", tmp_path / "again", **NBS_OPTIONS)
    assert (again / "results.json").read_bytes() == (nbs_run / "results.json").read_bytes()
    other = run_analysis(dataset, "edges", tmp_path / "other", **{**NBS_OPTIONS, "seed": 4})
    assert json.loads((other / "results.json").read_text())["nbs"]["seed"] == 4


def test_report_nbs_section_only_when_it_ran(nbs_run, results, tmp_path):
    html = render_report(nbs_run, tmp_path / "nbs.html").read_text()
    assert 'id="nbs"' in html and "Network-based statistic" in html
    assert "Corrected p (size)" in html and "Networks involved" in html
    assert 'alt="NBS components on a glass brain' in html
    atlas = load_atlas("dosenbach160")
    doc = json.loads((nbs_run / "results.json").read_text())
    assert doc["nbs"]["components"][0]["edges"][0]["roi_a"] in atlas.labels
    plain = render_report(results["edges"], tmp_path / "plain.html").read_text()
    assert "Network-based statistic" not in plain


def test_voxels_tfce_writes_fwe_p_maps(dataset, tmp_path):
    out = run_analysis(
        dataset,
        "voxels",
        tmp_path / "v",
        harmonize="none",
        permutations=9,
        seed=2,
        tfce=True,
        chunk_voxels=40,
        progress=False,
    )
    section = from_json((out / "results.json").read_text()).section("tfce")
    assert isinstance(section, TfceSection)
    mask_img, maps = dataset.maps("alff")
    mask = np.asarray(mask_img.dataobj) != 0
    design, model = _model(dataset)
    Y = np.asarray(maps.compute(), float)[design.rows]
    direct = tfce_test(Y, **model, mask=mask_img, random_slopes=("dx",), n_permutations=9, seed=2)
    p_img = nib.load(out / section.maps["p_fwe"])
    np.testing.assert_allclose(p_img.affine, mask_img.affine)
    np.testing.assert_array_equal(p_img.get_fdata()[mask], direct.p_fwe.astype(np.float32))
    assert (p_img.get_fdata()[~mask] == 1).all()
    tfce_map = nib.load(out / section.maps["tfce"]).get_fdata()[mask]
    np.testing.assert_array_equal(tfce_map, direct.tfce.astype(np.float32))
    assert section.n_fwe == int((direct.p_fwe < 0.05).sum())
    assert section.n_fwe == section.n_fwe_positive + section.n_fwe_negative
    assert section.permutation.n_permutations == 9 and section.permutation.seed == 2
    assert (out / "tfce_map.png").stat().st_size > 0
    html = render_report(out, tmp_path / "v.html").read_text()
    assert "threshold-free cluster enhancement" in html and "tfce_p_fwe.nii.gz" in html
    assert 'alt="TFCE-corrected map on a glass brain' in html


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "edges", "nbs_threshold": 0.0}, "nbs_threshold: the NBS threshold must be"),
        ({"kind": "edges", "nbs_threshold": 3.0}, "nbs_threshold need permutations >= 1"),
        ({"kind": "voxels", "tfce": True}, "tfce need permutations >= 1"),
        ({"kind": "edges", "tfce": True, "permutations": 5}, "tfce applies to kind 'voxels'"),
        (
            {"kind": "voxels", "nbs_threshold": 2.0, "permutations": 5},
            "nbs_threshold applies to kind 'edges'",
        ),
        (
            {"kind": "edges", "tail_approximation": True, "permutations": 50},
            "tail_approximation needs permutations >= 100",
        ),
        ({"kind": "edges", "scheduler": " "}, "scheduler: the scheduler address is empty"),
    ],
)
def test_params_validation(options, message):
    with pytest.raises(ValidationError) as info:
        AnalysisParams(**options)
    assert message in format_validation_error(info.value)


def test_params_provenance_leaves_out_the_scheduler():
    params = AnalysisParams(
        kind="edges", permutations=5, nbs_threshold=3.0, scheduler="tcp://127.0.0.1:8786"
    )
    recorded = params.provenance()
    assert "scheduler" not in recorded
    assert recorded["nbs_threshold"] == 3.0 and recorded["permutations"] == 5


def test_cli_options(synthetic_bundles, tmp_path):
    runner = CliRunner()
    for kind, flags in (("edges", ["--nbs-threshold"]), ("voxels", ["--tfce"])):
        shown = runner.invoke(cli, ["analyze", kind, "--help"], terminal_width=200)
        assert shown.exit_code == 0
        for flag in (*flags, "--permutations", "--tail-approximation", "--scheduler"):
            assert flag in shown.output
    bundles = [arg for b in synthetic_bundles for arg in ("--bundles", str(b.path))]
    refused = runner.invoke(
        cli,
        [
            "analyze",
            "edges",
            "--out",
            str(tmp_path / "x"),
            *bundles,
            "--tfce",
            "--permutations",
            "3",
        ],
    )
    assert refused.exit_code == 1 and "tfce applies to kind 'voxels'" in refused.output
    ran = runner.invoke(
        cli,
        [
            "analyze",
            "voxels",
            "--out",
            str(tmp_path / "v"),
            *bundles,
            "--harmonize",
            "none",
            "--permutations",
            "3",
            "--tfce",
            "--quiet",
        ],
    )
    assert ran.exit_code == 0, ran.output
    assert (tmp_path / "v" / "tfce_p_fwe.nii.gz").is_file()


def test_scheduler_client_gives_the_same_results(dataset, tmp_path):
    from distributed import LocalCluster

    from consortium.analysis.cluster import connect

    options = {"harmonize": "none", "permutations": 70, "seed": 5, "tfce": True, "chunk_voxels": 40}
    local = run_analysis(dataset, "voxels", tmp_path / "local", **options)
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    )
    with cluster, connect(cluster.scheduler_address) as client:
        remote = run_analysis(dataset, "voxels", tmp_path / "remote", client=client, **options)
    assert (remote / "results.json").read_bytes() == (local / "results.json").read_bytes()
    for name in ("tfce_map.nii.gz", "tfce_p_fwe.nii.gz"):
        np.testing.assert_array_equal(
            nib.load(remote / name).get_fdata(), nib.load(local / name).get_fdata()
        )


def test_unreachable_scheduler_is_a_clear_error():
    from consortium.analysis.cluster import connect
    from consortium.analysis.errors import AnalysisError

    with pytest.raises(AnalysisError, match="scheduler 'tcp://127.0.0.1:9' cannot be reached"):
        with connect("tcp://127.0.0.1:9"):
            pass


@pytest.mark.slow
def test_random_slope_with_ten_sites_flips_whole_sites(tmp_path):
    """The scheme the kinds choose with a site slope of Dx and >= 10 sites, end to end."""
    from consortium.dataset import Dataset
    from tests.helpers.bundles import make_bundles

    bundles = make_bundles(tmp_path / "bundles", n_sites=10, seed=5)
    ten = Dataset.from_bundles(bundles, release_name="ten-sites", release_hash="e" * 64)
    out = run_analysis(
        ten, "edges", tmp_path / "edges", harmonize="none", permutations=64, seed=2,
        random_slope=True, progress=False,
    )  # fmt: skip
    design, model = _model(ten)
    Y = ten.connectivity("dosenbach160")[design.rows].astype(float)
    direct = permutation_test(
        Y, **model, random_slopes=("dx",), n_permutations=64, seed=2, scheme="signflip",
        components="null",
    )  # fmt: skip
    table = pd.read_parquet(out / "edge_effects.parquet")
    np.testing.assert_array_equal(table["p_fwe"].to_numpy(), direct.p_fwe)
    doc = json.loads((out / "results.json").read_text())["edges"]["permutation"]
    assert doc["scheme"] == "signflip"
    assert doc["method"] == "freedman-lane, variance components under H0"
