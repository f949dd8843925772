"""Helpers shared by every result folder the coordinator writes.

Results (analyses, predictions) record the software that produced them, are
written as strict JSON, and appear in their folder all at once or not at all.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_PACKAGES = (
    "confed",
    "numpy",
    "pandas",
    "scipy",
    "statsmodels",
    "nibabel",
    "nilearn",
    "dask",
    "pyarrow",
    "matplotlib",
    "scikit-learn",
)


def software_versions(packages: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str]:
    """Python and package versions, ``"not installed"`` for a missing package."""
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and infinities become ``None`` (JSON ``null``)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return value if np.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty output directory unless ``overwrite`` is set."""
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir}: output directory exists and is not empty")


@contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """Write results into a hidden sibling folder; move it to ``out_dir`` only on success.

    A failed or interrupted run leaves neither a partial ``out_dir`` nor the
    staging folder; an earlier ``out_dir`` is replaced only once the new one is
    complete.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        yield tmp
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
