"""Writing submission bundles: tables, maps, atlas tables, manifest and signature.

Writing is atomic: everything goes to a hidden temporary sibling directory
that is renamed into place only once complete and signed, so an interrupted
or failed computation never leaves a bundle that looks complete. The site's
side of the contract (:mod:`sites.contract`) is checked before anything is
written. The reader is :mod:`sites.bundle`, which re-exports :func:`write_bundle`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sites import contract
from sites import keys as site_keys
from sites.atlas import Atlas, atlas_tsv_bytes, read_atlas_tsv
from sites.bundle_format import (
    FORMAT_VERSION,
    MANIFEST,
    SIGNATURE,
    SIGNER,
    BundleError,
    check_layout,
    sha256_file,
)


def _edges_table(keys: list[str], edges: np.ndarray) -> pa.Table:
    edges = np.ascontiguousarray(edges, dtype=np.float32)
    values = pa.array(edges.reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(values, edges.shape[1])
    return pa.table({"subject_key": pa.array(keys, pa.string()), "edges": column})


def _check_rows(name: str, n_rows: int, n_subjects: int) -> None:
    if n_rows != n_subjects:
        raise BundleError(f"{name}: {n_rows} rows but {n_subjects} included subjects")


def write_bundle(
    out_dir: str | Path,
    *,
    site_id: str,
    subjects: pd.DataFrame,
    qc: pd.DataFrame,
    qc_reasons: pd.DataFrame | None = None,
    connectivity: dict[str, np.ndarray],
    networks: dict[str, pd.DataFrame],
    maps: dict[str, tuple[nib.Nifti1Image, np.ndarray]] | None = None,
    metadata: dict[str, Any] | None = None,
    private_key: Ed25519PrivateKey,
    overwrite: bool = False,
    atlases: dict[str, Atlas] | None = None,
) -> Path:
    """Write and sign a bundle directory atomically.

    Parameters
    ----------
    out_dir : path
        Bundle directory to create; must not exist unless ``overwrite``.
    site_id : str
        Site identifier recorded in the manifest.
    subjects : DataFrame
        Included subjects: ``subject_key`` and canonical phenotype columns.
    qc : DataFrame
        All subjects: ``subject_key``, ``included``, ``reason_codes``, optional
        ``mean_fd`` (:data:`sites.contract.QC_COLUMNS`).
    qc_reasons : DataFrame, optional
        One row per exclusion reason (:data:`sites.contract.QC_REASON_COLUMNS`);
        none when omitted. Both QC tables, the subjects and the network
        summaries are checked against :mod:`sites.contract` before anything is
        written (:class:`sites.contract.ContractError`).
    connectivity : dict
        atlas name -> subjects x edges array (rows in ``subjects`` order).
    networks : dict
        atlas name -> network summaries DataFrame (rows in ``subjects`` order).
    maps : dict, optional
        metric -> (mask image, subjects x in-mask voxels array).
    metadata : dict, optional
        Extra manifest entries (atlases, parameters, QC rules, dx labels...).
    private_key : Ed25519PrivateKey
        The site's signing key.
    overwrite : bool
        Replace an existing bundle directory (only once the new one is complete).
    atlases : dict, optional
        atlas name -> :class:`sites.atlas.Atlas` of a ``connectivity`` entry. Each
        is written as ``atlases/<name>.tsv`` (:func:`sites.atlas.atlas_tsv_bytes`)
        and its SHA-256 pinned in the manifest's ``connectivity.<name>.atlas_sha256``.

    Returns
    -------
    Path
        The bundle directory.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise BundleError(f"{out_dir}: already exists (use overwrite to replace it)")
    qc_reasons = contract.empty_qc_reasons() if qc_reasons is None else qc_reasons
    _check_contract(site_id, subjects, qc, qc_reasons, networks, metadata or {})
    tables = _atlas_tables(atlases or {}, connectivity)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_contents(
            tmp,
            site_id,
            subjects,
            qc,
            qc_reasons,
            connectivity,
            networks,
            maps or {},
            metadata or {},
            private_key,
            tables,
        )
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _check_contract(
    site_id: str,
    subjects: pd.DataFrame,
    qc: pd.DataFrame,
    qc_reasons: pd.DataFrame,
    networks: dict[str, pd.DataFrame],
    metadata: dict[str, Any],
) -> None:
    """The site's side of the contract: what the coordinator will check at ingest."""
    contract.check_manifest({**metadata, "site_id": site_id})
    extras = contract.declared_extras(metadata)
    contract.check_subjects_table(subjects, metadata.get("dx_labels"), extras)
    contract.check_qc_tables(qc, qc_reasons)
    contract.check_included(qc, subjects)
    for atlas, table in networks.items():
        contract.check_network_table(table, f"networks_{atlas}.parquet")


