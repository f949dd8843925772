"""Tar archives of bundles, hand-made tar members and tampering with signed bundles.

What a compromised or patched site could send: correctly signed bundles whose content
was changed after the site agent's own checks, and hostile tar members.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pandas as pd

from sites.bundle import MANIFEST, SIGNATURE, sha256_file
from sites.keys import load_private_key


def tar_dir(bundle_dir: Path, out: Path, extra: list[tuple[tarfile.TarInfo, bytes]] = ()) -> Path:
    """Pack a bundle directory as ``<name>/...`` plus optional hand-made members."""
    with tarfile.open(out, "w") as archive:
        for f in sorted(bundle_dir.rglob("*")):
            if f.is_file():
                archive.add(f, arcname=f"{bundle_dir.name}/{f.relative_to(bundle_dir)}")
        for info, data in extra:
            archive.addfile(info, io.BytesIO(data) if data else None)
    return out


def member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    """A tar member ``name`` of type ``kind`` (with ``data`` if a regular file)."""
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
    """Replace the Parquet file ``name`` after writing, update the manifest and sign again."""
    table.to_parquet(bundle_dir / name, index=False)
    files = json.loads((bundle_dir / MANIFEST).read_text())["files"]
    files[name] = {
        "sha256": sha256_file(bundle_dir / name),
        "size": (bundle_dir / name).stat().st_size,
    }
    return resign(bundle_dir, private_key, files=files)
