"""How simulated sites store their files: formats, column names, codes and site configs.

Part of :mod:`consortium.simulate`: every simulated site gets a
:class:`SiteStyle` (:func:`site_style` cycles through phenotype and time series
formats and three naming conventions), its files are written by
:func:`write_timeseries` and :func:`write_phenotypes`, and its ``site.toml``
data sections by :func:`site_data_config` and :func:`write_site_config`.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from sites.atlas import Atlas
from sites.config import write_toml

TIMESERIES_FORMATS = ("1D", "mat", "tsv", "1D.gz")
PHENOTYPE_FORMATS = ("csv", "tsv", "xlsx")
DPARSF_COLUMNS = (1409, 1568)  # 1-based, inclusive: Dosenbach 160 in ROISignals
DPARSF_WIDTH = 1568


@dataclass(frozen=True)
class SiteStyle:
    """How one site stores its files (formats, column names, codes)."""

    phenotype_format: str
    timeseries_format: str
    columns: dict[str, str]
    dx_codes: dict[str, object]
    sex_codes: dict[str, object]
    id_prefix: str


_STYLES = (
    # DPARSF-like spreadsheet codes: Dx 1 / -1, Sex 1 = male / 2 = female.
    dict(
        columns={
            "subject_id": "ID",
            "dx": "Dx",
            "age": "Age",
            "sex": "Sex",
            "education_years": "Edu",
            "mean_fd": "MeanFD_Jenkinson",
        },
        dx_codes={"MDD": 1, "HC": -1},
        sex_codes={"M": 1, "F": 2},
        id_prefix="",
    ),
    # BIDS participants.tsv.
    dict(
        columns={
            "subject_id": "participant_id",
            "dx": "diagnosis",
            "age": "age",
            "sex": "sex",
            "education_years": "education",
            "mean_fd": "fd_mean",
        },
        dx_codes={"MDD": "patient", "HC": "control"},
        sex_codes={"M": "male", "F": "female"},
        id_prefix="sub-",
    ),
    # A clinical research database export.
    dict(
        columns={
            "subject_id": "subj",
            "dx": "group",
            "age": "age_years",
            "sex": "gender",
            "education_years": "years_of_schooling",
            "mean_fd": "motion_fd",
        },
        dx_codes={"MDD": 2, "HC": 1},
        sex_codes={"M": "m", "F": "f"},
        id_prefix="P",
    ),
)


def site_style(index: int) -> SiteStyle:
    """The file style of the ``index``-th simulated site (cycles through formats)."""
    base = _STYLES[index % len(_STYLES)]
    return SiteStyle(
        phenotype_format=PHENOTYPE_FORMATS[index % len(PHENOTYPE_FORMATS)],
        timeseries_format=TIMESERIES_FORMATS[index % len(TIMESERIES_FORMATS)],
        **base,
    )


@dataclass
class SimulatedSite:
    """A simulated site's files and the truth behind them."""

    site_id: str
    directory: Path
    style: SiteStyle
    phenotype_file: Path
    timeseries_dir: Path
    maps_dir: Path
    mask_file: Path
    data_config: dict
    subjects: pd.DataFrame


def site_data_config(style: SiteStyle) -> dict:
    """The data sections of a simulated site's ``site.toml`` (see ``sites.config``).

    Paths are relative to the site folder, where the config lives.
    """
    pattern = {
        "1D": "timeseries/{subject_id}_rois_dosenbach160.1D",
        "1D.gz": "timeseries/{subject_id}_rois_dosenbach160.1D.gz",
        "mat": "timeseries/ROISignals_{subject_id}.mat",
        "tsv": "timeseries/{subject_id}_task-rest_atlas-Dosenbach160_timeseries.tsv",
    }[style.timeseries_format]
    connectivity = {"atlas": "dosenbach160", "source": "timeseries", "pattern": pattern}
    if style.timeseries_format == "mat":
        connectivity["columns"] = f"{DPARSF_COLUMNS[0]}-{DPARSF_COLUMNS[1]}"
    return {
        "phenotypes": {
            "path": f"participants.{style.phenotype_format}",
            "dx_case": "MDD",
            "dx_control": "HC",
            "columns": {source: canon for canon, source in style.columns.items()},
            "values": {
                "dx": {str(code): label for label, code in style.dx_codes.items()},
                "sex": {str(code): label for label, code in style.sex_codes.items()},
            },
        },
        "connectivity": [connectivity],
        "motion": {"source": "phenotype", "definition": "jenkinson"},
        "qc": {"max_mean_fd": 0.2, "min_volumes": 50},
        "maps": [
            {
                "metric": "alff",
                "pattern": "maps/{subject_id}_alff.nii.gz",
                "mask": "maps/mask.nii.gz",
            }
        ],
    }


def write_site_config(site: SimulatedSite, path: str | Path | None = None) -> Path:
    """Write (or complete) the site's ``site.toml`` with its data sections.

    When ``path`` exists (made by ``confed site init``), its ``site_id`` and
    ``[keys]`` are kept and the data sections replaced, as a site's data
    manager edits the template; otherwise default key paths are used.
    """
    import tomllib

    path = Path(path) if path is not None else site.directory / "site.toml"
    head: dict = {"site_id": site.site_id}
    if path.exists():
        current = tomllib.loads(path.read_text())
        head = {"site_id": current.get("site_id", site.site_id), "keys": current.get("keys", {})}
    header = "written by consortium.simulate for a simulated site"
    return write_toml(path, {**head, **site.data_config}, header=header)


def write_timeseries(folder: Path, file_id: str, ts: np.ndarray, fmt: str, atlas: Atlas) -> None:
    """Write one subject's time series in format ``fmt`` (:data:`TIMESERIES_FORMATS`)."""
    if fmt == "mat":
        # Single precision keeps the demo small; the other atlases' columns are zero.
        wide = np.zeros((ts.shape[0], DPARSF_WIDTH), dtype=np.float32)
        wide[:, DPARSF_COLUMNS[0] - 1 : DPARSF_COLUMNS[1]] = ts
        scipy.io.savemat(
            folder / f"ROISignals_{file_id}.mat", {"ROISignals": wide}, do_compression=True
        )
        return
    if fmt == "tsv":
        header, comments = "\t".join(atlas.labels), ""
        path = folder / f"{file_id}_task-rest_atlas-Dosenbach160_timeseries.tsv"
    else:
        header, comments = "\t".join(f"#{i}" for i in range(2, atlas.n_rois + 1)), "#1\t"
        path = folder / f"{file_id}_rois_dosenbach160.{fmt}"
    buffer = io.BytesIO()
    np.savetxt(buffer, ts, fmt="%.4f", delimiter="\t", header=header, comments=comments)
    if fmt.endswith(".gz"):
        path.write_bytes(gzip.compress(buffer.getvalue(), compresslevel=3, mtime=0))
    else:
        path.write_bytes(buffer.getvalue())


def write_phenotypes(path: Path, design: pd.DataFrame, style: SiteStyle) -> None:
    """Write the site's phenotype table with its own column names and codes."""
    table = pd.DataFrame(
        {
            style.columns["subject_id"]: design["file_id"],
            style.columns["dx"]: design["dx"].map(style.dx_codes),
            style.columns["age"]: design["age"],
            style.columns["sex"]: design["sex"].map(style.sex_codes),
            style.columns["education_years"]: design["education_years"],
            style.columns["mean_fd"]: design["mean_fd"],
        }
    )
    if style.phenotype_format == "xlsx":
        table.to_excel(path, index=False, sheet_name="participants")
    else:
        table.to_csv(path, index=False, sep="\t" if style.phenotype_format == "tsv" else ",")
