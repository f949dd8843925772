"""The consortium simulator: design facts, file formats, reproducibility, planted effect."""

from __future__ import annotations

import tomllib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io

from consortium.simulate import (
    ConsortiumSimulator,
    SignalModel,
    SimulationError,
    load_site_facts,
    summarize_design,
    write_site_config,
)
from sites.config import load_config
from sites.phenotypes import load_phenotypes
from sites.timeseries import read_timeseries


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[ConsortiumSimulator, list, Path]:
    """Four sites (one per time series format), few subjects."""
    out = tmp_path_factory.mktemp("sim")
    sim = ConsortiumSimulator(n_sites=4, subjects_scale=0.08, seed=3,
                              model=SignalModel(n_volumes=120))
    return sim, sim.write(out), out


def test_site_facts_match_published_design(shared_dir: Path) -> None:
    design_file = shared_dir / "data" / "restmeta-pnas-design" / "design_848MDD_794NC.csv"
    expected = summarize_design(design_file)
    shipped = load_site_facts()
    assert list(shipped.columns) == list(expected.columns)
    assert shipped[["site", "group", "n"]].equals(expected[["site", "group", "n"]])
    numeric = [c for c in expected.columns if c not in ("site", "group", "n")]
    np.testing.assert_allclose(shipped[numeric], expected[numeric], rtol=1e-5)
    raw = pd.read_csv(design_file)
    assert shipped["n"].sum() == len(raw) == 1642
    assert shipped.loc[shipped["group"] == "MDD", "n"].sum() == (raw["Dx"] == 1).sum() == 848
    assert shipped["site"].nunique() == 17


def test_default_design_has_published_group_sizes() -> None:
    design = ConsortiumSimulator(seed=0).simulate_design()
    facts = load_site_facts()
    counts = design.groupby(["site_id", "dx"]).size()
    for _, row in facts.iterrows():
        assert counts[(f"S{row['site']:02d}", row["group"])] == row["n"]
    assert design["age"].between(facts["age_min"].min(), facts["age_max"].max()).all()
    assert set(design["sex"]) == {"M", "F"}


def test_formats_are_readable_by_the_site_agent(small) -> None:
    sim, sites, _ = small
    formats = {s.style.timeseries_format for s in sites}
    assert formats == {"1D", "1D.gz", "mat", "tsv"}
    assert {s.style.phenotype_format for s in sites} == {"csv", "tsv", "xlsx"}
    for site in sites:
        config_path = write_site_config(site)
        config = load_config(config_path)  # the agent's own schema accepts it
        phen = load_phenotypes(config.phenotypes, config.resolve(config.phenotypes.path))
        assert not phen.problems
        truth = site.subjects.set_index("file_id")
        table = phen.table.loc[truth.index]
        assert (table["dx"] == truth["dx"]).all() and (table["sex"] == truth["sex"]).all()
        np.testing.assert_allclose(table["age"], truth["age"])
        np.testing.assert_allclose(table["mean_fd"], truth["mean_fd"])
        conn = config.connectivity[0]
        subject = truth.index[0]
        path = config.resolve(conn.pattern.replace("{subject_id}", subject))
        ts = read_timeseries(path, conn.columns, 160)
        assert ts.shape == (120, 160)
        # Independent parse of the same file.
        if site.style.timeseries_format == "mat":
            wide = scipy.io.loadmat(path)["ROISignals"]
            assert wide.shape == (120, 1568)
            assert not wide[:, :1408].any()
            np.testing.assert_allclose(ts, wide[:, 1408:1568], rtol=1e-6)
        else:
            header = 0 if site.style.timeseries_format == "tsv" else None
            raw = pd.read_csv(path, sep="\t", comment=None if header == 0 else "#",
                              header=header).to_numpy()
            np.testing.assert_allclose(ts, raw, atol=1e-4)
        mask = nib.load(site.mask_file)
        alff = nib.load(config.resolve(config.maps[0].pattern.replace("{subject_id}", subject)))
        assert alff.shape == mask.shape and np.allclose(alff.affine, mask.affine)
        inside = np.asarray(mask.dataobj) > 0
        assert np.isfinite(alff.get_fdata()[inside]).all() and inside.sum() > 2000


