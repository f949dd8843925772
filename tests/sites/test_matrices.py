"""Precomputed connectivity matrices (``source = "matrix"``) on real ABIDE data.

Matrices are computed here independently of the site agent (``np.corrcoef``,
``np.arctanh``) from KKI's ho111 time series, written in every supported
format, and the bundles must match the time-series bundle of the same
subjects to 1e-6.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io

from sites.agent import AgentError, compute
from sites.bundle import read_bundle
from sites.config import ConfigError, load_config
from sites.matrices import MatrixError, guess_kind, matrix_edges, read_matrix
from sites.qc import local_log_path
from sites.timeseries import read_timeseries
from tests.helpers.bundles import abide_config_text
from tests.helpers.keys import make_site

SITE = "KKI"
N_SUBJECTS = 5
TS_BLOCK = '[[connectivity]]\natlas = "ho111"\npattern = "{subject_id}_rois_ho.1D.gz"\n'


@pytest.fixture(scope="module")
def kki(abide_dir, tmp_path_factory):
    """Keys, subjects, r matrices and the time-series bundle of a few KKI subjects."""
    root = tmp_path_factory.mktemp("kki")
    keys = make_site(root, SITE)
    site_dir = abide_dir / SITE
    ids = pd.read_csv(site_dir / "participants.csv", dtype=str)["FILE_ID"]
    ids = ids.head(N_SUBJECTS).tolist()
    r = {}
    for sid in ids:
        ts = read_timeseries(site_dir / f"{sid}_rois_ho.1D.gz")
        with np.errstate(invalid="ignore", divide="ignore"):
            r[sid] = np.corrcoef(ts, rowvar=False)
    text = abide_config_text(SITE, site_dir, keys)
    config = root / "ts.toml"
    config.write_text(text)
    bundle = compute(load_config(config), root / "ts-bundle", subjects=ids, progress=False)
    return {
        "keys": keys,
        "site_dir": site_dir,
        "ids": ids,
        "r": r,
        "text": text,
        "bundle": read_bundle(bundle),
    }


def _z(r: np.ndarray, diagonal: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.arctanh(r)
    np.fill_diagonal(z, diagonal)
    return z


def _r(r: np.ndarray) -> np.ndarray:
    r = r.copy()
    np.fill_diagonal(r, 1.0)
    return r


def _config(kki, folder: Path, block: str) -> Path:
    path = folder / "site.toml"
    text = kki["text"]
    assert TS_BLOCK in text
    path.write_text(text.replace(TS_BLOCK, "[[connectivity]]\n" + block))
    return path


def _run(kki, folder: Path, block: str, subjects=None):
    config = load_config(_config(kki, folder, block))
    subjects = kki["ids"] if subjects is None else subjects
    return compute(config, folder / "bundle", subjects=subjects, progress=False)


def _mat(folder, kki, variable, values):
    for sid in kki["ids"]:
        scipy.io.savemat(folder / f"{variable}_{sid}.mat", {variable: values(kki["r"][sid])})
    return f'pattern = "{folder}/{variable}_{{subject_id}}.mat"\n'


def _per_subject(folder, kki, suffix, values):
    for sid in kki["ids"]:
        matrix = values(kki["r"][sid])
        path = folder / f"{sid}_fc{suffix}"
        if suffix == ".npy":
            np.save(path, matrix)
        else:
            np.savetxt(path, matrix, delimiter="," if suffix == ".csv" else " ")
    return f'pattern = "{folder}/{{subject_id}}_fc{suffix}"\n'


def _stacked(folder, kki, values, listing):
    ids = kki["ids"][::-1]  # stack order differs from the table's
    np.save(folder / "all.npy", np.stack([values(kki["r"][s]) for s in ids]))
    if listing == "txt":
        (folder / "subjects.txt").write_text("\n".join(ids) + "\n")
        return f'pattern = "{folder}/all.npy"\nsubject_list = "{folder}/subjects.txt"\n'
    pd.DataFrame({"n": range(len(ids)), "participant": ids}).to_csv(
        folder / "subjects.csv", index=False
    )
    return (
        f'pattern = "{folder}/all.npy"\nsubject_list = "{folder}/subjects.csv"\n'
        'subject_column = "participant"\n'
    )


def _padded(folder, kki, values):
    """Five extra ROIs before the atlas's 111, as DPARSF correlates every ROI."""
    for sid in kki["ids"]:
        big = np.eye(116)
        big[5:, 5:] = values(kki["r"][sid])
        big[:5, :5] = np.diag(np.full(5, np.inf)) if np.isinf(big[5, 5]) else np.eye(5)
        np.save(folder / f"{sid}_wide.npy", big)
    return f'pattern = "{folder}/{{subject_id}}_wide.npy"\ncolumns = "6-116"\n'


