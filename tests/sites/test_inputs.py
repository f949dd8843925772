"""DPARSF .mat, fMRIPrep BOLD + confounds, voxel maps and the file readers."""

from __future__ import annotations

import gzip
import hashlib
import hmac

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from sites.agent import compute
from sites.atlas import load_atlas
from sites.bundle import read_bundle
from sites.config import load_config
from sites.timeseries import TimeseriesError, parse_columns, read_timeseries
from tests.helpers import site_folders as synthetic
from tests.helpers.keys import make_site


def _fisher(ts: np.ndarray) -> np.ndarray:
    r = np.corrcoef(ts, rowvar=False)
    return np.arctanh(r[np.triu_indices(ts.shape[1], k=1)])


def _key(keys, sid: str) -> str:
    secret = bytes.fromhex(keys.secret_path.read_text())
    return hmac.new(secret, f"{keys.site_id}:{sid}".encode(), hashlib.sha256).hexdigest()


def test_dparsf_mat_columns_1409_1568(tmp_path):
    keys = make_site(tmp_path, "S01")
    wide = synthetic.dparsf_site(keys)
    bundle = read_bundle(compute(load_config(keys.config_path), tmp_path / "out", progress=False))
    fc = bundle.connectivity("dosenbach160")
    assert fc.shape == (6, 160 * 159 // 2)
    for i, key in enumerate(bundle.subjects["subject_key"]):
        sid = next(s for s in wide if _key(keys, s) == key)
        np.testing.assert_allclose(fc[i], _fisher(wide[sid][:, 1408:1568]), atol=1e-5)
    # Dosenbach DMN: 33 ROIs, mean over their 528 pairs.
    atlas = load_atlas("dosenbach160")
    dmn = np.flatnonzero(atlas.dmn)
    assert dmn.size == 33
    nets = bundle.network_summaries("dosenbach160")
    for i, key in enumerate(bundle.subjects["subject_key"]):
        sid = next(s for s in wide if _key(keys, s) == key)
        with np.errstate(divide="ignore"):
            z = np.arctanh(np.corrcoef(wide[sid][:, 1408:1568], rowvar=False))
        pairs = [z[a, b] for j, a in enumerate(dmn) for b in dmn[j + 1 :]]
        assert len(pairs) == 528
        assert nets.at[i, "dmn_restmeta"] == pytest.approx(np.mean(pairs), abs=1e-5)
        vis = [k for k, n in enumerate(atlas.networks) if n == "visual"]
        dflt = [k for k, n in enumerate(atlas.networks) if n == "default"]
        between = np.mean([z[a, b] for a in dflt for b in vis])
        assert nets.at[i, "default__visual"] == pytest.approx(between, abs=1e-5)
    assert bundle.manifest["connectivity"]["dosenbach160"]["columns"] == "1409-1568"


def _sphere_means(data: np.ndarray, affine: np.ndarray, coords: np.ndarray, radius: float):
    ijk = np.indices(data.shape[:3]).reshape(3, -1).T
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    flat = data.reshape(-1, data.shape[3])
    out = []
    for c in coords:
        inside = np.linalg.norm(world - c, axis=1) <= radius
        out.append(flat[inside].mean(axis=0))
    return np.stack(out, axis=1)


def _power(params: np.ndarray) -> np.ndarray:
    d = np.abs(np.diff(params, axis=0))
    return d[:, :3].sum(1) + 50 * d[:, 3:].sum(1)


def test_fmriprep_bold_spheres_and_confounds(tmp_path):
    keys = make_site(tmp_path, "S02")
    root = keys.root
    table = synthetic.phenotype_table(3)
    table.to_csv(root / "participants.tsv", sep="\t", index=False)
    shape, affine = synthetic.mni_grid()
    rng = np.random.default_rng(5)
    expected, fds = {}, {}
    for sid in table["participant_id"]:
        func = root / sid / "func"
        func.mkdir(parents=True)
        data = rng.normal(100, 5, size=(*shape, 24)).astype(np.float32)
        stem = f"{sid}_task-rest_space-MNI152NLin2009cAsym"
        nib.save(nib.Nifti1Image(data, affine), func / f"{stem}_desc-preproc_bold.nii.gz")
        params = np.cumsum(rng.normal(0, 0.02, size=(24, 6)), axis=0) * [1, 1, 1, 0.01, 0.01, 0.01]
        fd = _power(params)
        conf = pd.DataFrame(
            params, columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
        )
        conf["framewise_displacement"] = np.concatenate([[np.nan], fd])
        conf.to_csv(
            func / f"{sid}_task-rest_desc-confounds_timeseries.tsv",
            sep="\t",
            index=False,
            na_rep="n/a",
        )
        expected[sid] = _sphere_means(data, affine, load_atlas("dosenbach160").coords, 5.0)
        fds[sid] = fd.mean()
    bold = "{subject_id}/func/{subject_id}_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold"
    connectivity = f"""
[[connectivity]]
atlas = "dosenbach160"
source = "bold"
radius_mm = 5
pattern = "{bold}.nii.gz"
"""
    motion = (
        'source = "confounds"\ndefinition = "power"\n'
        'pattern = "{subject_id}/func/{subject_id}_task-rest_desc-confounds_timeseries.tsv"'
    )
    keys.config_path.write_text(synthetic.config_text(keys, connectivity, motion=motion))
    bundle = read_bundle(compute(load_config(keys.config_path), tmp_path / "out", progress=False))
    fc = bundle.connectivity("dosenbach160")
    assert fc.shape == (3, 12720)
    for i, key in enumerate(bundle.subjects["subject_key"]):
        sid = next(s for s in expected if _key(keys, s) == key)
        np.testing.assert_allclose(fc[i], _fisher(expected[sid]), atol=2e-4)
        assert bundle.subjects.at[i, "mean_fd"] == pytest.approx(fds[sid])
    assert bundle.manifest["motion"] == {"source": "confounds", "fd_definition": "power"}


def test_label_image_extraction(tmp_path):
    keys = make_site(tmp_path, "S03")
    root = keys.root
    table = synthetic.phenotype_table(3)
    table.to_csv(root / "participants.tsv", sep="\t", index=False)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    labels = np.zeros((6, 6, 6), np.int16)
    labels[:3, :3] = 1
    labels[3:, :3] = 2
    labels[:, 3:] = 3
    nib.save(nib.Nifti1Image(labels, affine), root / "labels.nii.gz")
    (root / "parc.tsv").write_text("index\tlabel\tnetwork\n1\tA\tx\n2\tB\tx\n3\tC\ty\n")
    rng = np.random.default_rng(2)
    expected = {}
    for sid in table["participant_id"]:
        data = rng.normal(size=(6, 6, 6, 30)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, affine), root / f"{sid}_bold.nii.gz")
        expected[sid] = np.stack([data[labels == k].mean(axis=0) for k in (1, 2, 3)], axis=1)
    connectivity = """
[[connectivity]]
atlas = "parc.tsv"
source = "bold"
labels_image = "labels.nii.gz"
pattern = "{subject_id}_bold.nii.gz"
"""
    keys.config_path.write_text(synthetic.config_text(keys, connectivity))
    bundle = read_bundle(compute(load_config(keys.config_path), tmp_path / "out", progress=False))
    fc = bundle.connectivity("parc")
    nets = bundle.network_summaries("parc")
    assert list(nets.columns) == ["x__x", "x__y"]
    for i, key in enumerate(bundle.subjects["subject_key"]):
        sid = next(s for s in expected if _key(keys, s) == key)
        z = _fisher(expected[sid])
        np.testing.assert_allclose(fc[i], z, atol=1e-5)
        assert nets.at[i, "x__x"] == pytest.approx(z[0], abs=1e-5)
        assert nets.at[i, "x__y"] == pytest.approx((z[1] + z[2]) / 2, abs=1e-5)


