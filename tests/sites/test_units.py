"""Unit checks: connectivity vs nilearn, motion formulas, atlas, keys, pseudonyms, phenotypes."""

from __future__ import annotations

import hashlib
import hmac
import stat

import numpy as np
import pandas as pd
import pytest
from nilearn.connectome import ConnectivityMeasure
from sklearn.covariance import EmpiricalCovariance
from typer.testing import CliRunner

from sites.atlas import AtlasError, load_atlas
from sites.cli import app
from sites.config import PhenotypeConfig
from sites.connectivity import fisher_z_connectivity, network_summaries
from sites.motion import jenkinson_fd, mean_fd, mean_fd_from_confounds, power_fd
from sites.phenotypes import load_phenotypes
from sites.pseudonym import load_secret, subject_key


def test_fisher_z_matches_nilearn():
    ts = np.random.default_rng(0).normal(size=(120, 30))
    # nilearn's default estimator is Ledoit-Wolf shrinkage; Pearson needs the empirical one.
    measure = ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance())
    r = measure.fit_transform([ts])[0]
    expected = np.arctanh(r[np.triu_indices(30, k=1)])
    edges = fisher_z_connectivity(ts)
    assert edges.dtype == np.float32
    np.testing.assert_allclose(edges, expected, rtol=1e-5, atol=1e-6)


def test_dosenbach_atlas_and_dmn_summary(reference_dir):
    atlas = load_atlas("dosenbach160")
    ref = pd.read_csv(reference_dir / "dosenbach160_networks.tsv", sep="\t")
    assert atlas.n_rois == 160 and atlas.networks == ref["yeo7_network"].tolist()
    assert atlas.dmn.sum() == 33
    np.testing.assert_array_equal(atlas.coords, ref[["x", "y", "z"]].to_numpy())
    edges = np.random.default_rng(1).normal(size=(4, atlas.n_edges))
    table = network_summaries(edges, atlas)
    rows, cols = np.triu_indices(160, k=1)
    dmn_pairs = atlas.dmn[rows] & atlas.dmn[cols]
    assert dmn_pairs.sum() == 528
    np.testing.assert_allclose(table["dmn_restmeta"], edges[:, dmn_pairs].mean(axis=1))
    nets = np.asarray(atlas.networks)
    within = (nets[rows] == "default") & (nets[cols] == "default")
    np.testing.assert_allclose(table["default__default"], edges[:, within].mean(axis=1))
    assert len([c for c in table.columns if c != "dmn_restmeta"]) == 7 * 8 // 2
    assert load_atlas("ho111").n_rois == 111
    with pytest.raises(AtlasError, match="unknown atlas 'nope'"):
        load_atlas("nope")


def test_power_fd_formula():
    params = np.zeros((3, 6))
    params[1] = [1, -1, 0.5, 0.01, 0, -0.02]
    fd = power_fd(params)
    np.testing.assert_allclose(fd, [2.5 + 50 * 0.03, 2.5 + 50 * 0.03])


def test_jenkinson_fd_translation_and_rotation():
    params = np.zeros((3, 6))
    params[1, :3] = [3, 4, 0]  # pure translation: RMS = |t|
    params[2, :3] = [3, 4, 0]
    params[2, 5] = 0.05  # then a pure rotation about z
    fd = jenkinson_fd(params)
    theta = 0.05
    # rotation about z: trace(A^T A) = 4 (1 - cos theta); translation part t + A c with c = 0,
    # but the relative matrix also moves the (3, 4, 0) offset: t_rel = (R - I) t.
    rot = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    t_rel = (rot - np.eye(2)) @ np.array([3.0, 4.0])
    expected2 = np.sqrt(80**2 / 5 * 4 * (1 - np.cos(theta)) + t_rel @ t_rel)
    np.testing.assert_allclose(fd, [5.0, expected2], rtol=1e-10)
    assert mean_fd(params, "jenkinson") == pytest.approx((5.0 + expected2) / 2)
    assert mean_fd(params, "jenkinson", include_first=True) == pytest.approx((5.0 + expected2) / 3)


