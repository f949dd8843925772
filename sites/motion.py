"""Head motion: framewise displacement (FD) from realignment parameters.

Conventions
-----------
- Realignment parameters are volumes x 6: three translations (mm) then three
  rotations (radians) about x, y, z, as written by SPM (``rp_*.txt``) and
  fMRIPrep (``trans_x, trans_y, trans_z, rot_x, rot_y, rot_z``). FSL's
  ``.par`` files list rotations first; reorder them before use.
- FD is defined between consecutive volumes, so a run of T volumes gives T-1
  displacements. Mean FD is the mean of these T-1 values (fMRIPrep's
  ``framewise_displacement`` column is ``n/a`` for the first volume and
  treated the same way). DPARSF prepends a 0 for the first volume and
  averages over T values; ``include_first=True`` reproduces that.
- Power FD [1]_: sum of absolute backward differences, rotations converted to
  arc length on a sphere of radius 50 mm.
- Jenkinson FD [2]_: root mean square displacement of the relative rigid-body
  transformation over a sphere of radius 80 mm, rigid matrices built as SPM's
  ``spm_matrix`` does (``T @ Rx @ Ry @ Rz``). This is DPARSF's
  ``FD_Jenkinson`` used by REST-meta-MDD.

References
----------
.. [1] Power J.D. et al. (2012). Spurious but systematic correlations in
   functional connectivity MRI networks arise from subject motion.
   NeuroImage 59:2142-2154.
.. [2] Jenkinson M. et al. (2002). Improved optimization for the robust and
   accurate linear registration and motion correction of brain images.
   NeuroImage 17:825-841.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

FD_DEFINITIONS = ("jenkinson", "power")
CONFOUND_PARAMS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


class MotionError(ValueError):
    """Motion parameters that cannot be read or used."""


def _check_params(params: np.ndarray) -> np.ndarray:
    params = np.asarray(params, dtype=np.float64)
    if params.ndim != 2 or params.shape[1] != 6 or params.shape[0] < 2:
        raise MotionError(f"realignment parameters must be volumes x 6, got {params.shape}")
    return params


def power_fd(params: np.ndarray, radius: float = 50.0) -> np.ndarray:
    """Power et al. (2012) framewise displacement, T-1 values (mm)."""
    params = _check_params(params)
    diff = np.abs(np.diff(params, axis=0))
    return diff[:, :3].sum(axis=1) + radius * diff[:, 3:].sum(axis=1)


def rigid_matrix(p: np.ndarray) -> np.ndarray:
    """4x4 rigid-body matrix from 6 parameters, SPM ``spm_matrix`` order."""
    tx, ty, tz, rx, ry, rz = p
    t = np.eye(4)
    t[:3, 3] = tx, ty, tz
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    r1 = np.array([[1, 0, 0, 0], [0, cx, sx, 0], [0, -sx, cx, 0], [0, 0, 0, 1]])
    r2 = np.array([[cy, 0, sy, 0], [0, 1, 0, 0], [-sy, 0, cy, 0], [0, 0, 0, 1]])
    r3 = np.array([[cz, sz, 0, 0], [-sz, cz, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return t @ r1 @ r2 @ r3


def jenkinson_fd(params: np.ndarray, radius: float = 80.0) -> np.ndarray:
    """Jenkinson et al. (2002) relative RMS displacement, T-1 values (mm)."""
    params = _check_params(params)
    mats = [rigid_matrix(p) for p in params]
    fd = np.empty(len(mats) - 1)
    for i in range(1, len(mats)):
        rel = mats[i] @ np.linalg.inv(mats[i - 1]) - np.eye(4)
        a, t = rel[:3, :3], rel[:3, 3]
        fd[i - 1] = np.sqrt(radius**2 / 5.0 * np.trace(a.T @ a) + t @ t)
    return fd


def mean_fd(
    params: np.ndarray, definition: str = "jenkinson", include_first: bool = False
) -> float:
    """Mean framewise displacement of one run (see module conventions)."""
    if definition not in FD_DEFINITIONS:
        raise MotionError(f"unknown FD definition {definition!r} (use {FD_DEFINITIONS})")
    fd = jenkinson_fd(params) if definition == "jenkinson" else power_fd(params)
    if include_first:
        fd = np.concatenate([[0.0], fd])
    return float(fd.mean())


def read_realignment(path: str | Path) -> np.ndarray:
    """Read SPM ``rp_*.txt`` (volumes x 6, whitespace separated)."""
    path = Path(path)
    try:
        params = np.loadtxt(path, ndmin=2)
    except (OSError, ValueError) as exc:
        raise MotionError(f"{path}: cannot read realignment parameters ({exc})") from exc
    try:
        return _check_params(params)
    except MotionError as exc:
        raise MotionError(f"{path}: {exc}") from exc


def mean_fd_from_confounds(
    path: str | Path, column: str = "framewise_displacement", definition: str | None = None
) -> float:
    """Mean FD from an fMRIPrep confounds TSV.

    Parameters
    ----------
    path : str or Path
        ``*_desc-confounds_timeseries.tsv``.
    column : str
        FD column; fMRIPrep's ``framewise_displacement`` is Power's definition.
    definition : {"jenkinson", "power"} or None
        If given, recompute FD with this definition from the six
        ``trans_*``/``rot_*`` columns instead of reading ``column``.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    except (OSError, ValueError) as exc:
        raise MotionError(f"{path}: cannot read confounds TSV ({exc})") from exc
    if definition is not None:
        missing = [c for c in CONFOUND_PARAMS if c not in table.columns]
        if missing:
            raise MotionError(f"{path}: confounds lack column(s) {missing}")
        return mean_fd(table[list(CONFOUND_PARAMS)].to_numpy(), definition)
    if column not in table.columns:
        raise MotionError(f"{path}: confounds lack column {column!r}")
    values = table[column].to_numpy(dtype=np.float64)[1:]
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise MotionError(f"{path}: column {column!r} has missing values after the first volume")
    return float(values.mean())
