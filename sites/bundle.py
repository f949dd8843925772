"""Submission bundles: reader and verifier (format version 2.0), and the bundle API.

A bundle is a directory (or a ``.tar`` of it) holding Parquet tables, maps,
a QC report and a signed ``manifest.json``. The specification is
``docs/site-data-manager/bundle-format.md``; this module and its siblings are
its reference implementation, used by the site agent and imported by the
coordinator:

- :mod:`sites.bundle_format`: version, reserved file names, :class:`BundleError`,
  hashing and signature checks;
- :mod:`sites.bundle_writer`: :func:`write_bundle` (atomic, signed);
- this module: :class:`Bundle`, :func:`read_bundle`, :func:`check_contract`,
  :func:`export_bundle` and :func:`describe_bundle`. It re-exports the public
  names of the other two, so ``from sites.bundle import X`` is the one import.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import tempfile
import uuid
from functools import cached_property
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from sites import contract
from sites import keys as site_keys
from sites.atlas import Atlas, AtlasError, atlas_from_table, read_atlas_tsv
from sites.bundle_format import (
    FORMAT_VERSION,
    MANIFEST,
    SIGNATURE,
    SIGNER,
    SUPPORTED_VERSIONS,
    UNLISTED,
    BundleError,
    check_layout,
    sha256_file,
    verify_manifest_signature,
)
from sites.bundle_writer import write_bundle

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "SIGNATURE",
    "SIGNER",
    "SUPPORTED_VERSIONS",
    "UNLISTED",
    "Bundle",
    "BundleError",
    "check_contract",
    "check_layout",
    "describe_bundle",
    "export_bundle",
    "read_bundle",
    "sha256_file",
    "verify_manifest_signature",
    "write_bundle",
]


# --------------------------------------------------------------------------- reading


class Bundle:
    """An opened (and by default verified) bundle. Use :func:`read_bundle`."""

    def __init__(self, root: Path, path: Path, keepalive: Any = None) -> None:
        self._root = root
        self.path = path
        self._keepalive = keepalive  # temporary extraction directory of a .tar
        try:
            self.manifest_bytes = (root / MANIFEST).read_bytes()
        except FileNotFoundError as exc:
            raise BundleError(f"{MANIFEST}: missing from {path}") from exc
        try:
            self.manifest: dict[str, Any] = contract.parse_manifest(self.manifest_bytes)
        except contract.ContractError as exc:
            raise BundleError(str(exc)) from exc
        check_layout(self.manifest)
        version = self.manifest.get("format_version")
        if version not in SUPPORTED_VERSIONS:
            raise BundleError(
                f"{MANIFEST}: unknown format version {version!r} (supported: {SUPPORTED_VERSIONS})"
            )
        self.bundle_hash = hashlib.sha256(self.manifest_bytes).hexdigest()
        self.site_id: str = str(self.manifest.get("site_id"))
        self.files: dict[str, str] = {
            name: entry.get("sha256") for name, entry in self.manifest["files"].items()
        }

    # -- verification
    @property
    def signer(self) -> dict[str, str]:
        try:
            return json.loads((self._root / SIGNER).read_text())
        except FileNotFoundError as exc:
            raise BundleError(f"{SIGNER}: missing") from exc
        except json.JSONDecodeError as exc:
            raise BundleError(f"{SIGNER}: not valid JSON ({exc})") from exc

    @property
    def public_key_fingerprint(self) -> str:
        return str(self.signer.get("public_key_fingerprint"))

    def verify(self, public_key_pem: bytes | None = None) -> None:
        """Check signature, file set, sizes and SHA-256 checksums."""
        try:
            signature = (self._root / SIGNATURE).read_bytes()
        except FileNotFoundError as exc:
            raise BundleError(f"{SIGNATURE}: missing") from exc
        signer = self.signer
        embedded = str(signer.get("public_key_pem", "")).encode()
        verify_manifest_signature(self.manifest_bytes, signature, public_key_pem or embedded)
        if public_key_pem is None and site_keys.fingerprint(embedded) != signer.get(
            "public_key_fingerprint"
        ):
            raise BundleError(f"{SIGNER}: public key fingerprint does not match the key")
        present = {
            p.relative_to(self._root).as_posix()
            for p in self._root.rglob("*")
            if p.is_file() or p.is_symlink()
        } - set(UNLISTED)
        for name in sorted(present):
            if (self._root / name).is_symlink():
                raise BundleError(f"{name}: is a symbolic link")
        listed = set(self.manifest["files"])
        if listed - present:
            raise BundleError(f"{sorted(listed - present)[0]}: listed in manifest but missing")
        if present - listed:
            raise BundleError(f"{sorted(present - listed)[0]}: extra file not in manifest")
        for name in sorted(listed):
            entry = self.manifest["files"][name]
            path = self._root / name
            if path.stat().st_size != entry.get("size"):
                raise BundleError(
                    f"{name}: size check failed ({path.stat().st_size} bytes, "
                    f"manifest says {entry.get('size')})"
                )
            if sha256_file(path) != entry.get("sha256"):
                raise BundleError(f"{name}: SHA-256 checksum mismatch")

    # -- contents
    def _parquet(self, name: str) -> pd.DataFrame:
        if name not in self.manifest["files"]:
            raise BundleError(f"{name}: not in this bundle")
        try:
            return pd.read_parquet(self._file(name))
        except Exception as exc:  # pyarrow raises several types
            raise BundleError(f"{name}: cannot read Parquet ({exc})") from exc

    @cached_property
    def subjects(self) -> pd.DataFrame:
        return self._parquet("subjects.parquet")

    @cached_property
    def qc(self) -> pd.DataFrame:
        return self._parquet("qc.parquet")

    @cached_property
    def qc_reasons(self) -> pd.DataFrame:
        """One row per exclusion reason: ``subject_key, code, field, value, threshold``."""
        return self._parquet("qc_reasons.parquet")

    @property
    def atlases(self) -> list[str]:
        return sorted(self.manifest.get("connectivity", {}))

    def atlas_sha256(self, atlas_name: str) -> str | None:
        """The SHA-256 of the atlas table the manifest pins (None: the bundle has none)."""
        entry = self.manifest.get("connectivity", {}).get(atlas_name)
        return entry.get("atlas_sha256") if isinstance(entry, dict) else None

    def atlas_table(self, atlas_name: str) -> pd.DataFrame:
        """The atlas table ``atlases/<name>.tsv`` checked against the contract."""
        if self.atlas_sha256(atlas_name) is None:
            raise BundleError(
                f"{contract.atlas_path(atlas_name)}: the bundle carries no definition of "
                f"atlas {atlas_name!r} (made by an older site agent; recompute it)"
            )
        path = contract.atlas_path(atlas_name)
        data = self._file(path).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.atlas_sha256(atlas_name):
            raise BundleError(f"{path}: SHA-256 differs from the manifest's atlas_sha256")
        try:
            table = read_atlas_tsv(data, atlas_name)
            n_edges = self.manifest["connectivity"][atlas_name].get("n_edges")
            contract.check_atlas_table(table, n_edges, path)
        except (AtlasError, contract.ContractError) as exc:
            raise BundleError(str(exc)) from exc
        return table

    def atlas(self, atlas_name: str) -> Atlas:
        """The :class:`sites.atlas.Atlas` this bundle's connectivity was computed with."""
        return atlas_from_table(atlas_name, self.atlas_table(atlas_name))

    def _check_order(self, name: str, keys: pd.Series) -> None:
        if keys.tolist() != self.subjects["subject_key"].tolist():
            raise BundleError(f"{name}: subject_key rows differ from subjects.parquet")

    def connectivity(self, atlas_name: str) -> np.ndarray:
        """Subjects x edges float32 array, rows in ``.subjects`` order."""
        name = f"connectivity_{atlas_name}.parquet"
        if name not in self.manifest["files"]:
            raise BundleError(f"{name}: no connectivity for atlas {atlas_name!r} in this bundle")
        table = pq.read_table(self._file(name))
        self._check_order(name, table.column("subject_key").to_pandas())
        column = table.column("edges").combine_chunks()
        width = column.type.list_size
        return column.flatten().to_numpy().reshape(len(table), width).astype(np.float32)

    def network_summaries(self, atlas_name: str) -> pd.DataFrame:
        name = f"networks_{atlas_name}.parquet"
        table = self._parquet(name)
        self._check_order(name, table["subject_key"])
        return table.drop(columns="subject_key").set_index(self.subjects.index)

    @property
    def map_names(self) -> list[str]:
        return sorted(self.manifest.get("maps", {}))

    def maps(self, metric: str) -> tuple[nib.Nifti1Image, np.ndarray]:
        """Mask image and subjects x in-mask voxels float32 standardized map."""
        values = np.load(self._map_path(metric), allow_pickle=False)
        return self.map_mask(metric), values

    def map_mask(self, metric: str) -> nib.Nifti1Image:
        """The mask image of ``metric`` (no subject data is read)."""
        self._map_path(metric)
        mask = nib.load(self._file(f"maps/{metric}_mask.nii.gz"))
        return nib.Nifti1Image(np.asarray(mask.dataobj), mask.affine, mask.header)

    def map_columns(self, metric: str, start: int, stop: int) -> np.ndarray:
        """Voxels ``start:stop`` of ``metric`` for all subjects, read through a memory map.

        Only those columns are read from disk, so a voxel-chunked analysis never
        holds a site's whole map in memory.
        """
        values = np.load(self._map_path(metric), allow_pickle=False, mmap_mode="r")
        return np.array(values[:, start:stop])

    def _map_path(self, metric: str) -> Path:
        if metric not in self.manifest.get("maps", {}):
            raise BundleError(f"maps/{metric}.npy: no map {metric!r} in this bundle")
        return self._file(f"maps/{metric}.npy")

    def _file(self, name: str) -> Path:
        """The path of listed file ``name``; refuse one that resolves outside the bundle."""
        if name not in self.manifest["files"]:
            raise BundleError(f"{name}: not in this bundle")
        path = self._root / name
        root = self._root.resolve()
        if root not in path.resolve().parents:
            raise BundleError(f"{name}: resolves outside the bundle folder {root}")
        return path

    def __repr__(self) -> str:
        return f"Bundle(site_id={self.site_id!r}, path={str(self.path)!r}, {self.bundle_hash[:12]})"


