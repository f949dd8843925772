"""Export of a grant's data: only approved columns, measures and consenting sites.

Layout of an export folder::

    subjects.csv                  subject (proposal pseudonym), site, granted columns
    networks_<atlas>.csv          subject + network-pair means (one per granted atlas)
    connectivity_<atlas>.npy      subjects x edges float32, rows as in subjects.csv
    atlas_<atlas>.tsv             the release's definition of that atlas (ROI labels,
                                  networks, DMN; edges in numpy triu_indices(k=1) order)
    map_<metric>.npy, map_<metric>_mask.nii.gz
    DATA_USE.txt                  the data-use agreement the recipient accepted
    manifest.json                 proposal, release hash, recipient, terms, sha256 of files

The folder is written under a temporary name and renamed only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import uuid
from pathlib import Path

import numpy as np

from consortium.db.base import utcnow
from consortium.errors import ConfedError
from consortium.proposals.scope import GrantView, ScopedData
from consortium.proposals.settings import DUA_TEXT, DUA_VERSION
from sites.atlas import atlas_tsv_bytes
from sites.bundle import sha256_file

MANIFEST = "manifest.json"
EXPORT_FORMAT = "confed-proposal-export-v1"


def _write_files(data: ScopedData, folder: Path) -> None:
    data.subjects.to_csv(folder / "subjects.csv", index=False)
    for measure, table in data.tables.items():
        frame = table.copy()
        frame.insert(0, "subject", data.subjects["subject"].to_numpy())
        frame.to_csv(folder / f"networks_{measure.split(':', 1)[1]}.csv", index=False)
    for measure, values in data.arrays.items():
        kind, name = measure.split(":", 1)
        np.save(folder / f"{kind}_{name}.npy", np.asarray(values, dtype=np.float32))
        if kind == "map":
            data.mask_images[measure].to_filename(folder / f"map_{name}_mask.nii.gz")
    for name, atlas in data.atlases.items():
        (folder / f"atlas_{name}.tsv").write_bytes(atlas_tsv_bytes(atlas))
    (folder / "DATA_USE.txt").write_text(DUA_TEXT)


def write_export(data: ScopedData, view: GrantView, out_dir: Path) -> dict:
    """Write the export folder ``out_dir`` (must not exist); returns the manifest."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ConfedError("exists", f"{out_dir} already exists; choose a new folder", 409)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        _write_files(data, tmp)
        manifest = {
            "format": EXPORT_FORMAT,
            "proposal": view.proposal_code,
            "title": view.title,
            "release": {"name": view.release_name, "hash": view.release_hash},
            "recipient": view.recipient,
            "exported_at": utcnow().isoformat(),
            "grant_expires_at": view.expires_at,
            "sites": sorted(data.subjects["site"].unique().tolist()),
            "columns": view.columns,
            "measures": view.measures,
            "n_subjects": len(data.subjects),
            "pseudonyms": "HMAC-SHA256(per-proposal key held by the coordinator, subject key)",
            "data_use_terms": {"version": DUA_VERSION, "file": "DATA_USE.txt"},
            "files": {
                f.name: {"sha256": sha256_file(f), "size": f.stat().st_size}
                for f in sorted(tmp.iterdir())
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def pack(folder: Path, tar_path: Path) -> Path:
    """Tar ``folder`` as ``<name>/...`` (regular files only), atomically."""
    tmp = tar_path.with_name(f".{tar_path.name}.partial")
    with tarfile.open(tmp, "w") as archive:
        for f in sorted(Path(folder).iterdir()):
            archive.add(f, arcname=f"{folder.name}/{f.name}", recursive=False)
    os.replace(tmp, tar_path)
    return tar_path


def unpack_verified(tar_path: Path, out_dir: Path) -> dict:
    """Extract an export archive into ``out_dir`` and check every checksum of its manifest."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ConfedError("exists", f"{out_dir} already exists; choose a new folder", 409)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(tar_path) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts
                if not member.isfile() or len(parts) != 2 or ".." in parts:
                    raise ConfedError("bad_archive", f"{tar_path}: unexpected member {member.name}")
                src = archive.extractfile(member)
                (tmp / parts[1]).write_bytes(src.read())
        manifest = json.loads((tmp / MANIFEST).read_text())
        listed = set(manifest["files"]) | {MANIFEST}
        present = {p.name for p in tmp.iterdir()}
        if listed != present:
            raise ConfedError("bad_archive", f"{tar_path}: files {sorted(listed ^ present)}")
        for name, entry in manifest["files"].items():
            if sha256_file(tmp / name) != entry["sha256"]:
                raise ConfedError("checksum_mismatch", f"{tar_path}: {name} checksum differs")
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def export_sites(recorded: list[str] | None, tar_path: str | Path) -> list[str]:
    """The sites an export holds: as recorded, else (older exports) from its manifest."""
    if recorded is not None:
        return list(recorded)
    with tarfile.open(tar_path) as archive:
        for member in archive.getmembers():
            if member.isfile() and Path(member.name).name == MANIFEST:
                return list(json.loads(archive.extractfile(member).read())["sites"])
    raise ConfedError("bad_archive", f"{tar_path}: no {MANIFEST}", 500)
