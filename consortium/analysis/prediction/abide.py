"""Connectivity features of an ABIDE Preprocessed (PCP) folder, read in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .features import Features, PredictionError, edge_names, labelled_subjects, nonfinite_policy

__all__ = ["ABIDE_DX", "ABIDE_SEX", "features_from_abide"]

#: ABIDE phenotype codes: ``DX_GROUP`` 1 is autism (case), 2 typical controls.
ABIDE_DX = {1: "ASD", 2: "TDC"}
#: ABIDE ``SEX``: 1 is male, 2 female.
ABIDE_SEX = {1: "M", 2: "F"}


def features_from_abide(
    data_dir: str | Path, atlas: str = "ho111", nan: str = "zero", sites: list[str] | None = None
) -> Features:
    """Connectivity edges of an ABIDE Preprocessed (PCP) folder, read in place.

    The layout is one folder per site holding ``participants.csv`` (ABIDE
    phenotype columns ``FILE_ID``, ``SITE_ID``, ``DX_GROUP``, ``AGE_AT_SCAN``,
    ``SEX``, ``func_mean_fd``) and one ``<FILE_ID>_rois_<atlas>.1D[.gz]`` time
    series per subject. Features come from the site agent's own code
    (``sites.timeseries.read_timeseries``, ``sites.connectivity.fisher_z_connectivity``)
    so they equal what a site bundle would hold. ``DX_GROUP`` 1 is ``ASD``
    (case), 2 ``TDC`` (control); ``SEX`` 1 is ``M``, 2 ``F``.

    ABIDE PCP time series contain ROIs without signal (all zeros) for about a
    fifth of the subjects; their correlations are undefined. ``nan="zero"``
    (default) sets those edges to 0 and records how many; ``"error"`` raises.
    """
    from sites.atlas import load_atlas
    from sites.connectivity import fisher_z_connectivity
    from sites.timeseries import TimeseriesError, read_timeseries

    data_dir = Path(data_dir)
    atlas_obj = load_atlas(atlas)
    site_dirs = sorted(p for p in data_dir.iterdir() if (p / "participants.csv").is_file())
    if sites is not None:
        site_dirs = [p for p in site_dirs if p.name in set(sites)]
    if not site_dirs:
        raise PredictionError(f"{data_dir}: no site folder with a participants.csv")
    rows, edges = [], []
    for site_dir in site_dirs:
        table = _abide_participants(site_dir)
        for rec in table.itertuples(index=False):
            path = _abide_file(site_dir, rec.FILE_ID)
            try:
                ts = read_timeseries(path, n_rois=atlas_obj.n_rois)
            except TimeseriesError as exc:
                raise PredictionError(f"site {site_dir.name!r}: {exc}") from exc
            with np.errstate(invalid="ignore", divide="ignore"):
                edges.append(fisher_z_connectivity(ts))
            rows.append(_abide_row(site_dir, rec))
    subjects = labelled_subjects(pd.DataFrame(rows), {"case": "ASD", "control": "TDC"})
    X = np.vstack(edges).astype(np.float64)
    notes = nonfinite_policy(X, subjects, nan, "edges")
    source = {"type": "abide-pcp", "path": str(data_dir), "atlas": atlas}
    return Features(
        X,
        subjects,
        edge_names(atlas, X.shape[1]),
        "edges",
        {"case": "ASD", "control": "TDC"},
        source,
        notes,
    )


def _abide_participants(site_dir: Path) -> pd.DataFrame:
    path = site_dir / "participants.csv"
    table = pd.read_csv(path)
    needed = ["FILE_ID", "DX_GROUP", "AGE_AT_SCAN", "SEX"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise PredictionError(f"{path}: missing column(s) {missing}")
    for col, codes in (("DX_GROUP", ABIDE_DX), ("SEX", ABIDE_SEX)):
        bad = ~table[col].isin(list(codes))
        if bad.any():
            rec = table[bad].iloc[0]
            raise PredictionError(
                f"{path}: subject {rec['FILE_ID']!r} has {col}={rec[col]!r} "
                f"(expected one of {sorted(codes)})"
            )
    return table


def _abide_file(site_dir: Path, file_id: str) -> Path:
    found = sorted(site_dir.glob(f"{file_id}_rois_*.1D*"))
    if len(found) != 1:
        raise PredictionError(
            f"site {site_dir.name!r}, subject {file_id!r}: expected one "
            f"'{file_id}_rois_*.1D[.gz]' file in {site_dir}, found {len(found)}"
        )
    return found[0]


def _abide_row(site_dir: Path, rec: Any) -> dict[str, Any]:
    fd = getattr(rec, "func_mean_fd", np.nan)
    return {
        "subject_key": str(rec.FILE_ID),
        "site": str(getattr(rec, "SITE_ID", site_dir.name)),
        "dx": ABIDE_DX[int(rec.DX_GROUP)],
        "age": float(rec.AGE_AT_SCAN),
        "sex": ABIDE_SEX[int(rec.SEX)],
        "mean_fd": float(fd) if pd.notna(fd) else np.nan,
    }