def _extract_tar(path: Path) -> tuple[Path, tempfile.TemporaryDirectory]:
    """Unpack a bundle archive into a private temporary folder (:mod:`sites.archive`)."""
    from sites.archive import unpack_archive

    tmp = tempfile.TemporaryDirectory(prefix="confed-bundle-")
    try:
        unpack_archive(path, Path(tmp.name))
    except BaseException:
        tmp.cleanup()
        raise
    return Path(tmp.name), tmp


def check_contract(bundle: Bundle) -> None:
    """Every table, column, string and manifest name of ``bundle`` against the contract.

    The one check both sides run: ``confed site validate`` at the site and the
    coordinator at ingest (where the site agent already ran it before signing).

    Raises
    ------
    sites.contract.ContractError
        Naming the file and column.
    """
    manifest = bundle.manifest
    contract.check_manifest(manifest)
    subjects: pd.DataFrame = bundle.subjects
    contract.check_subjects_table(
        subjects, manifest.get("dx_labels"), contract.declared_extras(manifest)
    )
    contract.check_qc_tables(bundle.qc, bundle.qc_reasons)
    contract.check_included(bundle.qc, subjects)
    expected = {"subjects.parquet", "qc.parquet", "qc_reasons.parquet"}
    for atlas in bundle.atlases:
        expected |= {f"connectivity_{atlas}.parquet", f"networks_{atlas}.parquet"}
        name = f"connectivity_{atlas}.parquet"
        columns = pq.read_schema(bundle._file(name)).names
        if columns != ["subject_key", "edges"]:
            raise contract.ContractError(
                f"{name}: columns {columns[:5]} are not ['subject_key', 'edges']"
            )
        contract.check_network_table(bundle.network_summaries(atlas), f"networks_{atlas}.parquet")
        try:
            bundle.atlas_table(atlas)
        except BundleError as exc:
            raise contract.ContractError(str(exc)) from exc
    unknown = sorted(f for f in bundle.files if f.endswith(".parquet") and f not in expected)
    if unknown:
        raise contract.ContractError(f"{unknown[0]}: not a table of the bundle format")


