"""Bundle writer/reader/verifier: integrity checks, tampering, tar safety, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from sites.atlas import Atlas
from sites.bundle import BundleError, read_bundle, write_bundle
from sites.cli import app
from sites.keys import public_pem

runner = CliRunner()


def _small_bundle(path: Path, key: Ed25519PrivateKey | None = None, **kwargs) -> Path:
    rng = np.random.default_rng(0)
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4)]
    subjects = pd.DataFrame(
        {
            "subject_key": keys[:3],
            "dx": ["MDD", "HC", "HC"],
            "age": [30.0, 40, 50],
            "sex": ["M", "F", "F"],
            "mean_fd": [0.1, 0.05, 0.12],
        }
    )
    qc = pd.DataFrame(
        {
            "subject_key": keys,
            "included": [True, True, True, False],
            "reason_codes": ["", "", "", "head_motion"],
        }
    )
    reasons = pd.DataFrame(
        {
            "subject_key": keys[3:],
            "code": ["head_motion"],
            "field": ["mean_fd"],
            "value": [0.3],
            "threshold": [0.2],
        }
    )
    edges = rng.normal(size=(3, 10)).astype(np.float32)
    nets = pd.DataFrame({"a__a": edges.mean(axis=1)})
    return write_bundle(
        path,
        site_id="S01",
        subjects=subjects,
        qc=qc,
        qc_reasons=reasons,
        connectivity={"toy": edges},
        networks={"toy": nets},
        atlases={"toy": Atlas("toy", [f"r{i}" for i in range(1, 6)], ["a"] * 5)},
        metadata={"dx_labels": {"case": "MDD", "control": "HC"}},
        private_key=key or Ed25519PrivateKey.generate(),
        **kwargs,
    )


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    return _small_bundle(tmp_path / "bundle")


def _validate(path: Path) -> tuple[int, str]:
    result = runner.invoke(app, ["validate", str(path)])
    return result.exit_code, result.output


def test_roundtrip_and_hash(bundle_dir):
    bundle = read_bundle(bundle_dir)
    assert (
        bundle.bundle_hash
        == hashlib.sha256((bundle_dir / "manifest.json").read_bytes()).hexdigest()
    )
    assert bundle.subjects.shape[0] == 3 and bundle.qc.shape[0] == 4
    assert bundle.connectivity("toy").shape == (3, 10)
    assert bundle.manifest["counts"] == {
        "subjects_total": 4,
        "included": 3,
        "excluded": 1,
        "by_dx": {"HC": 2, "MDD": 1},
    }
    assert set(bundle.files) == {
        "subjects.parquet",
        "qc.parquet",
        "qc_reasons.parquet",
        "connectivity_toy.parquet",
        "networks_toy.parquet",
        "atlases/toy.tsv",
    }
    code, output = _validate(bundle_dir)
    assert code == 0 and "valid" in output


def test_tampered_parquet_byte_fails_validate(bundle_dir):
    target = bundle_dir / "connectivity_toy.parquet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    code, output = _validate(bundle_dir)
    assert code != 0
    assert "connectivity_toy.parquet" in output and "SHA-256" in output
    with pytest.raises(BundleError, match="connectivity_toy.parquet"):
        read_bundle(bundle_dir)


def test_tampered_manifest_byte_fails_validate(bundle_dir):
    target = bundle_dir / "manifest.json"
    text = target.read_text().replace('"S01"', '"S02"')
    target.write_text(text)
    code, output = _validate(bundle_dir)
    assert code != 0 and "manifest.sig" in output and "signature" in output


def test_missing_extra_and_size_checks(bundle_dir, tmp_path):
    (bundle_dir / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match="notes.txt: extra file"):
        read_bundle(bundle_dir)
    (bundle_dir / "notes.txt").unlink()
    (bundle_dir / "qc_reasons.parquet").unlink()
    with pytest.raises(BundleError, match="qc_reasons.parquet: listed in manifest but missing"):
        read_bundle(bundle_dir)


def test_unknown_version_and_wrong_key(tmp_path):
    key = Ed25519PrivateKey.generate()
    path = _small_bundle(tmp_path / "b", key)
    manifest = json.loads((path / "manifest.json").read_bytes())
    manifest["format_version"] = "9.9"
    data = json.dumps(manifest).encode()
    (path / "manifest.json").write_bytes(data)
    (path / "manifest.sig").write_bytes(key.sign(data))
    with pytest.raises(BundleError, match="unknown format version '9.9'"):
        read_bundle(path)
    other = _small_bundle(tmp_path / "c")
    with pytest.raises(BundleError, match="manifest.sig: signature check failed"):
        read_bundle(other, public_key_pem=public_pem(key.public_key()))


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(BundleError, match="rows"):
        write_bundle(
            tmp_path / "bad",
            site_id="S01",
            subjects=pd.DataFrame(
                {"subject_key": ["a" * 64], "dx": ["HC"], "age": 30.0, "sex": "F"}
            ),
            qc=pd.DataFrame({"subject_key": ["a" * 64], "included": [True], "reason_codes": [""]}),
            connectivity={"toy": np.zeros((2, 3))},
            networks={},
            metadata={"dx_labels": {"case": "MDD", "control": "HC"}},
            private_key=Ed25519PrivateKey.generate(),
        )
    assert list(tmp_path.iterdir()) == []


def test_export_tar_roundtrip(bundle_dir, tmp_path):
    result = runner.invoke(app, ["export", str(bundle_dir), "-o", str(tmp_path / "S01.tar")])
    assert result.exit_code == 0, result.output
    bundle = read_bundle(tmp_path / "S01.tar")
    np.testing.assert_array_equal(
        bundle.connectivity("toy"), read_bundle(bundle_dir).connectivity("toy")
    )
    assert bundle.bundle_hash == read_bundle(bundle_dir).bundle_hash
    code, _ = _validate(tmp_path / "S01.tar")
    assert code == 0


def _tar_with(tmp_path: Path, bundle_dir: Path, extra: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as archive:
        for file in sorted(bundle_dir.iterdir()):
            archive.add(file, arcname=f"b/{file.name}")
        archive.addfile(extra, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("b/../../etc/evil", tarfile.REGTYPE, "escapes"),
        ("/tmp/evil", tarfile.REGTYPE, "absolute"),
        ("b/link", tarfile.SYMTYPE, "link"),
        ("b/hard", tarfile.LNKTYPE, "link"),
        ("b/dev", tarfile.CHRTYPE, "device"),
        ("b/fifo", tarfile.FIFOTYPE, "device"),
    ],
)
def test_tar_member_safety(bundle_dir, tmp_path, name, kind, message):
    info = tarfile.TarInfo(name)
    info.type = kind
    data = b""
    if kind == tarfile.REGTYPE:
        data = b"x"
        info.size = 1
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "/etc/passwd"
    path = _tar_with(tmp_path, bundle_dir, info, data)
    with pytest.raises(BundleError, match=message) as err:
        read_bundle(path)
    assert name in str(err.value)
    code, output = _validate(path)
    assert code != 0 and name in output


def test_symlink_in_directory_rejected(bundle_dir):
    (bundle_dir / "qc_reasons.parquet").unlink()
    (bundle_dir / "qc_reasons.parquet").symlink_to("/etc/hostname")
    with pytest.raises(BundleError, match="qc_reasons.parquet: is a symbolic link"):
        read_bundle(bundle_dir)
