"""Precomputed ROI connectivity matrices, as sites often hold them.

Supported inputs (one square ROI x ROI matrix per subject, or one stack):

- DPARSF/DPABI ``ROICorrelation_FisherZ_<subject>.mat`` and
  ``ROICorrelation_<subject>.mat`` (variable ``ROICorrelation_FisherZ`` or
  ``ROICorrelation``). MATLAB v7.3 (HDF5) files are read only when ``h5py``
  is installed; otherwise save them with ``save(..., '-v7')``.
- Per-subject ``.npy``, and ``.csv``/``.tsv``/``.txt`` tables of numbers
  (an optional header row and index column of ROI names are skipped).
- One stacked ``.npy`` (subjects x ROIs x ROIs) with a subject list: a
  ``.txt`` file with one ID per line, or a ``.csv``/``.tsv`` column.

Matrices hold either Pearson correlations (``kind = "correlation"``: unit
diagonal, ``|r| <= 1``) or Fisher z (``kind = "fisher_z"``: ``atanh(r)``,
diagonal infinite, zero or NaN). Both become the bundle's measure, the Fisher
z upper triangle in numpy ``triu_indices(n_rois, k=1)`` order, exactly as
:func:`sites.connectivity.fisher_z_connectivity` gives from time series.
The same 1-based ``columns`` selection as for time series selects rows and
columns of the matrix (DPARSF correlates every ROI of ``ROISignals``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from sites.connectivity import _R_MAX
from sites.timeseries import TimeseriesError, parse_columns

SUFFIXES = (".mat", ".npy", ".csv", ".tsv", ".txt")
#: DPARSF variable name -> the kind of values it holds.
DPARSF_VARIABLES = {"ROICorrelation_FisherZ": "fisher_z", "ROICorrelation": "correlation"}
KINDS = ("fisher_z", "correlation")
#: Relative tolerance of the symmetry check (float32 files round to ~1e-7).
SYMMETRY_RTOL = 1e-5
#: Slack for float rounding in the unit-diagonal and ``|r| <= 1`` checks.
R_TOLERANCE = 1e-6


class MatrixError(ValueError):
    """A connectivity matrix file that cannot be used; the message names the file."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise MatrixError(
        f"{path}: unknown connectivity matrix format (expected one of {', '.join(SUFFIXES)})"
    )


def _read_mat_v73(path: Path, kind: str | None) -> np.ndarray:
    try:
        import h5py
    except ImportError as exc:
        raise MatrixError(
            f"{path}: MATLAB v7.3 (HDF5) file, which needs the h5py package; "
            "save it in MATLAB with save(filename, 'ROICorrelation_FisherZ', '-v7') "
            "(or install h5py)"
        ) from exc
    with h5py.File(path, "r") as handle:
        name = _pick_variable(path, [k for k in handle.keys() if not k.startswith("#")], kind)
        return np.asarray(handle[name][()], dtype=np.float64).T  # MATLAB is column-major


def _pick_variable(path: Path, names: list[str], kind: str | None) -> str:
    found = [n for n in DPARSF_VARIABLES if n in names]
    if kind is not None and len(found) > 1:
        found = [n for n in found if DPARSF_VARIABLES[n] == kind]
    if not found:
        wanted = " or ".join(repr(n) for n in DPARSF_VARIABLES)
        raise MatrixError(f"{path}: no variable {wanted} (found {sorted(names)})")
    if len(found) > 1:
        raise MatrixError(f"{path}: holds both {found}; set kind to choose one")
    return found[0]


def _read_mat(path: Path, kind: str | None) -> np.ndarray:
    if scipy.io.matlab.matfile_version(str(path))[0] == 2:
        return _read_mat_v73(path, kind)
    content = scipy.io.loadmat(str(path))
    name = _pick_variable(path, [k for k in content if not k.startswith("__")], kind)
    return np.asarray(content[name], dtype=np.float64)


def _read_table(path: Path, sep: str) -> np.ndarray:
    """Numbers of a delimited text file; a header row / index column of names is dropped."""
    table = pd.read_csv(path, sep=sep, header=None, dtype=str, keep_default_na=False)
    table = table.apply(lambda col: col.str.strip())

    def numeric(values: pd.Series) -> bool:
        return bool(pd.to_numeric(values.replace("", "nan"), errors="coerce").notna().any())

    if len(table) > 1 and not numeric(table.iloc[0, 1:]):
        table = table.iloc[1:]
    if table.shape[1] > 1 and not numeric(table.iloc[:, 0]):
        table = table.iloc[:, 1:]
    return table.replace("", "nan").to_numpy(dtype=np.float64)