def read_bundle(
    path: str | Path, verify: bool = True, public_key_pem: bytes | None = None
) -> Bundle:
    """Open a bundle directory or ``.tar`` archive.

    Parameters
    ----------
    path : path
        Bundle directory or tar archive (as made by :func:`export_bundle`).
    verify : bool, default=True
        Check format version, signature, file set, sizes and checksums.
    public_key_pem : bytes, optional
        Verify the signature with this key (the one the coordinator registered
        for the site) instead of the key embedded in ``signature.json``.

    Raises
    ------
    BundleError
        Any failed check; the message names the file (or tar member) and check.
    """
    path = Path(path)
    keepalive = None
    if path.is_dir():
        root = path
    elif path.is_file():
        root, keepalive = _extract_tar(path)
    else:
        raise BundleError(f"{path}: no such bundle directory or archive")
    bundle = Bundle(root, path, keepalive)
    if verify:
        bundle.verify(public_key_pem)
    return bundle


def export_bundle(bundle_dir: str | Path, tar_path: str | Path) -> Path:
    """Verify a bundle directory and write it as an uncompressed tar, atomically."""
    bundle_dir, tar_path = Path(bundle_dir), Path(tar_path)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: not a bundle directory")
    read_bundle(bundle_dir, verify=True)
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tar_path.parent / f".{tar_path.name}.tmp-{uuid.uuid4().hex[:8]}"

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = stat.S_IMODE(info.mode) & 0o755
        return info

    try:
        with tarfile.open(tmp, "w") as archive:
            for file in sorted(bundle_dir.rglob("*")):
                if file.is_file():
                    arcname = f"{bundle_dir.name}/{file.relative_to(bundle_dir).as_posix()}"
                    archive.add(file, arcname=arcname, recursive=False, filter=clean)
        os.replace(tmp, tar_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tar_path


def describe_bundle(bundle: Bundle) -> str:
    """One line describing a bundle, for command-line output."""
    counts = bundle.manifest.get("counts", {})
    return (
        f"{bundle.path}: site {bundle.site_id}, {counts.get('included', '?')} included / "
        f"{counts.get('subjects_total', '?')} subjects, atlases {bundle.atlases}, "
        f"maps {bundle.map_names}, hash {bundle.bundle_hash}"
    )