def test_same_seed_same_data_other_seed_other_data(small, tmp_path) -> None:
    sim, sites, out = small
    again = ConsortiumSimulator(n_sites=4, subjects_scale=0.08, seed=3,
                                model=SignalModel(n_volumes=120))
    again.write(tmp_path / "again")
    other = ConsortiumSimulator(n_sites=4, subjects_scale=0.08, seed=4,
                                model=SignalModel(n_volumes=120))
    other.write(tmp_path / "other")
    for site in sites:
        first = sorted((site.directory / "timeseries").iterdir())[0]
        fmt = site.style.timeseries_format
        columns = "1409-1568" if fmt == "mat" else None
        twin = tmp_path / "again" / site.site_id / "timeseries" / first.name
        np.testing.assert_array_equal(read_timeseries(first, columns, 160),
                                      read_timeseries(twin, columns, 160))
        assert (first.read_bytes() == twin.read_bytes()) or fmt == "mat"  # .mat has a date
    pd.testing.assert_frame_equal(pd.read_csv(out / "simulation_truth.csv"),
                                  pd.read_csv(tmp_path / "again" / "simulation_truth.csv"))
    assert not pd.read_csv(out / "simulation_truth.csv")["age"].equals(
        pd.read_csv(tmp_path / "other" / "simulation_truth.csv")["age"])


def _direct_d(sim: ConsortiumSimulator, seed: int) -> tuple[float, float]:
    """Standardized Dx effect on mean DMN FC from np.corrcoef, OLS with site dummies."""
    design = sim.simulate_design()
    calibration = sim.calibrate()
    effects = sim.site_effects()
    rng = np.random.default_rng(seed)
    z = sim.latent_z(design, rng, effects, calibration.shift)
    dmn = np.flatnonzero(sim.atlas_.dmn)
    iu = np.triu_indices(len(dmn), k=1)
    y = np.empty(len(design))
    for start in range(0, len(design), 256):
        stop = start + 256
        series = sim.timeseries(z[start:stop], design["mean_fd"].to_numpy()[start:stop], rng)
        for i, ts in enumerate(series):
            r = np.corrcoef(ts[:, dmn].astype(np.float64), rowvar=False)
            y[start + i] = np.arctanh(r[iu]).mean()
    case = (design["dx"] == "MDD").to_numpy(float)
    X = np.column_stack([pd.get_dummies(design["site_id"]).to_numpy(float), case,
                         design["age"], design["sex"] == "F", design["education_years"],
                         design["mean_fd"]]).astype(float)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    df = len(y) - X.shape[1]
    k = X.shape[1] - 5
    t = beta[k] / np.sqrt(resid @ resid / df * np.linalg.inv(X.T @ X)[k, k])
    n1, n2 = case.sum(), len(case) - case.sum()
    return t * (n1 + n2) / (np.sqrt(df) * np.sqrt(n1 * n2)), np.sqrt((n1 + n2) / (n1 * n2))


@pytest.mark.parametrize("planted", [-0.5, 0.0])
def test_planted_effect_visible_in_direct_computation(planted: float) -> None:
    sim = ConsortiumSimulator(seed=11, model=SignalModel(effect_size=planted))
    d, se = _direct_d(sim, seed=5)
    assert abs(d - planted) < 3 * se, (d, planted, se)


def test_multiplicative_site_effects_keep_pooled_scale() -> None:
    sim = ConsortiumSimulator(seed=2)
    design = sim.simulate_design()
    effects = sim.site_effects()
    weights = design["site_id"].value_counts().reindex(effects.index)
    assert np.average(effects["multiplicative"] ** 2, weights=weights) == pytest.approx(1.0)
    assert effects["multiplicative"].std() > 0.05  # site effects are really there
    additive = effects.filter(like="additive_")
    assert additive.shape[1] == 7 and additive.to_numpy().std() > 0.01


def test_bad_options_and_inputs(tmp_path: Path, small) -> None:
    with pytest.raises(SimulationError, match="n_sites"):
        ConsortiumSimulator(n_sites=0).simulate_design()
    with pytest.raises(SimulationError, match="subjects_scale"):
        ConsortiumSimulator(subjects_scale=-1).simulate_design()
    bad = tmp_path / "design.csv"
    bad.write_text("SubID,Site,Dx,Age\nA,1,1,30\n")
    with pytest.raises(SimulationError, match="design.csv.*Edu"):
        summarize_design(bad)
    _, sites, out = small
    sim = ConsortiumSimulator(n_sites=4, subjects_scale=0.08, seed=3)
    with pytest.raises(SimulationError, match=f"{sites[0].site_id} already exists"):
        sim.write(out)


def test_site_config_keeps_keys_written_by_init(small, tmp_path) -> None:
    _, sites, _ = small
    config = tmp_path / "site.toml"
    config.write_text('site_id = "S01"\n[keys]\nprivate_key = "k/priv.pem"\n'
                      'public_key = "k/pub.pem"\nsecret = "k/secret"\n')
    write_site_config(sites[0], config)
    data = tomllib.loads(config.read_text())
    assert data["keys"]["private_key"] == "k/priv.pem"
    assert data["phenotypes"]["dx_case"] == "MDD"
    assert data["connectivity"][0]["atlas"] == "dosenbach160"
