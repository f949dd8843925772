"""The site-coordinator contract: identities never leave a site, both sides agree.

- A real ABIDE site with flat ROIs and a missing time series file: nothing in
  the bundle (or its tar) names a subject ID, a file or the data folder; the
  local QC log next to the bundle does.
- The contract refuses free text, dates, unknown columns and QC text.
- For boundary values, the site (phenotype loader and bundle writer) and the
  coordinator's ingest check reach the same verdict.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consortium.errors import ConfedError
from consortium.ingest import check_values
from sites.bundle import FORMAT_VERSION, export_bundle, read_bundle, write_bundle
from sites.config import ConfigError, PhenotypeConfig, QCConfig, load_config
from sites.contract import (
    PHENOTYPE_COLUMNS,
    QC_CODES,
    ContractError,
    check_qc_tables,
    check_subjects_table,
    empty_qc_reasons,
)
from sites.phenotypes import PhenotypeError, load_phenotypes
from sites.qc import local_log_path
from tests.helpers.bundles import build_abide_bundle

LABELS = {"case": "ASD", "control": "TDC"}


def _key(i: int) -> str:
    return hashlib.sha256(f"subject-{i}".encode()).hexdigest()


def _subjects(n: int = 4, **columns) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "subject_key": [_key(i) for i in range(n)],
            "dx": ["ASD", "TDC"] * (n // 2),
            "age": np.linspace(10, 40, n),
            "sex": ["M", "F"] * (n // 2),
            "mean_fd": 0.1,
        }
    )
    return table.assign(**columns)


def _qc(keys: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"subject_key": keys, "included": True, "reason_codes": ""})


# --------------------------------------------------------------------------- identity


@pytest.fixture(scope="module")
def caltech(abide_dir, tmp_path_factory):
    """CALTECH copied, one subject's time series removed; its bundle and tar."""
    root = tmp_path_factory.mktemp("identity")
    site_dir = shutil.copytree(abide_dir / "CALTECH", root / "data" / "CALTECH")
    table = pd.read_csv(site_dir / "participants.csv", dtype=str)
    missing = table["FILE_ID"].iloc[-1]
    (site_dir / f"{missing}_rois_ho.1D.gz").unlink()
    bundle_dir = build_abide_bundle(root / "data", "CALTECH", root / "out" / "bundle")
    tar = export_bundle(bundle_dir, root / "out" / "CALTECH.tar")
    return SimpleNamespace(
        site_dir=site_dir, table=table, missing=missing, bundle=bundle_dir, tar=tar
    )


def _identifying(caltech) -> list[str]:
    ids = caltech.table["FILE_ID"].tolist()
    padded = [f"{int(s):07d}" for s in caltech.table["SUB_ID"]]
    return [
        *ids,
        *padded,
        *(f"{i}_rois_ho.1D.gz" for i in ids),
        "_rois_ho",
        str(caltech.site_dir),
        str(caltech.site_dir.parent),
        "abide-pcp-ho111",
    ]


def test_no_identity_in_bundle_or_tar(caltech):
    bundle = read_bundle(caltech.bundle)
    assert bundle.manifest["format_version"] == FORMAT_VERSION == "2.0"
    reasons = bundle.qc_reasons
    assert {"zero_variance_roi", "missing_timeseries"} <= set(reasons["code"])
    flat = reasons[reasons["code"] == "zero_variance_roi"]
    assert (flat["field"] == "ho111").all() and 83.0 in set(flat["value"])
    files = [p for p in caltech.bundle.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"qc.parquet", "qc_reasons.parquet", "subjects.parquet"}
    assert not any(p.suffix == ".csv" for p in files)
    blobs = {p.name: p.read_bytes() for p in files}
    blobs["tar"] = caltech.tar.read_bytes()
    for needle in _identifying(caltech):
        for name, data in blobs.items():
            assert needle.encode() not in data, (needle, name)
    with tarfile.open(caltech.tar) as archive:
        assert not any("qc-local" in m.name for m in archive.getmembers())


