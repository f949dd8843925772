"""run_analysis: each kind against independent computations, reproducibility, bad input."""

from __future__ import annotations

import json
import warnings

import dask.array as da
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import special
from statsmodels.stats.multitest import fdrcorrection

from consortium.analysis import mass_mixed_model, mixed_model
from consortium.analysis.pipeline import AnalysisError, build_design, run_analysis
from consortium.dataset import Dataset
from sites.atlas import load_atlas
from tests.consortium.pipeline.conftest import EDGE_OPTIONS, PERMUTATIONS
from tests.helpers.bundles import make_bundles

COVARIATES = ["age", "sex", "education_years", "mean_fd"]


def _frame(dataset) -> pd.DataFrame:
    """The model data built independently of the pipeline's design code."""
    s = dataset.subjects
    return pd.DataFrame({
        "site": s["site"], "dx": np.where(s["dx"] == "MDD", 1.0, -1.0),
        "age": s["age"].astype(float), "sex": (s["sex"] == "M").astype(float),
        "education_years": s["education_years"].astype(float),
        "mean_fd": s["mean_fd"].astype(float),
    })


def _mean_dmn(edges: np.ndarray) -> np.ndarray:
    atlas = load_atlas("dosenbach160")
    rows, cols = np.triu_indices(atlas.n_rois, k=1)
    return edges[:, atlas.dmn[rows] & atlas.dmn[cols]].mean(axis=1)