FORMATS = {
    "dparsf-fisherz-mat": lambda f, k: _mat(
        f, k, "ROICorrelation_FisherZ", lambda r: _z(r, np.inf)
    ),
    "dparsf-r-mat": lambda f, k: _mat(f, k, "ROICorrelation", _r),
    "npy-z-zero-diagonal": lambda f, k: _per_subject(f, k, ".npy", lambda r: _z(r, 0.0)),
    "npy-r": lambda f, k: _per_subject(f, k, ".npy", _r),
    "csv-r": lambda f, k: _per_subject(f, k, ".csv", _r),
    "csv-z-nan-diagonal": lambda f, k: _per_subject(f, k, ".csv", lambda r: _z(r, np.nan)),
    "txt-z": lambda f, k: _per_subject(f, k, ".txt", lambda r: _z(r, np.inf)),
    "txt-r-declared": lambda f, k: _per_subject(f, k, ".txt", _r) + 'kind = "correlation"\n',
    "stacked-z-txt-list": lambda f, k: _stacked(f, k, lambda r: _z(r, np.inf), "txt"),
    "stacked-r-csv-list": lambda f, k: _stacked(f, k, _r, "csv") + 'kind = "correlation"\n',
    "columns-selection-z": lambda f, k: _padded(f, k, lambda r: _z(r, np.inf)),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_matrix_bundle_equals_timeseries_bundle(kki, tmp_path, name):
    block = 'atlas = "ho111"\nsource = "matrix"\n' + FORMATS[name](tmp_path, kki)
    bundle = read_bundle(_run(kki, tmp_path, block))
    expected = kki["bundle"]
    assert 0 < len(bundle.subjects) <= N_SUBJECTS
    pd.testing.assert_frame_equal(bundle.subjects, expected.subjects)
    fc, fc_ts = bundle.connectivity("ho111"), expected.connectivity("ho111")
    assert fc.dtype == fc_ts.dtype == np.float32
    np.testing.assert_allclose(fc, fc_ts, rtol=0, atol=1e-6)
    nets, nets_ts = bundle.network_summaries("ho111"), expected.network_summaries("ho111")
    assert list(nets.columns) == list(nets_ts.columns)
    np.testing.assert_allclose(nets.to_numpy(float), nets_ts.to_numpy(float), atol=1e-6)
    qc, qc_ts = bundle.qc.set_index("subject_key"), expected.qc.set_index("subject_key")
    assert (qc["included"] == qc_ts["included"]).all()
    manifest = bundle.manifest
    assert manifest["connectivity"]["ho111"]["source"] == "matrix"
    assert manifest["connectivity"]["ho111"]["matrix_kind"] in ("fisher_z", "correlation")
    assert manifest["qc_rules"]["not_run"] == {
        "ho111": ["too_few_volumes", "non_finite", "zero_variance_roi"]
    }
    assert manifest["qc_rules"]["run"]["connectivity"]["ho111"] == [
        "missing_timeseries",
        "non_finite_connectivity",
    ]
    log = pd.read_csv(local_log_path(tmp_path / "bundle"))
    assert log["qc_rules"].str.contains("volume and coverage rules not run").all()


def test_timeseries_bundle_reports_rules(kki):
    manifest = kki["bundle"].manifest
    assert manifest["qc_rules"]["not_run"] == {}
    assert "zero_variance_roi" in manifest["qc_rules"]["run"]["connectivity"]["ho111"]
    assert manifest["connectivity"]["ho111"]["matrix_kind"] is None


# --------------------------------------------------------------------------- bad input


def _write_npy(folder: Path, kki, change=None) -> str:
    """Per-subject Fisher z .npy files; ``change(sid, z)`` may spoil one."""
    for sid in kki["ids"]:
        z = _z(kki["r"][sid], np.inf)
        z = change(sid, z) if change else z
        if z is not None:
            np.save(folder / f"{sid}.npy", z)
    return f'atlas = "ho111"\nsource = "matrix"\npattern = "{folder}/{{subject_id}}.npy"\n'


def _fails(kki, folder, block, *needles):
    with pytest.raises(AgentError) as info:
        _run(kki, folder, block)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))
    assert not (folder / "bundle").exists()
    return str(info.value)


