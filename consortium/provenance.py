"""Provenance helpers shared by every result file the coordinator writes.

Results (analyses, predictions) record the software that produced them and are
written as strict JSON, so both concerns live here once.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
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