def _statsmodels_dx_t(frame: pd.DataFrame, y: np.ndarray) -> float:
    """t of Dx in y ~ Dx + covariates + (1|site) + (0 + Dx|site), ML, by statsmodels."""
    data = frame.assign(y=y)
    model = smf.mixedlm("y ~ dx + " + " + ".join(COVARIATES), data, groups="site",
                        re_formula="1", vc_formula={"dxslope": "0 + dx"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.fit(reml=False, method=["lbfgs", "powell"])
    return float(fit.tvalues["dx"])


def _d(t: float, n1: int, n2: int, df: float) -> float:
    return t * (n1 + n2) / (np.sqrt(df) * np.sqrt(n1 * n2))


def _load(path) -> dict:
    return json.loads((path / "results.json").read_text())


def test_dmn_without_combat_matches_statsmodels(dataset, results):
    doc = _load(results["dmn"])
    model = doc["dmn"]["models"]["none"]
    frame = _frame(dataset)
    y = _mean_dmn(dataset.connectivity("dosenbach160").astype(float))
    t = _statsmodels_dx_t(frame, y)
    assert model["t"] == pytest.approx(t, rel=1e-3)
    n1, n2 = int((frame.dx > 0).sum()), int((frame.dx < 0).sum())
    assert (model["n_case"], model["n_control"]) == (n1, n2)
    assert model["df"] == len(frame) - 6
    assert model["d"] == pytest.approx(_d(model["t"], n1, n2, model["df"]), rel=1e-12)
    assert model["d_ci"][0] < model["d"] < model["d_ci"][1]
    # The synthetic sites have a strong planted DMN reduction in cases.
    assert model["d"] < -0.5 and model["p"] < 0.05
    table = pd.read_parquet(results["dmn"] / "mixed_model.parquet")
    assert set(table["harmonization"]) == {"none", "combat"}
    assert table.query("harmonization == 'none' and term == 'dx'")["t"].iloc[0] == model["t"]


def test_dmn_with_combat_matches_neurocombat(dataset, results):
    from neuroCombat import neuroCombat

    doc = _load(results["dmn"])
    assert doc["dmn"]["primary"] == "combat"
    frame = _frame(dataset)
    edges = dataset.connectivity("dosenbach160").astype(float)
    covars = frame.rename(columns={"site": "batch"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        harmonized = neuroCombat(dat=edges.T, covars=covars, batch_col="batch",
                                 continuous_cols=["dx", *COVARIATES])["data"].T
    t = _statsmodels_dx_t(frame, _mean_dmn(harmonized))
    combat = doc["dmn"]["models"]["combat"]
    assert combat["t"] == pytest.approx(t, rel=1e-3)
    assert combat["t"] != doc["dmn"]["models"]["none"]["t"]


def test_dmn_site_meta_analysis(dataset, results):
    from consortium.analysis import random_effects

    doc = _load(results["dmn"])
    assert doc["dmn"]["primary"] == "combat"
    assert doc["meta"]["outcome_harmonization"] == "none"  # per-site t needs no ComBat
    sites = pd.read_parquet(results["dmn"] / "site_effects.parquet")
    frame = _frame(dataset)
    y = dataset.network_summaries("dosenbach160")["dmn_restmeta"].to_numpy(np.float64)
    for row in sites.itertuples():
        part = frame[frame.site == row.site].assign(y=y[frame.site == row.site])
        fit = smf.ols("y ~ dx + " + " + ".join(COVARIATES), part).fit()
        n1, n2 = int((part.dx > 0).sum()), int((part.dx < 0).sum())
        m = n1 + n2 - 2
        j = special.gamma(m / 2) / (np.sqrt(m / 2) * special.gamma((m - 1) / 2))
        g = j * fit.tvalues["dx"] * np.sqrt(1 / n1 + 1 / n2)
        assert row.yi == pytest.approx(g, rel=1e-8)
        assert row.vi == pytest.approx(1 / n1 + 1 / n2 + (1 - (m - 2) / (m * j**2)) * g**2,
                                       rel=1e-8)
    pooled = random_effects(sites["yi"], sites["vi"], method="REML")
    assert doc["meta"]["estimate"] == pytest.approx(pooled.estimate, rel=1e-12)
    assert doc["meta"]["k"] == 3 and len(doc["meta"]["leave_one_site_out"]) == 3
    for name in ("forest.png", "forest.svg", "dmn_rois.png", "sample.parquet",
                 "qc_exclusions.parquet", "leave_one_site_out.parquet"):
        assert (results["dmn"] / name).stat().st_size > 0, name


def test_sample_qc_and_provenance(dataset, results):
    doc = _load(results["dmn"])
    sample = pd.read_parquet(results["dmn"] / "sample.parquet")
    counts = dataset.subjects.groupby(["site", "dx"]).size()
    for row in sample.itertuples():
        assert row.n == counts[(row.site, row.group)]
        ages = dataset.subjects.query("site == @row.site and dx == @row.group")["age"]
        assert row.age_mean == pytest.approx(ages.mean())
    qc = pd.read_parquet(results["dmn"] / "qc_exclusions.parquet")
    assert qc["n"].sum() == doc["qc"]["n_excluded"] == 6
    provenance = doc["provenance"]
    assert provenance["release_name"] == "test-release"
    assert provenance["release_hash"] == "f" * 64
    assert provenance["parameters"]["harmonize"] == "combat"
    assert provenance["seed"] == 0
    assert {"numpy", "nilearn", "confed"} <= set(provenance["software"])
    assert set(provenance["bundle_hashes"]) == {"SITE_A", "SITE_B", "SITE_C"}
    assert doc["design"]["notes"] == []
    assert not (results["dmn"] / "results.json").read_text().count("NaN")


def test_networks(dataset, results):
    doc = _load(results["networks"])
    table = pd.read_parquet(results["networks"] / "network_effects.parquet")
    summaries = dataset.network_summaries("dosenbach160")
    pairs = [c for c in summaries.columns if "__" in c]
    none = table[table.harmonization == "none"].set_index("pair")
    assert sorted(none.index) == sorted(pairs)
    frame = _frame(dataset)
    fit = mixed_model(frame.assign(y=summaries["default__default"].to_numpy()), "y",
                      ["dx", *COVARIATES], "site", random_slopes=("dx",), reml=False)
    assert none.loc["default__default", "t"] == pytest.approx(fit.tvalues["dx"], rel=1e-5)
    np.testing.assert_allclose(none["q"], fdrcorrection(none["p"])[1], rtol=1e-12)
    assert doc["figures"]["network_matrix"]["png"] == "network_matrix.png"
    assert none.loc["default__default", "d"] < 0


def test_edges(dataset, results):
    out = results["edges"]
    doc = _load(out)
    table = pd.read_parquet(out / "edge_effects.parquet")
    assert len(table) == 12720
    frame = _frame(dataset)
    edges = dataset.connectivity("dosenbach160").astype(float)
    for edge in (0, 5000, 12719):
        fit = mixed_model(frame.assign(y=edges[:, edge]), "y", ["dx", *COVARIATES], "site",
                          random_slopes=(), reml=False)
        assert table.loc[edge, "t"] == pytest.approx(fit.tvalues["dx"], rel=1e-4)
    np.testing.assert_allclose(table["q"], fdrcorrection(table["p"])[1], rtol=1e-12)
    t_matrix = pd.read_parquet(out / "edge_t_matrix.parquet").to_numpy()
    rows, cols = np.triu_indices(160, k=1)
    np.testing.assert_array_equal(t_matrix[rows, cols], table["t"])
    np.testing.assert_array_equal(t_matrix, t_matrix.T)
    # The planted effect is on DMN edges only: their block is negative, others near zero.
    blocks = pd.read_parquet(out / "network_blocks.parquet").set_index("pair")
    assert blocks.loc["default__default", "mean_d"] < -0.3
    others = blocks.drop(index="default__default")["mean_d"]
    assert np.abs(others).max() < 0.15
    assert (table["p_fwe"] >= table["p"] - 1e-12).all()
    assert set(np.round(table["p_fwe"] * (PERMUTATIONS + 1))) <= set(range(1, PERMUTATIONS + 2))
    assert doc["edges"]["n_edges"] == 12720 and len(doc["edges"]["strongest"]) == 20
    assert (out / "strongest_edges.png").stat().st_size > 0


def test_voxels_streamed_equal_in_memory(dataset, results):
    out = results["voxels"]
    doc = _load(out)["voxels"]
    mask_img, data = dataset.maps("alff")
    frame = _frame(dataset)
    direct = mass_mixed_model(data.compute().astype(float), frame, ["dx", *COVARIATES], "site",
                              random_slopes=("dx",), reml=False)
    table = pd.read_parquet(out / "voxel_effects.parquet")
    # Per-feature optimizer stopping depends slightly on the chunk it runs in.
    np.testing.assert_allclose(table["t"], direct.tvalues["dx"], rtol=1e-7)
    t_img = nib.load(out / "t_map.nii.gz")
    np.testing.assert_allclose(t_img.affine, mask_img.affine)
    mask = mask_img.get_fdata() != 0
    np.testing.assert_allclose(t_img.get_fdata()[mask], table["t"], rtol=1e-6)
    assert (t_img.get_fdata()[~mask] == 0).all()
    thresholded = nib.load(out / "t_map_fdr05.nii.gz").get_fdata()[mask]
    assert ((thresholded != 0) == (table["q"] < 0.05).to_numpy()).all()
    assert doc["n_fdr"] == int((table["q"] < 0.05).sum()) > 0
    # Planted: the first quarter of the voxels is higher in cases.
    planted = table["t"].to_numpy()[: len(table) // 4]
    assert (planted > 0).mean() > 0.9


@pytest.mark.slow
def test_reproducible_bit_for_bit(dataset, tmp_path, results):
    again = run_analysis(dataset, "edges", tmp_path / "edges", **EDGE_OPTIONS)
    for name in ("results.json", "edge_effects.parquet", "network_blocks.parquet",
                 "edge_t_matrix.parquet", "sample.parquet"):
        assert (again / name).read_bytes() == (results["edges"] / name).read_bytes(), name
    dmn = run_analysis(dataset, "dmn", tmp_path / "dmn", progress=False)
    for name in ("results.json", "mixed_model.parquet", "site_effects.parquet", "forest.svg"):
        assert (dmn / name).read_bytes() == (results["dmn"] / name).read_bytes(), name


def test_missing_covariate_is_dropped_with_a_note(tmp_path):
    bundles = make_bundles(tmp_path, n_sites=2, education=False)
    design = build_design(Dataset.from_bundles(bundles), covariates=COVARIATES)
    assert design.covariates == ["age", "sex", "mean_fd"]
    assert any("education_years" in note for note in design.notes)


def test_contrasts_select_subgroups(dataset):
    s = dataset.subjects
    recurrent = build_design(dataset, "recurrent", min_per_group=3)
    assert recurrent.n_case == int(((s.dx == "MDD") & (s.episode == "recurrent")).sum())
    assert recurrent.n_control == int((s.dx == "HC").sum())
    fedn = ((s.dx == "MDD") & (s.episode == "first") & (s.medication == "naive")).sum()
    design = build_design(dataset, "fedn_vs_recurrent", min_per_group=2)
    assert design.n_case == int(fedn) and design.n_control == recurrent.n_case
    assert design.groups["control"] == "recurrent MDD"


def test_small_sites_are_excluded(dataset):
    design = build_design(dataset, min_per_group=14)
    assert [s["site"] for s in design.sites_excluded] == ["SITE_A"]
    assert design.sites == ["SITE_B", "SITE_C"]
    with pytest.raises(AnalysisError, match="at least 2 sites"):
        build_design(dataset, min_per_group=15)


def test_bad_input_leaves_no_output(dataset, tmp_path):
    with pytest.raises(AnalysisError, match="unknown analysis kind 'roi'"):
        run_analysis(dataset, "roi", tmp_path / "x", progress=False)
    with pytest.raises(AnalysisError, match="unknown contrast"):
        run_analysis(dataset, "dmn", tmp_path / "x", contrast="mdd", progress=False)
    with pytest.raises(AnalysisError, match=r"unknown atlas 'ho111'.*\['dosenbach160'\]"):
        run_analysis(dataset, "dmn", tmp_path / "x", atlas="ho111", progress=False)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="full"):
        run_analysis(dataset, "dmn", tmp_path / "full", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["full"]


@pytest.mark.parametrize("atlas", ["ho111", "aal116"])
def test_atlas_without_dmn_is_refused(tmp_path, atlas):
    bundles = make_bundles(tmp_path / "bundles", n_sites=2, atlas_name=atlas)
    with pytest.raises(AnalysisError, match=f"atlas '{atlas}' has no REST-meta-MDD DMN"):
        run_analysis(Dataset.from_bundles(bundles), "dmn", tmp_path / "out", atlas=atlas,
                     progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["bundles"]


def test_missing_phenotype_for_contrast(tmp_path):
    bundles = make_bundles(tmp_path, n_sites=2)
    dataset = Dataset.from_bundles(bundles)
    dataset.subjects = dataset.subjects.drop(columns=["episode"])
    with pytest.raises(AnalysisError, match="'episode'"):
        build_design(dataset, "recurrent")


def test_voxels_combat_streamed_equal_in_memory(dataset, tmp_path):
    """Streamed DaskComBat + chunked model equals in-memory ComBat, then the model."""
    from harmonization.combat import ComBat

    out = run_analysis(dataset, "voxels", tmp_path / "voxels", harmonize="combat",
                       chunk_voxels=40, progress=False)
    frame = _frame(dataset)
    values = dataset.maps("alff")[1].compute().astype(np.float64)
    harmonized = ComBat().fit_transform(values, frame["site"].to_numpy(),
                                        frame[["dx", *COVARIATES]])
    direct = mass_mixed_model(harmonized, frame, ["dx", *COVARIATES], "site",
                              random_slopes=("dx",), reml=False, chunk_size=40)
    table = pd.read_parquet(out / "voxel_effects.parquet")
    # Measured: median relative difference of t 2e-15, max 1.8e-9 (7 of 150 voxels above
    # 1e-10): rounding differences (here the covariate coding) moved by the optimizer's stop.
    np.testing.assert_allclose(table["t"], direct.tvalues["dx"], rtol=1e-8, atol=0)
    np.testing.assert_allclose(table["estimate"], direct.params["dx"], rtol=1e-8, atol=1e-12)
    # ComBat changed the data: the unharmonized model gives other t values.
    raw = mass_mixed_model(values, frame, ["dx", *COVARIATES], "site",
                           random_slopes=("dx",), reml=False, chunk_size=40)
    assert np.abs(table["t"] - raw.tvalues["dx"]).max() > 1e-3
    assert _load(out)["provenance"]["parameters"]["harmonize"] == "combat"


def test_voxels_combat_non_finite_map_names_subject(dataset, tmp_path, monkeypatch):
    mask_img, data = dataset.maps("alff")
    values = data.compute()
    values[5, 17] = np.nan
    bad = da.from_array(values, chunks=(-1, 64))
    monkeypatch.setattr(dataset, "maps", lambda metric, chunk_voxels=None: (mask_img, bad))
    key = str(dataset.subjects["subject_key"].iloc[5])[:16]
    site = dataset.subjects["site"].iloc[5]
    with pytest.raises(AnalysisError, match=f"site '{site}', subject {key}: map 'alff'"):
        run_analysis(dataset, "voxels", tmp_path / "x", harmonize="combat", chunk_voxels=40,
                     progress=False)
    assert list(tmp_path.iterdir()) == []