def _spoil(kki, spoil):
    victim = kki["ids"][1]
    return victim, lambda sid, z: spoil(z) if sid == victim else z


def test_asymmetric(kki, tmp_path):
    def spoil(z):
        z[3, 7] += 0.01
        return z

    victim, change = _spoil(kki, spoil)
    block = _write_npy(tmp_path, kki, change)
    _fails(kki, tmp_path, block, f"'{victim}'", f"{victim}.npy", "not symmetric", "row 4, column 8")


def test_wrong_size(kki, tmp_path):
    victim, change = _spoil(kki, lambda z: z[:110, :110])
    block = _write_npy(tmp_path, kki, change)
    _fails(kki, tmp_path, block, f"'{victim}'", f"{victim}.npy", "110 x 110", "111 ROIs")


def test_correlation_above_one(kki, tmp_path):
    def spoil(z):
        r = np.tanh(z)
        r[2, 5] = r[5, 2] = 1.3
        return r

    victim = kki["ids"][1]
    block = _write_npy(tmp_path, kki, lambda s, z: spoil(z) if s == victim else np.tanh(z))
    block += 'kind = "correlation"\n'
    _fails(kki, tmp_path, block, f"'{victim}'", f"{victim}.npy", "|r| reaches 1.3", "fisher_z")


def test_ambiguous_kind(kki, tmp_path):
    def spoil(z):
        r = np.tanh(z)
        np.fill_diagonal(r, 0.5)
        return r

    victim, change = _spoil(kki, spoil)
    block = _write_npy(tmp_path, kki, change)
    _fails(kki, tmp_path, block, f"'{victim}'", f"{victim}.npy", "cannot tell", "set kind = ")


def test_mixed_guessed_kinds(kki, tmp_path):
    victim, change = _spoil(kki, lambda z: _r(np.tanh(z)))
    block = _write_npy(tmp_path, kki, change)
    _fails(kki, tmp_path, block, f"'{victim}'", "looks like correlation", "set kind")


def test_declared_kind_contradicted(kki, tmp_path):
    block = _write_npy(tmp_path, kki) + 'kind = "correlation"\n'
    _fails(kki, tmp_path, block, f"'{kki['ids'][0]}'", "unit diagonal", "kind = 'fisher_z'")


def test_missing_file_and_non_finite_are_qc_exclusions(kki, tmp_path):
    missing, nan = kki["ids"][0], kki["ids"][2]

    def change(sid, z):
        if sid == missing:
            return None
        if sid == nan:
            z[4, 9] = z[9, 4] = np.nan
        return z

    bundle = read_bundle(_run(kki, tmp_path, _write_npy(tmp_path, kki, change)))
    log = pd.read_csv(local_log_path(tmp_path / "bundle")).set_index("subject_id")
    assert log.at[missing, "code"] == "missing_timeseries"
    assert f"{missing}.npy" in log.at[missing, "detail"]
    assert log.at[nan, "code"] == "non_finite_connectivity"
    assert f"{nan}.npy" in log.at[nan, "detail"]
    codes = set(bundle.qc_reasons["code"])
    assert {"missing_timeseries", "non_finite_connectivity"} <= codes


def test_stacked_subject_not_in_table(kki, tmp_path):
    block = 'atlas = "ho111"\nsource = "matrix"\n'
    block += _stacked(tmp_path, kki, lambda r: _z(r, np.inf), "txt")
    (tmp_path / "subjects.txt").write_text("\n".join([*kki["ids"][:-1], "KKI_9999999"]) + "\n")
    config = load_config(_config(kki, tmp_path, block))
    with pytest.raises(AgentError, match=r"subjects.txt: subject 'KKI_9999999' has a matrix"):
        compute(config, tmp_path / "bundle", progress=False)


