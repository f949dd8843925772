"""Attack replay against a real coordinator: signed bundles that break the contract.

A site that patched its agent (or a stolen site key) can sign anything. The
coordinator applies the same contract as the site (:mod:`sites.contract`), so a
QC table with free text and paths, or a subjects table with a ``patient_name``
column of names and dates, is refused with 422 ``contract_violation`` naming
the file and column; nothing changes: the site's previous good submission stays
current, the store is clean and the audit chain verifies.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.archives import forge_table, resign, tar_dir
from tests.helpers.bundles import synthetic_bundle


def _forged(tmp_path: Path, site_keys, name: str, change, **manifest) -> Path:
    """A correctly signed S01 bundle whose table ``name`` was changed after writing."""
    folder = tmp_path / f"forged-{name}-{len(list(tmp_path.glob('forged-*')))}"
    private = site_keys["S01"][0]
    bundle = synthetic_bundle(folder / "S01", "S01", private, seed=11)
    table = pd.read_parquet(bundle / name)
    forge_table(bundle, private, name, change(table))
    if manifest:
        resign(bundle, private, **manifest)
    return tar_dir(bundle, folder.with_suffix(".tar"))


def _qc_free_text(qc: pd.DataFrame) -> pd.DataFrame:
    return qc.assign(reason="missing time series: expected /data/S01/sub-0050958_rois_ho.1D.gz")


def _qc_codes_free_text(qc: pd.DataFrame) -> pd.DataFrame:
    qc.loc[0, "reason_codes"] = "coverage: ROI 83 (/data/S01/sub-0050958_rois_ho.1D.gz)"
    return qc


def _patient_name(subjects: pd.DataFrame) -> pd.DataFrame:
    names = ["Jane Doe 1971-03-02", "John Roe", "1984-11-23", "Mary Major"]
    return subjects.assign(patient_name=[names[i % 4] for i in range(len(subjects))])


def _assert_unchanged(server, token: str, good_id: int) -> None:
    with server.client(token) as c:
        current = c.get("/submissions", params={"current": "true"}).json()
    assert [(s["id"], s["site_id"]) for s in current] == [(good_id, "S01")]
    assert "store clean" in server.cli("fsck").stdout
    assert "audit log intact" in server.cli("audit", "verify").stdout


ATTACKS = {
    "qc_reason_text": ("qc.parquet", _qc_free_text, {}, ["qc.parquet", "'reason'"]),
    "qc_codes_text": ("qc.parquet", _qc_codes_free_text, {}, ["qc.parquet", "'reason_codes'"]),
    "patient_name": ("subjects.parquet", _patient_name, {}, ["subjects.parquet", "patient_name"]),
    "patient_name_declared": (
        "subjects.parquet",
        _patient_name,
        {"phenotype_columns": ["age", "dx", "mean_fd", "patient_name", "sex"]},
        ["subjects.parquet", "patient_name"],
    ),
}


def test_contract_violations_refused_and_nothing_changes(server, site_keys, small_tars, tmp_path):
    token = server.add_site("S01", site_keys["S01"][1])
    good = server.upload(token, small_tars["S01"])
    assert good.status_code == 201, good.text
    good_id = good.json()["submission"]["id"]
    for what, (name, change, manifest, needles) in ATTACKS.items():
        tar = _forged(tmp_path, site_keys, name, change, **manifest)
        r = server.upload(token, tar)
        assert r.status_code == 422, (what, r.text)
        error = r.json()["error"]
        assert error["code"] == "contract_violation", (what, error)
        for needle in needles:
            assert needle in error["message"], (what, needle, error["message"])
        assert "Jane" not in error["message"] and "/data/S01" not in error["message"]
        _assert_unchanged(server, token, good_id)
    with server.client(token) as c:
        uploads = c.get("/sites/S01/status", params={"limit": 100}).json()["uploads"]
    refused = [u for u in uploads if u["outcome"] == "rejected"]
    assert len(refused) == len(ATTACKS)
    assert {u["error_code"] for u in refused} == {"contract_violation"}


@pytest.mark.parametrize("version", ["1.0", "9.9"])
def test_old_free_text_format_version_refused(server, site_keys, tmp_path, version):
    token = server.add_site("S01", site_keys["S01"][1])
    bundle = synthetic_bundle(tmp_path / "old" / "S01", "S01", site_keys["S01"][0])
    resign(bundle, site_keys["S01"][0], format_version=version)
    r = server.upload(token, tar_dir(bundle, tmp_path / "old.tar"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_format_version"
    assert "2.0" in r.json()["error"]["message"]


@pytest.mark.parametrize("what", sorted(ATTACKS))
def test_site_validate_refuses_what_ingest_refuses(tmp_path, site_keys, what):
    """`confed site validate` runs the same contract check as ingest, with the same words."""
    from typer.testing import CliRunner

    from sites.cli import app

    name, change, manifest, needles = ATTACKS[what]
    tar = _forged(tmp_path, site_keys, name, change, **manifest)
    result = CliRunner().invoke(app, ["validate", str(tar)])
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    output = " ".join(result.output.split())
    for needle in needles:
        assert needle in output, (needle, output)
    clean = synthetic_bundle(tmp_path / "clean" / "S01", "S01", site_keys["S01"][0])
    ok = CliRunner().invoke(app, ["validate", str(clean)])
    assert ok.exit_code == 0 and "valid" in ok.output, ok.output


@pytest.mark.parametrize(
    ("manifest", "needle"),
    [
        ({"notes": "John Doe, born 1971-03-02"}, "'notes'"),
        ({"motion": {"source": "phenotype", "fd_definition": "Jane Doe"}}, "fd_definition"),
        ({"software": {"name": "confed", "version": "/home/jdoe/confed"}}, "software.version"),
    ],
)
def test_free_text_in_the_manifest_is_refused(server, site_keys, tmp_path, manifest, needle):
    """Every key and string of a signed manifest is a name or a value of a fixed form."""
    token = server.add_site("S01", site_keys["S01"][1])
    bundle = synthetic_bundle(tmp_path / "m" / "S01", "S01", site_keys["S01"][0])
    resign(bundle, site_keys["S01"][0], **manifest)
    r = server.upload(token, tar_dir(bundle, tmp_path / "m.tar"))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "contract_violation" and needle in error["message"], error
    assert "John Doe" not in error["message"] and "/home/jdoe" not in error["message"]
