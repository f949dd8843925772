"""Bad input: a clear error naming file/subject/field, or a recorded QC exclusion;
never a traceback, never a bundle left behind."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io
from typer.testing import CliRunner

from sites.bundle import read_bundle
from sites.cli import app
from sites.qc import local_log_path
from tests.helpers import site_folders as synthetic
from tests.helpers.keys import make_site

runner = CliRunner()


@pytest.fixture
def site(tmp_path):
    keys = make_site(tmp_path, "S01")
    synthetic.dparsf_site(keys, n=6, n_vols=30)
    return keys


def _compute(keys, tmp_path):
    out = tmp_path / "bundle"
    result = runner.invoke(
        app, ["compute", "--config", str(keys.config_path), "--out", str(out), "--quiet"]
    )
    return result, out


def _fails(keys, tmp_path, *needles):
    result, out = _compute(keys, tmp_path)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not a traceback
    for needle in needles:
        assert needle in result.output.replace("\n", ""), (needle, result.output)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]
    return result.output


def _qc(keys, tmp_path):
    result, out = _compute(keys, tmp_path)
    assert result.exit_code == 0, result.output
    return read_bundle(out)


def _table(keys) -> pd.DataFrame:
    return pd.read_csv(keys.root / "participants.tsv", sep="\t")


def test_wrong_number_of_columns(site, tmp_path):
    path = site.root / "ROISignals" / "ROISignals_sub-002.mat"
    scipy.io.savemat(path, {"ROISignals": np.zeros((30, 1500))})
    _fails(site, tmp_path, "ROISignals_sub-002.mat", "sub-002", "1568 columns", "1500")


def test_wrong_number_of_columns_for_atlas(site, tmp_path):
    text = site.config_path.read_text().replace('columns = "1409-1568"', 'columns = "1409-1567"')
    site.config_path.write_text(text)
    _fails(site, tmp_path, "ROISignals_sub-000.mat", "159 ROI columns", "160 ROIs")


def test_phenotype_subject_without_timeseries_is_recorded(site, tmp_path):
    (site.root / "ROISignals" / "ROISignals_sub-004.mat").unlink()
    bundle = _qc(site, tmp_path)
    excluded = bundle.qc[~bundle.qc["included"]]
    assert excluded["reason_codes"].tolist() == ["missing_timeseries"]
    assert bundle.qc_reasons[["code", "field"]].values.tolist() == [
        ["missing_timeseries", "dosenbach160"]
    ]
    log = _local_log(tmp_path)
    assert "ROISignals_sub-004.mat" in log.loc[log["subject_id"] == "sub-004", "detail"].item()
    assert len(bundle.subjects) == 5


def test_timeseries_without_phenotype_row(site, tmp_path):
    scipy.io.savemat(
        site.root / "ROISignals" / "ROISignals_sub-999.mat", {"ROISignals": np.zeros((30, 1600))}
    )
    _fails(site, tmp_path, "ROISignals_sub-999.mat", "sub-999", "participants.tsv")


def test_duplicate_subject_ids(site, tmp_path):
    table = _table(site)
    table.loc[3, "participant_id"] = "sub-001"
    table.to_csv(site.root / "participants.tsv", sep="\t", index=False)
    _fails(site, tmp_path, "participants.tsv", "duplicate subject ID", "sub-001", "participant_id")


def test_nan_column_is_a_qc_exclusion(site, tmp_path):
    path = site.root / "ROISignals" / "ROISignals_sub-001.mat"
    wide = scipy.io.loadmat(path)["ROISignals"]
    wide[:, 1410] = np.nan
    scipy.io.savemat(path, {"ROISignals": wide})
    bundle = _qc(site, tmp_path)
    reasons = bundle.qc_reasons
    assert reasons[["code", "field"]].values.tolist() == [["non_finite", "dosenbach160"]]
    assert reasons["value"].item() == 3  # column 1411 is Dosenbach ROI 3
    detail = _local_log(tmp_path).query("code == 'non_finite'")["detail"].item()
    assert "ROISignals_sub-001.mat" in detail and "3_aPFC" in detail


def test_truncated_gzip(site, tmp_path):
    src = site.root / "ROISignals" / "ROISignals_sub-003.mat"
    data = gzip.compress(src.read_bytes())
    src.unlink()
    for other in (site.root / "ROISignals").glob("*.mat"):
        other.with_name(other.name + ".gz").write_bytes(gzip.compress(other.read_bytes()))
        other.unlink()
    (site.root / "ROISignals" / "ROISignals_sub-003.mat.gz").write_bytes(data[: len(data) // 2])
    text = site.config_path.read_text().replace("{subject_id}.mat", "{subject_id}.mat.gz")
    site.config_path.write_text(text)
    _fails(site, tmp_path, "ROISignals_sub-003.mat.gz", "sub-003", "truncated gzip")


def test_map_with_other_affine(site, tmp_path):
    ids = list(_table(site)["participant_id"])
    synthetic.write_maps(site.root, ids, "reho")
    bad = nib.load(site.root / "maps" / "sub-002_reho.nii.gz")
    nib.save(
        nib.Nifti1Image(np.asarray(bad.dataobj), np.diag([2.0, 2, 2, 1])),
        site.root / "maps" / "sub-002_reho.nii.gz",
    )
    extra = '[[maps]]\nmetric = "reho"\npattern = "maps/{subject_id}_reho.nii.gz"\n'
    site.config_path.write_text(site.config_path.read_text() + extra)
    _fails(site, tmp_path, "sub-002_reho.nii.gz", "affine differs")


def test_map_with_other_shape_than_mask(site, tmp_path):
    ids = list(_table(site)["participant_id"])
    synthetic.write_maps(site.root, ids, "reho")
    mask = np.ones((8, 9, 6), np.uint8)
    nib.save(nib.Nifti1Image(mask, np.diag([3.0, 3, 3, 1])), site.root / "mask.nii.gz")
    extra = (
        '[[maps]]\nmetric = "reho"\npattern = "maps/{subject_id}_reho.nii.gz"\n'
        'mask = "mask.nii.gz"\n'
    )
    site.config_path.write_text(site.config_path.read_text() + extra)
    _fails(site, tmp_path, "sub-000_reho.nii.gz", "shape (8, 9, 7)", "mask.nii.gz")


def test_code_outside_value_map_and_implausible_age(site, tmp_path):
    table = _table(site)
    table.loc[1, "group"] = 3
    table.loc[2, "sex"] = 9
    table.loc[4, "age"] = 140
    table.to_csv(site.root / "participants.tsv", sep="\t", index=False)
    bundle = _qc(site, tmp_path)
    assert (~bundle.qc["included"]).sum() == 3
    reasons = bundle.qc_reasons
    assert set(zip(reasons["code"], reasons["field"], strict=True)) == {
        ("unknown_code", "dx"),
        ("unknown_code", "sex"),
        ("implausible_value", "age"),  # outside the contract's plausible [0, 120]
        ("age_out_of_range", "age"),  # outside the site's QC window [5, 100]
    }
    window = reasons.query("code == 'age_out_of_range'")
    assert window[["value", "threshold"]].values.tolist() == [[140.0, 100.0]]
    details = " | ".join(_local_log(tmp_path)["detail"].fillna(""))
    assert "dx: code '3' in 'group' not in ['MDD', 'HC']" in details
    assert "sex: code '9' in 'sex'" in details
    assert set(bundle.subjects["dx"]) <= {"MDD", "HC"} and set(bundle.subjects["sex"]) <= {"M", "F"}


def test_head_motion_and_too_few_volumes(site, tmp_path):
    table = _table(site)
    table.loc[0, "fd"] = 0.35
    table.to_csv(site.root / "participants.tsv", sep="\t", index=False)
    scipy.io.savemat(
        site.root / "ROISignals" / "ROISignals_sub-005.mat",
        {"ROISignals": np.random.default_rng(0).normal(size=(10, 1600))},
    )
    bundle = _qc(site, tmp_path)
    reasons = bundle.qc_reasons.set_index("code")
    assert reasons.loc["head_motion", ["field", "value", "threshold"]].tolist() == [
        "mean_fd",
        0.35,
        0.2,
    ]
    assert reasons.loc["too_few_volumes", ["value", "threshold"]].tolist() == [10, 20]
    details = " | ".join(_local_log(tmp_path)["detail"].fillna(""))
    assert "head motion: mean FD 0.350 mm > 0.2 mm" in details
    assert bundle.manifest["counts"]["excluded"] == 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            ["2020-01-03", "2021-05-06", "2019-11-12", "2020-02-02", "2020-03-03", "2020-04-04"],
            "holds dates",
        ),
        ([f"patient said thing number {i} at length" for i in range(6)], "free text"),
    ],
)
def test_dates_and_free_text_refused(site, tmp_path, values, message):
    table = _table(site)
    table["notes"] = values
    table.to_csv(site.root / "participants.tsv", sep="\t", index=False)
    text = site.config_path.read_text().replace(
        'dx_control = "HC"', 'dx_control = "HC"\nallow = ["notes"]'
    )
    site.config_path.write_text(text)
    _fails(site, tmp_path, "participants.tsv", "'notes'", message)


def test_missing_source_column_and_bad_config(site, tmp_path):
    table = _table(site).drop(columns="age")
    table.to_csv(site.root / "participants.tsv", sep="\t", index=False)
    _fails(site, tmp_path, "participants.tsv", "['age'] not found")
    site.config_path.write_text(
        site.config_path.read_text().replace('site_id = "S01"', "site_id = 5")
    )
    _fails(site, tmp_path, "site.toml", "site_id")


def test_existing_bundle_not_overwritten(site, tmp_path):
    result, out = _compute(site, tmp_path)
    assert result.exit_code == 0
    before = (out / "manifest.json").read_bytes()
    result, _ = _compute(site, tmp_path)
    assert result.exit_code == 1 and "already exists" in result.output
    assert (out / "manifest.json").read_bytes() == before


def _local_log(tmp_path) -> pd.DataFrame:
    """The site-only QC log written next to the bundle."""
    return pd.read_csv(local_log_path(tmp_path / "bundle"))