def test_stacked_count_mismatch(kki, tmp_path):
    block = 'atlas = "ho111"\nsource = "matrix"\n'
    block += _stacked(tmp_path, kki, lambda r: _z(r, np.inf), "txt")
    (tmp_path / "subjects.txt").write_text("\n".join(kki["ids"][:-1]) + "\n")
    _fails(kki, tmp_path, block, "all.npy", f"{N_SUBJECTS} matrices", f"{N_SUBJECTS - 1} subjects")


def test_stacked_subject_absent_from_list_is_excluded(kki, tmp_path):
    block = 'atlas = "ho111"\nsource = "matrix"\n'
    block += _stacked(tmp_path, kki, lambda r: _z(r, np.inf), "txt")
    np.save(tmp_path / "all.npy", np.load(tmp_path / "all.npy")[1:])
    (tmp_path / "subjects.txt").write_text("\n".join(kki["ids"][::-1][1:]) + "\n")
    _run(kki, tmp_path, block)
    log = pd.read_csv(local_log_path(tmp_path / "bundle")).set_index("subject_id")
    assert log.at[kki["ids"][-1], "code"] == "missing_timeseries"
    assert "subjects.txt" in log.at[kki["ids"][-1], "detail"]


# --------------------------------------------------------------------------- units


def test_matlab_v73_without_h5py(tmp_path):
    try:
        import h5py  # noqa: F401

        pytest.skip("h5py is installed: v7.3 files are read")
    except ImportError:
        pass
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116, b" ")
    path = tmp_path / "ROICorrelation_FisherZ_S1.mat"
    path.write_bytes(header + b"\x00" * 8 + b"\x00\x02IM" + b"\x00" * 512)
    with pytest.raises(MatrixError, match=re.escape(f"{path}: MATLAB v7.3")) as info:
        read_matrix(path)
    assert "-v7" in str(info.value)


def test_mat_with_both_variables(tmp_path):
    r = np.eye(3)
    path = tmp_path / "both.mat"
    scipy.io.savemat(path, {"ROICorrelation": r, "ROICorrelation_FisherZ": _z(r, np.inf)})
    with pytest.raises(MatrixError, match="set kind"):
        read_matrix(path)
    np.testing.assert_array_equal(read_matrix(path, "correlation"), r)
    assert np.isinf(np.diag(read_matrix(path, "fisher_z"))).all()


def test_csv_with_roi_names(tmp_path):
    r = np.array([[1.0, 0.2, -0.3], [0.2, 1.0, 0.4], [-0.3, 0.4, 1.0]])
    names = ["PCC", "mPFC", "V1"]
    pd.DataFrame(r, index=names, columns=names).to_csv(tmp_path / "m.csv")
    np.testing.assert_allclose(read_matrix(tmp_path / "m.csv"), r)


def test_guess_kind():
    r = np.array([[1.0, 0.2], [0.2, 1.0]])
    assert guess_kind(r, "m") == "correlation"
    assert guess_kind(_z(r, np.inf), "m") == "fisher_z"
    assert guess_kind(_z(r, 0.0), "m") == "fisher_z"
    big = np.array([[8.0, 1.5], [1.5, 8.0]])
    assert guess_kind(big, "m") == "fisher_z"  # |off| > 1
    with pytest.raises(MatrixError, match="cannot tell"):
        guess_kind(np.array([[8.0, 0.5], [0.5, 8.0]]), "m")


def test_matrix_edges_matches_arctanh():
    rng = np.random.default_rng(0)
    r = np.corrcoef(rng.normal(size=(40, 6)), rowvar=False)
    edges, kind = matrix_edges(r, 6, where="m")
    assert kind == "correlation" and edges.dtype == np.float32
    np.testing.assert_allclose(edges, np.arctanh(r[np.triu_indices(6, k=1)]), atol=1e-7)


def test_config_checks(kki, tmp_path):
    block = 'atlas = "ho111"\npattern = "{subject_id}.npy"\nkind = "fisher_z"\n'
    with pytest.raises(ConfigError, match="only apply to source = 'matrix'"):
        load_config(_config(kki, tmp_path, block))
    block = 'atlas = "ho111"\nsource = "matrix"\npattern = "all.npy"\n'
    with pytest.raises(ConfigError, match="needs a subject_list"):
        load_config(_config(kki, tmp_path, block))
