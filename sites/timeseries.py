"""Readers for ROI time series files as preprocessing pipelines write them.

Supported formats (each optionally gzip-compressed, ``<name>.gz``):

- C-PAC ``.1D``: whitespace separated, header line(s) starting with ``#``.
- fMRIPrep / XCP-D ``.tsv`` (and ``.csv``): one header row of ROI names.
- DPARSF ``ROISignals_<subject>.mat`` (variable ``ROISignals``) and ``.txt``
  (whitespace separated numbers, no header).
- ``.npy``: a 2D array volumes x ROIs.

DPARSF stores several atlases side by side in one ``ROISignals`` matrix; a
column range such as ``"1409-1568"`` (1-based, inclusive, as in the DPARSF
documentation: Dosenbach 160) selects one atlas.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

SUFFIXES = (".1d", ".tsv", ".csv", ".txt", ".mat", ".npy")


class TimeseriesError(ValueError):
    """A time series file that cannot be read or does not fit the atlas."""


def parse_columns(spec: str | list[int] | None) -> np.ndarray | None:
    """Parse a 1-based column selection into 0-based indices.

    Parameters
    ----------
    spec : str, list of int or None
        ``"1409-1568"``, ``"1-5,9,12-14"`` or a list of 1-based indices;
        ``None`` keeps every column.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        indices: list[int] = []
        for part in spec.replace(" ", "").split(","):
            try:
                if "-" in part:
                    lo, hi = (int(v) for v in part.split("-", 1))
                    if hi < lo:
                        raise ValueError
                    indices.extend(range(lo, hi + 1))
                else:
                    indices.append(int(part))
            except ValueError as exc:
                raise TimeseriesError(f"bad column range {spec!r} (use e.g. '1409-1568')") from exc
    else:
        indices = [int(v) for v in spec]
    if not indices or min(indices) < 1:
        raise TimeseriesError(f"column range {spec!r}: columns are numbered from 1")
    return np.asarray(indices) - 1


def _format_of(path: Path) -> tuple[str, bool]:
    name = path.name.lower()
    compressed = name.endswith(".gz")
    if compressed:
        name = name[:-3]
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix, compressed
    raise TimeseriesError(
        f"{path}: unknown time series format (expected one of {', '.join(SUFFIXES)}, "
        "optionally .gz)"
    )


def _read_bytes(path: Path, compressed: bool) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if compressed else raw
    except FileNotFoundError as exc:
        raise TimeseriesError(f"{path}: file not found") from exc
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise TimeseriesError(f"{path}: corrupt or truncated gzip file ({exc})") from exc


def _parse(data: bytes, fmt: str, path: Path) -> np.ndarray:
    if fmt == ".npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if fmt == ".mat":
        content = scipy.io.loadmat(io.BytesIO(data))
        if "ROISignals" not in content:
            names = sorted(k for k in content if not k.startswith("__"))
            raise TimeseriesError(f"{path}: no variable 'ROISignals' (found {names})")
        return np.asarray(content["ROISignals"], dtype=np.float64)
    text = io.StringIO(data.decode("utf-8", errors="strict"))
    if fmt == ".tsv":
        return pd.read_csv(text, sep="\t").to_numpy(dtype=np.float64)
    if fmt == ".csv":
        return pd.read_csv(text).to_numpy(dtype=np.float64)
    # .1D and .txt: whitespace separated numbers, '#' lines are headers/comments.
    return np.loadtxt(text, comments="#", dtype=np.float64, ndmin=2)


def read_timeseries(
    path: str | Path, columns: str | list[int] | None = None, n_rois: int | None = None
) -> np.ndarray:
    """Read one subject's ROI time series.

    Parameters
    ----------
    path : str or Path
        Time series file (see module docstring for formats).
    columns : str, list of int or None
        1-based column selection (``"1409-1568"``), applied before the check.
    n_rois : int or None
        Expected number of ROI columns after selection (the atlas size).

    Returns
    -------
    ndarray of shape (n_volumes, n_rois), float64
        Non-finite values are kept; quality control reports them.

    Raises
    ------
    TimeseriesError
        Unreadable file, truncated gzip, wrong shape or column count; the
        message names the file.
    """
    path = Path(path)
    fmt, compressed = _format_of(path)
    data = _read_bytes(path, compressed)
    try:
        array = _parse(data, fmt, path)
    except TimeseriesError:
        raise
    except Exception as exc:  # parser errors of numpy/pandas/scipy
        raise TimeseriesError(f"{path}: cannot parse as {fmt} time series ({exc})") from exc
    if array.ndim != 2:
        raise TimeseriesError(
            f"{path}: expected a 2D volumes x ROIs table, got shape {array.shape}"
        )
    selection = parse_columns(columns)
    if selection is not None:
        if selection.max() >= array.shape[1]:
            raise TimeseriesError(
                f"{path}: column range {columns!r} needs {selection.max() + 1} columns, "
                f"file has {array.shape[1]}"
            )
        array = array[:, selection]
    if n_rois is not None and array.shape[1] != n_rois:
        raise TimeseriesError(
            f"{path}: {array.shape[1]} ROI columns but the atlas has {n_rois} ROIs"
        )
    return array.astype(np.float64, copy=False)