def read_matrix(path: str | Path, kind: str | None = None) -> np.ndarray:
    """Read one subject's connectivity matrix.

    Parameters
    ----------
    path : str or Path
        ``.mat`` (DPARSF), ``.npy``, ``.csv``, ``.tsv`` or ``.txt`` file.
    kind : {"fisher_z", "correlation"} or None
        Chooses the variable of a ``.mat`` file that holds both.

    Returns
    -------
    ndarray of shape (n, n), float64

    Raises
    ------
    MatrixError
        Missing or unreadable file, not a square 2D matrix.
    """
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise MatrixError(f"{path}: file not found")
    try:
        if suffix == ".mat":
            matrix = _read_mat(path, kind)
        elif suffix == ".npy":
            matrix = np.load(path, allow_pickle=False).astype(np.float64)
        else:
            matrix = _read_table(path, {".csv": ",", ".tsv": "\t"}.get(suffix, r"\s+"))
    except MatrixError:
        raise
    except Exception as exc:  # parser errors of numpy/pandas/scipy
        raise MatrixError(f"{path}: cannot read as {suffix} matrix ({exc})") from exc
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise MatrixError(f"{path}: not a square matrix (shape {matrix.shape})")
    return matrix


def read_subject_list(path: str | Path, column: str | None = None) -> list[str]:
    """Subject IDs of a stacked file: one per line (``.txt``) or a CSV/TSV column.

    ``column`` names the column of a ``.csv``/``.tsv`` file with a header row;
    it may be omitted when the file has a single column.
    """
    path = Path(path)
    if not path.is_file():
        raise MatrixError(f"{path}: subject list not found")
    if path.suffix.lower() in (".csv", ".tsv"):
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
        if column is None and table.shape[1] != 1:
            raise MatrixError(
                f"{path}: {table.shape[1]} columns; set subject_column to one of "
                f"{list(table.columns)}"
            )
        if column is not None and column not in table.columns:
            raise MatrixError(f"{path}: no column {column!r} (found {list(table.columns)})")
        ids = table[column or table.columns[0]].str.strip().tolist()
    else:
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if "" in ids:
        raise MatrixError(f"{path}: empty subject ID on line {ids.index('') + 2}")
    duplicated = sorted({s for s in ids if ids.count(s) > 1})
    if duplicated:
        raise MatrixError(f"{path}: subject(s) {duplicated[:5]} listed more than once")
    return ids


@dataclass(frozen=True)
class StackedMatrices:
    """One ``.npy`` stack of subjects x ROIs x ROIs with its subject list.

    Attributes
    ----------
    path, subject_list : Path
        The stacked file and the list of its subject IDs, in stack order.
    matrices : ndarray of shape (n_subjects, n, n)
    index : dict
        Subject ID -> position in the stack.
    """

    path: Path
    subject_list: Path
    matrices: np.ndarray
    index: dict[str, int]

    def where(self, subject: str) -> str:
        """Where a subject's matrix lives, for messages."""
        return f"{self.path}[{self.index[subject]}] (subject list {self.subject_list})"


def read_stacked(
    path: str | Path, subject_list: str | Path, column: str | None = None
) -> StackedMatrices:
    """Read a stacked ``.npy`` file and its subject list; sizes must agree."""
    path, subject_list = Path(path), Path(subject_list)
    ids = read_subject_list(subject_list, column)
    if not path.is_file():
        raise MatrixError(f"{path}: stacked matrix file not found")
    try:
        stack = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise MatrixError(f"{path}: cannot read as .npy ({exc})") from exc
    if stack.ndim != 3 or stack.shape[1] != stack.shape[2]:
        raise MatrixError(f"{path}: expected subjects x ROIs x ROIs, got shape {stack.shape}")
    if stack.shape[0] != len(ids):
        raise MatrixError(
            f"{path}: {stack.shape[0]} matrices but {len(ids)} subjects in {subject_list}"
        )
    return StackedMatrices(path, subject_list, stack, {s: i for i, s in enumerate(ids)})


def select_rois(
    matrix: np.ndarray, columns: str | list[int] | None, n_rois: int, where: str
) -> np.ndarray:
    """Apply a 1-based ROI selection to rows and columns; check the atlas size."""
    try:
        selection = parse_columns(columns)
    except TimeseriesError as exc:
        raise MatrixError(f"{where}: {exc}") from exc
    if selection is not None:
        if selection.max() >= matrix.shape[0]:
            raise MatrixError(
                f"{where}: column range {columns!r} needs {selection.max() + 1} ROIs, "
                f"matrix is {matrix.shape[0]} x {matrix.shape[1]}"
            )
        matrix = matrix[np.ix_(selection, selection)]
    if matrix.shape[0] != n_rois:
        raise MatrixError(
            f"{where}: {matrix.shape[0]} x {matrix.shape[1]} matrix, "
            f"but the atlas has {n_rois} ROIs"
        )
    return matrix


