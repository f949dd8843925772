"""Small synthetic bundles and hostile archives for the coordinator tests.

Bundles are written by the site agent's own writer (``sites.bundle.write_bundle``)
so the coordinator sees exactly the format real sites produce.
"""

from __future__ import annotations

import io
import json
import secrets
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from sites.atlas import Atlas
from sites.bundle import MANIFEST, SIGNATURE, write_bundle
from sites.contract import n_rois_of
from sites.keys import generate_keypair, load_private_key


def make_keys(folder: Path, site_id: str) -> tuple[Path, Path]:
    """An Ed25519 key pair for ``site_id``: (private PEM path, public PEM path)."""
    folder.mkdir(parents=True, exist_ok=True)
    return generate_keypair(folder / f"{site_id}.pem", folder / f"{site_id}.pub.pem")


def synthetic_bundle(
    out_dir: Path,
    site_id: str,
    private_key: Path,
    n_per_group: int = 12,
    n_rois: int = 10,
    seed: int = 0,
    edit=None,
    map_voxels: int | None = None,
) -> Path:
    """A signed bundle of random but plausible data; ``edit(arrays)`` may spoil it."""
    rng = np.random.default_rng(seed)
    n = 2 * n_per_group
    keys = [secrets.token_hex(32) for _ in range(n)]
    subjects = pd.DataFrame(
        {
            "subject_key": keys,
            "dx": ["ASD"] * n_per_group + ["TDC"] * n_per_group,
            "age": rng.uniform(8, 40, n),
            "sex": rng.choice(["M", "F"], n),
            "mean_fd": rng.uniform(0.02, 0.2, n),
        }
    )
    qc = pd.DataFrame({"subject_key": keys, "included": True, "reason_codes": ""})
    n_edges = n_rois * (n_rois - 1) // 2
    edges = rng.normal(0.2, 0.3, (n, n_edges)).astype(np.float32)
    networks = pd.DataFrame({"none__none": edges.mean(axis=1)})
    maps = None
    if map_voxels:
        side = int(np.ceil(map_voxels ** (1 / 3))) + 1
        mask = np.zeros((side, side, side), np.uint8)
        mask.reshape(-1)[:map_voxels] = 1
        values = rng.normal(0, 1, (n, map_voxels)).astype(np.float32)
        maps = {"alff": (nib.Nifti1Image(mask, np.eye(4)), values)}
    arrays = {"subjects": subjects, "edges": edges, "maps": maps}
    if edit is not None:
        edit(arrays)
    return write_bundle(
        out_dir,
        site_id=site_id,
        subjects=arrays["subjects"],
        qc=qc,
        connectivity={"toy": arrays["edges"]},
        networks={"toy": networks},
        maps=arrays["maps"],
        metadata={"dx_labels": {"case": "ASD", "control": "TDC"}},
        private_key=load_private_key(private_key),
        atlases=_toy_atlas(arrays["edges"]),
    )


def _toy_atlas(edges: np.ndarray) -> dict[str, Atlas]:
    """The "toy" atlas of ``edges`` (ROIs ``r1``... in one network ``none``), if any."""
    n = n_rois_of(int(np.shape(edges)[1])) if np.ndim(edges) == 2 else -1
    if n < 2:
        return {}
    return {"toy": Atlas("toy", [f"r{i}" for i in range(1, n + 1)], ["none"] * n)}


def tar_dir(bundle_dir: Path, out: Path, extra: list[tuple[tarfile.TarInfo, bytes]] = ()) -> Path:
    """Pack a bundle directory as ``<name>/...`` plus optional hand-made members."""
    with tarfile.open(out, "w") as archive:
        for f in sorted(bundle_dir.rglob("*")):
            if f.is_file():
                archive.add(f, arcname=f"{bundle_dir.name}/{f.relative_to(bundle_dir)}")
        for info, data in extra:
            archive.addfile(info, io.BytesIO(data) if data else None)
    return out


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", link: str = ""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    return info, data if kind == tarfile.REGTYPE else b""


def resign(bundle_dir: Path, private_key: Path, **changes) -> Path:
    """Change manifest fields and sign again with ``private_key``."""
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    manifest.update(changes)
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    (bundle_dir / MANIFEST).write_bytes(data)
    (bundle_dir / SIGNATURE).write_bytes(load_private_key(private_key).sign(data))
    return bundle_dir


def forge_table(bundle_dir: Path, private_key: Path, name: str, table: pd.DataFrame) -> Path:
    """Replace the Parquet file ``name`` after writing, update the manifest and sign again.

    This is what a compromised or patched site could send: correctly signed,
    past the site agent's own contract checks.
    """
    from sites.bundle import sha256_file

    table.to_parquet(bundle_dir / name, index=False)
    files = json.loads((bundle_dir / MANIFEST).read_text())["files"]
    files[name] = {
        "sha256": sha256_file(bundle_dir / name),
        "size": (bundle_dir / name).stat().st_size,
    }
    return resign(bundle_dir, private_key, files=files)