def test_local_log_stays_next_to_the_bundle(caltech):
    log_path = local_log_path(caltech.bundle)
    assert log_path.parent == caltech.bundle.parent and log_path.is_file()
    assert log_path.stat().st_mode & 0o077 == 0
    log = pd.read_csv(log_path)
    assert set(log["subject_id"]) == set(caltech.table["FILE_ID"])
    missing = log[log["subject_id"] == caltech.missing]
    assert missing["code"].tolist() == ["missing_timeseries"]
    assert f"{caltech.missing}_rois_ho.1D.gz" in missing["detail"].item()
    assert str(caltech.site_dir) in missing["detail"].item()
    flat = log[log["code"] == "zero_variance_roi"]
    assert len(flat) and flat["detail"].str.contains("_rois_ho.1D.gz").all()


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize(
    ("column", "values", "needle"),
    [
        ("patient_name", ["Jane Doe", "John Roe", "A B", "C D"], "'patient_name' is not allowed"),
        ("age", ["30", "40", "50", "60"], "'age' must hold numbers"),
        ("sex", ["M", "F", "X", "M"], "column 'sex'"),
        ("dx", ["ASD", "TDC", "MDD", "TDC"], "column 'dx'"),
        ("age", [30.0, np.nan, 40.0, 50.0], "'age' has no value"),
        ("episode", ["first", "1 week ago", None, None], "column 'episode'"),
    ],
)
def test_subjects_table_refusals_name_file_and_column(column, values, needle):
    with pytest.raises(ContractError, match="subjects.parquet") as err:
        check_subjects_table(_subjects(**{column: values}), LABELS)
    assert needle in str(err.value)


def test_allow_listed_extras():
    check_subjects_table(_subjects(FIQ=[99.0, np.nan, 120.0, 101.0]), LABELS, ["FIQ"])
    check_subjects_table(_subjects(hand=["R", "L", "R", None]), LABELS, ["hand"])
    refusals = {
        "visit": (["2021-03-04", "R", "L", "R"], "dates"),
        "notes": (["lives alone", "R", "L", "R"], "free text"),
        "initials": (["X1", "X2", "X3", "Y"], "not allowed"),
        "birth_year": ([1970.0, 1980.0, 1990.0, 2000.0], "identifying name"),
        "patient_name": (["Doe", "Roe", "Poe", "Moe"], "identifying name"),
    }
    for column, (values, needle) in refusals.items():
        with pytest.raises(ContractError, match=needle):
            check_subjects_table(
                _subjects(**{column: values}), LABELS, [column] if column != "initials" else []
            )


def test_qc_tables_refuse_free_text_and_unknown_codes():
    keys = [_key(i) for i in range(3)]
    qc = _qc(keys).assign(included=[True, True, False], reason_codes=["", "", "head_motion"])
    reasons = pd.DataFrame(
        {"subject_key": [keys[2]], "code": "head_motion", "field": "mean_fd", "value": 0.3,
         "threshold": 0.2}
    )  # fmt: skip
    check_qc_tables(qc, reasons)
    cases = [
        (qc.assign(reason="missing /data/S01/sub-1.1D"), reasons, "qc.parquet: column 'reason'"),
        (qc.assign(reason_codes=["", "", "head motion 0.3 mm"]), reasons, "'reason_codes'"),
        (qc, reasons.assign(code="see /data/x.1D"), "qc_reasons.parquet: column 'code'"),
        (qc, reasons.assign(field="/data/x.1D"), "qc_reasons.parquet: column 'field'"),
        (qc, reasons.assign(value="83; sub-1.1D"), "qc_reasons.parquet: column 'value'"),
        (qc.assign(included=True), reasons, "column 'included'"),
    ]
    for bad_qc, bad_reasons, needle in cases:
        with pytest.raises(ContractError) as err:
            check_qc_tables(bad_qc, bad_reasons)
        assert needle in str(err.value)
    assert "excluded_by_release" in QC_CODES


def test_qc_defaults_lie_inside_the_contract():
    low, high = PHENOTYPE_COLUMNS["age"].plausible
    rules = QCConfig()
    assert low <= rules.age_min <= rules.age_max <= high
    assert rules.max_mean_fd <= PHENOTYPE_COLUMNS["mean_fd"].plausible[1]
    with pytest.raises(ValueError, match="plausible"):
        QCConfig(age_max=high + 1)


def test_config_refuses_a_qc_window_beyond_the_contract(tmp_path):
    from tests.helpers.bundles import abide_config_text
    from tests.helpers.keys import make_site

    keys = make_site(tmp_path, "S01")
    text = abide_config_text("S01", tmp_path, keys) + "age_min = 0\nage_max = 150\n"
    path = tmp_path / "site.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="age_min <= age_max <= 120"):
        load_config(path)