def test_confounds_column(tmp_path):
    path = tmp_path / "conf.tsv"
    path.write_text("framewise_displacement\ttrans_x\nn/a\t0\n0.1\t0\n0.3\t0\n")
    assert mean_fd_from_confounds(path) == pytest.approx(0.2)


def test_pseudonym_is_keyed_hmac(tmp_path):
    from sites.pseudonym import new_secret

    path = new_secret(tmp_path / "secret")
    secret = load_secret(path)
    expected = hmac.new(secret, b"S01:sub-01", hashlib.sha256).hexdigest()
    assert subject_key(secret, "S01", "sub-01") == expected and len(expected) == 64
    assert subject_key(secret, "S01", "sub-01") != subject_key(b"x" * 32, "S01", "sub-01")


def test_init_makes_private_files_0600(tmp_path):
    out = tmp_path / "site.toml"
    result = CliRunner().invoke(app, ["init", "--site-id", "S07", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("keys/site_ed25519.pem", "keys/pseudonym.secret"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert 'site_id = "S07"' in out.read_text()
    again = CliRunner().invoke(app, ["init", "--site-id", "S07", "--out", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output


@pytest.mark.parametrize("suffix", [".xlsx", ".tsv", ".csv"])
def test_phenotype_formats_and_value_maps(tmp_path, suffix):
    table = pd.DataFrame(
        {
            "participant_id": ["sub-01", "sub-02", "sub-03"],
            "DX": [1, 2, 2],
            "AGE": [30.5, 41, 25],
            "SEX": ["1", "2", "1"],
            "EP": [1, 2, None],
            "site_score": [1.5, 2.5, 3.5],
        }
    )
    path = tmp_path / f"participants{suffix}"
    if suffix == ".xlsx":
        table.to_excel(path, index=False)
    else:
        table.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False, na_rep="n/a")
    config = PhenotypeConfig(
        path=path,
        dx_case="MDD",
        dx_control="HC",
        allow=["site_score"],
        columns={
            "participant_id": "subject_id",
            "DX": "dx",
            "AGE": "age",
            "SEX": "sex",
            "EP": "episode",
        },
        values={
            "dx": {"1": "MDD", "2": "HC"},
            "sex": {"1": "M", "2": "F"},
            "episode": {"1": "first", "2": "recurrent"},
        },
    )
    phen = load_phenotypes(config, path)
    assert phen.table.index.tolist() == ["sub-01", "sub-02", "sub-03"]
    assert phen.table["dx"].tolist() == ["MDD", "HC", "HC"]
    assert phen.table["sex"].tolist() == ["M", "F", "M"]
    assert phen.table["age"].tolist() == [30.5, 41.0, 25.0]
    assert phen.table["episode"].tolist()[:2] == ["first", "recurrent"]
    assert phen.table["site_score"].tolist() == [1.5, 2.5, 3.5]
    assert phen.problems == {}


def test_config_accepts_coordinator_section_and_names_bad_fields(tmp_path):
    from sites.config import ConfigError, load_config

    text = """
site_id = "S01"
[coordinator]
url = "http://localhost:8000"
[phenotypes]
path = "p.csv"
dx_case = "A"
dx_control = "B"
[phenotypes.columns]
id = "subject_id"
g = "dx"
a = "age"
s = "sex"
[[connectivity]]
atlas = "ho111"
pattern = "{subject_id}.1D"
"""
    path = tmp_path / "site.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.coordinator == {"url": "http://localhost:8000"} and config.base_dir == tmp_path
    path.write_text(text.replace('s = "sex"', 's = "gender"'))
    with pytest.raises(ConfigError, match=r"site.toml: phenotypes.columns.*gender"):
        load_config(path)