def _atlas_tables(atlases: dict[str, Atlas], connectivity: dict[str, Any]) -> dict[str, bytes]:
    """The TSV bytes of each atlas, checked against the contract (and its connectivity)."""
    tables = {}
    for name, atlas in atlases.items():
        if name not in connectivity:
            raise BundleError(f"atlases/{name}.tsv: atlas {name!r} has no connectivity")
        data = atlas_tsv_bytes(atlas)
        n_edges = int(np.shape(connectivity[name])[1])
        contract.check_atlas_table(read_atlas_tsv(data, name), n_edges, f"atlases/{name}.tsv")
        tables[name] = data
    return tables


def _check_file_names(
    connectivity: dict[str, Any], networks: dict[str, Any], maps: dict[str, Any]
) -> None:
    """Atlas and metric names become file names: check them before writing anything."""
    for section, names in (("connectivity", connectivity), ("networks", networks), ("maps", maps)):
        for name in names:
            try:
                contract.check_name(name, f"{section} name")
            except contract.ContractError as exc:
                raise BundleError(str(exc)) from exc


def _write_contents(
    root: Path,
    site_id: str,
    subjects: pd.DataFrame,
    qc: pd.DataFrame,
    qc_reasons: pd.DataFrame,
    connectivity: dict[str, np.ndarray],
    networks: dict[str, pd.DataFrame],
    maps: dict[str, tuple[nib.Nifti1Image, np.ndarray]],
    metadata: dict[str, Any],
    private_key: Ed25519PrivateKey,
    atlas_tables: dict[str, bytes],
) -> None:
    if "subject_key" not in subjects.columns or subjects["subject_key"].duplicated().any():
        raise BundleError("subjects.parquet: subject_key column missing or not unique")
    _check_file_names(connectivity, networks, maps)
    keys = subjects["subject_key"].tolist()
    n = len(keys)
    subjects.reset_index(drop=True).to_parquet(root / "subjects.parquet", index=False)
    qc.reset_index(drop=True).to_parquet(root / "qc.parquet", index=False)
    qc_reasons.reset_index(drop=True).to_parquet(root / "qc_reasons.parquet", index=False)
    atlases = {}
    for atlas, edges in connectivity.items():
        _check_rows(f"connectivity_{atlas}.parquet", len(edges), n)
        pq.write_table(_edges_table(keys, edges), root / f"connectivity_{atlas}.parquet")
        atlases[atlas] = {"n_edges": int(np.shape(edges)[1])}
    if atlas_tables:
        (root / "atlases").mkdir()
    for atlas, data in atlas_tables.items():
        (root / contract.atlas_path(atlas)).write_bytes(data)
        atlases[atlas]["atlas_sha256"] = hashlib.sha256(data).hexdigest()
    for atlas, table in networks.items():
        _check_rows(f"networks_{atlas}.parquet", len(table), n)
        out = table.reset_index(drop=True).copy()
        out.insert(0, "subject_key", keys)
        out.to_parquet(root / f"networks_{atlas}.parquet", index=False)
    map_info = {}
    if maps:
        (root / "maps").mkdir()
    for metric, (mask_img, values) in maps.items():
        n_vox = int(np.count_nonzero(np.asarray(mask_img.dataobj)))
        _check_rows(f"maps/{metric}.npy", len(values), n)
        if values.shape[1] != n_vox:
            raise BundleError(f"maps/{metric}.npy: {values.shape[1]} columns, mask has {n_vox}")
        mask = nib.Nifti1Image(
            (np.asarray(mask_img.dataobj) != 0).astype(np.uint8), mask_img.affine
        )
        nib.save(mask, root / "maps" / f"{metric}_mask.nii.gz")
        np.save(root / "maps" / f"{metric}.npy", np.ascontiguousarray(values, dtype=np.float32))
        map_info[metric] = {"n_voxels": n_vox}
    files = {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
    counts = qc["included"].value_counts()
    manifest = {
        **metadata,
        "format_version": FORMAT_VERSION,
        "site_id": site_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "connectivity": {
            k: {**metadata.get("connectivity", {}).get(k, {}), **v} for k, v in atlases.items()
        },
        "maps": {k: {**metadata.get("maps", {}).get(k, {}), **v} for k, v in map_info.items()},
        "counts": {
            "subjects_total": int(len(qc)),
            "included": int(counts.get(True, 0)),
            "excluded": int(counts.get(False, 0)),
            "by_dx": {str(k): int(v) for k, v in subjects["dx"].value_counts().items()}
            if "dx" in subjects
            else {},
        },
        "files": files,
    }
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    check_layout(contract.parse_manifest(manifest_bytes))
    (root / MANIFEST).write_bytes(manifest_bytes)
    (root / SIGNATURE).write_bytes(private_key.sign(manifest_bytes))
    public = site_keys.public_pem(private_key.public_key())
    signer = {
        "algorithm": "ed25519",
        "public_key_fingerprint": site_keys.fingerprint(private_key.public_key()),
        "public_key_pem": public.decode(),
    }
    (root / SIGNER).write_text(json.dumps(signer, indent=2) + "\n")