def _off_diagonal(matrix: np.ndarray) -> np.ndarray:
    return matrix[~np.eye(matrix.shape[0], dtype=bool)]


def check_symmetric(matrix: np.ndarray, where: str, rtol: float = SYMMETRY_RTOL) -> None:
    """Raise :class:`MatrixError` unless ``matrix`` equals its transpose within ``rtol``."""
    close = np.isclose(matrix, matrix.T, rtol=rtol, atol=1e-8, equal_nan=True)
    if not close.all():
        i, j = np.argwhere(~close)[0]
        raise MatrixError(
            f"{where}: not symmetric (row {i + 1}, column {j + 1}: {matrix[i, j]:g} vs "
            f"{matrix[j, i]:g}; relative tolerance {rtol:g})"
        )


def _z_diagonal(diagonal: np.ndarray) -> bool:
    return bool((np.isnan(diagonal) | (diagonal == 0) | np.isposinf(diagonal)).all())


def guess_kind(matrix: np.ndarray, where: str) -> str:
    """``"correlation"`` or ``"fisher_z"`` when the values leave no doubt.

    A unit diagonal (within float rounding) with every finite ``|off| <= 1``
    is a correlation matrix; a diagonal of inf, 0 or NaN, or any finite
    ``|off| > 1``, is Fisher z. Anything else raises :class:`MatrixError`.
    """
    diagonal = np.diag(matrix)
    off = _off_diagonal(matrix)
    beyond = bool((np.abs(off[np.isfinite(off)]) > 1 + R_TOLERANCE).any())
    if np.allclose(diagonal, 1, rtol=0, atol=R_TOLERANCE) and not beyond:
        return "correlation"
    if _z_diagonal(diagonal) or beyond:
        return "fisher_z"
    raise MatrixError(
        f"{where}: cannot tell Pearson r from Fisher z (diagonal neither 1 nor inf/0/NaN, "
        'all |values| <= 1); set kind = "correlation" or kind = "fisher_z"'
    )


def _check_values(matrix: np.ndarray, kind: str, where: str) -> None:
    diagonal = np.diag(matrix)
    if kind == "correlation":
        if not np.allclose(diagonal, 1, rtol=0, atol=R_TOLERANCE):
            raise MatrixError(
                f"{where}: kind = 'correlation' needs a unit diagonal, found values "
                f"{np.unique(diagonal)[:3].tolist()}; is it Fisher z (kind = 'fisher_z')?"
            )
        off = np.abs(_off_diagonal(matrix))
        worst = float(off[np.isfinite(off)].max(initial=0))
        if worst > 1 + R_TOLERANCE:
            raise MatrixError(
                f"{where}: kind = 'correlation' but |r| reaches {worst:g} > 1; "
                "is it Fisher z (kind = 'fisher_z')?"
            )
    elif not _z_diagonal(diagonal):
        raise MatrixError(
            f"{where}: kind = 'fisher_z' needs a diagonal of inf, 0 or NaN (atanh(1)), "
            f"found values {np.unique(diagonal)[:3].tolist()}; is it Pearson r "
            "(kind = 'correlation')?"
        )


def matrix_edges(
    matrix: np.ndarray,
    n_rois: int,
    *,
    kind: str | None = None,
    columns: str | list[int] | None = None,
    where: str = "matrix",
) -> tuple[np.ndarray, str]:
    """Check one subject's matrix and return its Fisher z upper triangle.

    Parameters
    ----------
    matrix : ndarray of shape (n, n)
        As read by :func:`read_matrix` (or one slice of a stack).
    n_rois : int
        Atlas size after the ``columns`` selection.
    kind : {"fisher_z", "correlation"} or None
        What the values are; ``None`` guesses (:func:`guess_kind`).
    columns : str, list of int or None
        1-based ROI selection, as for time series.
    where : str
        File (and subject) for messages.

    Returns
    -------
    edges : ndarray of shape (n_rois * (n_rois - 1) // 2,), float32
        Fisher z in ``triu_indices(n_rois, k=1)`` order; correlations are
        clipped to ``|r| < 1`` and transformed as from time series.
        Non-finite off-diagonal values are kept (quality control excludes
        the subject).
    kind : str
        The kind used (declared or guessed).

    Raises
    ------
    MatrixError
        Wrong size, asymmetric, or values that do not fit the kind.
    """
    matrix = select_rois(np.asarray(matrix, dtype=np.float64), columns, n_rois, where)
    check_symmetric(matrix, where)
    kind = kind or guess_kind(matrix, where)
    _check_values(matrix, kind, where)
    rows, cols = np.triu_indices(n_rois, k=1)
    upper = (matrix[rows, cols] + matrix[cols, rows]) / 2
    if kind == "correlation":
        upper = np.arctanh(np.clip(upper, -_R_MAX, _R_MAX))
    return upper.astype(np.float32), kind