def _independent_mean_regression_sd(x: np.ndarray) -> np.ndarray:
    """DPABI y_Standardization 'mean regression + SD division', written with lstsq."""
    m = x.mean(axis=1)
    c = (m - m.mean()) / m.std(ddof=1)
    mu = x.mean(axis=0)
    beta = np.linalg.lstsq(c[:, None], x - mu, rcond=None)[0]
    resid = (x - mu) - c[:, None] * beta
    return resid / x.std(axis=1, ddof=1)[:, None] + mu


def test_standardized_voxel_maps(tmp_path):
    keys = make_site(tmp_path, "S04")
    synthetic.dparsf_site(keys, n=5)
    table = pd.read_csv(keys.root / "participants.tsv", sep="\t")
    raw = synthetic.write_maps(keys.root, list(table["participant_id"]), "alff")
    extra = '[[maps]]\nmetric = "alff"\npattern = "maps/{subject_id}_alff.nii.gz"\n'
    keys.config_path.write_text(synthetic.config_text(keys, synthetic.DPARSF_CONNECTIVITY, extra))
    bundle = read_bundle(compute(load_config(keys.config_path), tmp_path / "out", progress=False))
    assert bundle.map_names == ["alff"]
    mask_img, values = bundle.maps("alff")
    mask = np.asarray(mask_img.dataobj) != 0
    assert mask.sum() == 8 * 9 * 7 - 9 * 7  # the zero slab is outside coverage
    order = [next(s for s in raw if _key(keys, s) == k) for k in bundle.subjects["subject_key"]]
    x = np.stack([raw[s][mask] for s in order]).astype(np.float64)
    assert values.dtype == np.float32 and values.shape == x.shape
    np.testing.assert_allclose(values, _independent_mean_regression_sd(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", [".1D", ".tsv", ".txt", ".npy", ".mat", ".csv"])
@pytest.mark.parametrize("compressed", [False, True])
def test_readers_roundtrip(tmp_path, fmt, compressed):
    import scipy.io

    data = np.random.default_rng(0).normal(size=(12, 5)).round(4)
    path = tmp_path / f"ts{fmt}"
    if fmt == ".1D":
        path.write_text("#a\t#b\t#c\t#d\t#e\n" + "\n".join("\t".join(map(str, r)) for r in data))
    elif fmt == ".tsv":
        pd.DataFrame(data, columns=list("abcde")).to_csv(path, sep="\t", index=False)
    elif fmt == ".csv":
        pd.DataFrame(data, columns=list("abcde")).to_csv(path, index=False)
    elif fmt == ".txt":
        np.savetxt(path, data)
    elif fmt == ".npy":
        np.save(path, data)
    else:
        scipy.io.savemat(path, {"ROISignals": data})
    if compressed:
        gz = path.with_name(path.name + ".gz")
        gz.write_bytes(gzip.compress(path.read_bytes()))
        path = gz
    np.testing.assert_allclose(read_timeseries(path, n_rois=5), data)
    np.testing.assert_allclose(read_timeseries(path, "2-4"), data[:, 1:4])


def test_parse_columns():
    np.testing.assert_array_equal(parse_columns("1409-1568"), np.arange(1408, 1568))
    np.testing.assert_array_equal(parse_columns("1-2,5"), [0, 1, 4])
    for bad in ("0-3", "5-2", "a-b"):
        with pytest.raises(TimeseriesError, match="column"):
            parse_columns(bad)