# --------------------------------------------------------------------------- agreement


def _fake_bundle(subjects: pd.DataFrame, extras: tuple[str, ...] = ()) -> SimpleNamespace:
    keys = subjects["subject_key"].tolist()
    return SimpleNamespace(
        manifest={"site_id": "S01", "dx_labels": LABELS, "phenotype_columns": list(extras)},
        subjects=subjects,
        qc=_qc(keys),
        qc_reasons=empty_qc_reasons(),
        atlases=[],
        files={},
        map_names=[],
    )


def _site_verdict(subjects: pd.DataFrame, tmp_path: Path) -> bool:
    try:
        write_bundle(
            tmp_path,
            site_id="S01",
            subjects=subjects,
            qc=_qc(subjects["subject_key"].tolist()),
            connectivity={},
            networks={},
            metadata={"dx_labels": LABELS},
            private_key=Ed25519PrivateKey.generate(),
            overwrite=True,
        )
    except ContractError:
        return False
    return True


def _ingest_verdict(subjects: pd.DataFrame) -> bool:
    try:
        check_values(_fake_bundle(subjects))
    except ConfedError as err:
        assert err.code == "contract_violation" and "subjects.parquet" in err.message
        return False
    return True


def _boundaries() -> list[tuple[str, object, bool]]:
    cases = []
    for name, spec in PHENOTYPE_COLUMNS.items():
        if spec.plausible is not None:
            low, high = spec.plausible
            step = 1e-6 * max(1.0, high)
            cases += [(name, low, True), (name, high, True)]
            cases += [(name, low - step, False), (name, high + step, False)]
            cases += [(name, np.inf, False)]
        for code in spec.codes:
            cases += [(name, code, True), (name, code.lower() + "x", False)]
    cases += [("dx", "ASD", True), ("dx", "TDC", True), ("dx", "asd", False)]
    cases += [("dx", "MDD", False), ("age", np.nan, False), ("mean_fd", np.nan, True)]
    return cases


@pytest.mark.parametrize(("column", "value", "accepted"), _boundaries())
def test_site_and_ingest_agree(column, value, accepted, tmp_path):
    subjects = _subjects()
    if isinstance(value, str):
        subjects[column] = subjects[column].astype(object) if column in subjects else None
    subjects.loc[1, column] = value
    assert _site_verdict(subjects, tmp_path / "bundle") is accepted
    assert _ingest_verdict(subjects) is accepted


@pytest.mark.parametrize("age", [0.0, 120.0, -0.001, 120.001, 5.0, 100.0])
def test_phenotype_loader_flags_exactly_what_the_contract_refuses(age, tmp_path):
    table = tmp_path / "participants.csv"
    table.write_text(f"id,dx,age,sex\nA,1,{age},1\nB,2,30,2\n")
    config = PhenotypeConfig(
        path=table,
        columns={"id": "subject_id", "dx": "dx", "age": "age", "sex": "sex"},
        values={"dx": {"1": "ASD", "2": "TDC"}, "sex": {"1": "M", "2": "F"}},
        dx_case="ASD",
        dx_control="TDC",
    )
    phen = load_phenotypes(config, table)
    flagged = any(r.code == "implausible_value" for r in phen.problems.get("A", []))
    subjects = _subjects(2).assign(age=[age, 30.0])
    assert flagged is not _ingest_verdict(subjects)
    assert flagged is not _site_verdict(subjects, tmp_path / "bundle")


def test_phenotype_loader_refuses_identifying_extras(tmp_path):
    table = tmp_path / "participants.csv"
    table.write_text("id,dx,age,sex,patient_name\nA,1,30,1,Jane Doe\nB,2,30,2,John Roe\n")
    config = PhenotypeConfig(
        path=table,
        columns={"id": "subject_id", "dx": "dx", "age": "age", "sex": "sex"},
        values={"dx": {"1": "ASD", "2": "TDC"}, "sex": {"1": "M", "2": "F"}},
        dx_case="ASD",
        dx_control="TDC",
        allow=["patient_name"],
    )
    with pytest.raises(PhenotypeError, match="patient_name"):
        load_phenotypes(config, table)
