"""The design of an analysis: contrast, covariates, per-site minimum group size.

Shared by every kind (:mod:`consortium.analysis.kinds`). Missing covariates
(docs/methods/analysis.md, "Missing covariates") are dropped or their subjects
excluded with a note; sites with fewer than ``min_per_group`` subjects in either
group are excluded (as in Yan et al. 2019) and listed. Also the sample and QC
tables written beside every result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from consortium.analysis.contrasts import contrast_sample, get_contrast
from consortium.analysis.encodings import DEFAULT_COVARIATES, encode_dx, encode_sex
from consortium.analysis.errors import AnalysisError
from consortium.dataset import Dataset
from sites.contract import QC_CODES

__all__ = ["QC_SUMMARY_COLUMNS", "Design", "build_design", "qc_table"]


@dataclass
class Design:
    """Subjects entering the model, their numeric design and what was dropped.

    ``rows`` are positions in ``dataset.subjects``; ``data`` has ``site``, ``dx``
    (+1 case, -1 control) and the numeric covariates, one row per entry of ``rows``.
    """

    rows: np.ndarray
    data: pd.DataFrame
    covariates: list[str]
    groups: dict[str, str]
    sample: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    sites_excluded: list[dict[str, Any]] = field(default_factory=list)
    covariates_dropped: list[dict[str, Any]] = field(default_factory=list)
    missing_covariate_exclusions: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def fixed(self) -> list[str]:
        return ["dx", *self.covariates]

    @property
    def n_case(self) -> int:
        return int((self.data["dx"] > 0).sum())

    @property
    def n_control(self) -> int:
        return int((self.data["dx"] < 0).sum())

    @property
    def sites(self) -> list[str]:
        return sorted(self.data["site"].unique().tolist())



def _contrast_masks(
    subjects: pd.DataFrame, dx_labels: dict[str, str], contrast: str
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Boolean masks of the 'case' and 'control' sides of a contrast, and their names."""
    try:
        spec = get_contrast(contrast)
        sample = contrast_sample(
            subjects.reset_index(drop=True), spec, dx_labels["case"], dx_labels["control"]
        )
    except KeyError as exc:
        raise AnalysisError(f"contrast {contrast!r}: {exc.args[0]}") from exc
    except ValueError as exc:
        raise AnalysisError(str(exc)) from exc
    is_case = np.zeros(len(subjects), dtype=bool)
    is_control = np.zeros(len(subjects), dtype=bool)
    is_case[sample.index[sample["Dx"] > 0]] = True
    is_control[sample.index[sample["Dx"] < 0]] = True
    return is_case, is_control, spec.group_names(dx_labels["case"], dx_labels["control"])


def _encode_sex(values: pd.Series, sites: pd.Series) -> np.ndarray:
    try:
        return encode_sex(values, sites)
    except ValueError as exc:
        raise AnalysisError(str(exc)) from exc


def build_design(
    dataset: Dataset,
    contrast: str = "all",
    covariates: Sequence[str] = DEFAULT_COVARIATES,
    min_per_group: int = 10,
) -> Design:
    """Select the subjects of a contrast and build the numeric design.

    Missing covariates (docs/methods/analysis.md, "Missing covariates"): a
    covariate missing for every analysed subject of a site (or absent from
    the data) is dropped for all sites in this model, with a note; subjects
    with a missing value of a kept covariate are excluded from this model,
    with a note of the count per site. Sites with fewer than ``min_per_group``
    subjects in either group are then excluded (as in Yan et al. 2019) and listed.
    """
    subjects = dataset.subjects
    is_case, is_control, groups = _contrast_masks(subjects, dataset.dx_labels, contrast)
    keep = is_case | is_control
    notes: list[str] = []
    frame = pd.DataFrame({"site": subjects["site"].to_numpy()})
    frame["dx"] = encode_dx(is_case)
    kept_covariates: list[str] = []
    dropped: list[dict[str, Any]] = []
    for name in covariates:
        if name not in subjects.columns or subjects.loc[keep, name].isna().all():
            notes.append(f"covariate {name!r} is not in the data and was dropped")
            dropped.append({"covariate": name, "reason": "not in the data", "sites": []})
            continue
        absent = _sites_without(subjects[name], subjects["site"], keep)
        if absent:
            notes.append(
                f"covariate {name!r} is missing for every subject of site(s) "
                f"{', '.join(absent)} and was dropped for all sites in this model"
            )
            dropped.append(
                {"covariate": name, "reason": "missing for a whole site", "sites": absent}
            )
            continue
        if name == "sex":
            frame[name] = _encode_sex(subjects[name], subjects["site"])
        else:
            try:
                frame[name] = pd.to_numeric(subjects[name], errors="raise").astype(float)
            except (TypeError, ValueError) as exc:
                raise AnalysisError(f"covariate {name!r} is not numeric ({exc})") from exc
        kept_covariates.append(name)
    excluded_missing: dict[str, dict[str, int]] = {}
    for name in kept_covariates:
        missing = keep & frame[name].isna().to_numpy()
        if missing.any():
            per_site = frame.loc[missing, "site"].value_counts().sort_index()
            listed = ", ".join(f"{s}: {n}" for s, n in per_site.items())
            notes.append(f"{int(missing.sum())} subjects without {name!r} excluded ({listed})")
            excluded_missing[name] = {str(s): int(n) for s, n in per_site.items()}
            keep &= ~missing
    sample = _sample_table(subjects, frame, keep, groups)
    counts = sample.pivot_table(index="site", columns="group", values="n", fill_value=0)
    sites_excluded = []
    for site in counts.index:
        n_case = int(counts.loc[site].get(groups["case"], 0))
        n_control = int(counts.loc[site].get(groups["control"], 0))
        if min(n_case, n_control) < min_per_group:
            sites_excluded.append(
                {
                    "site": site,
                    "n_case": n_case,
                    "n_control": n_control,
                    "reason": f"fewer than {min_per_group} subjects in a group",
                }
            )
            keep &= (frame["site"] != site).to_numpy()
    sample["included"] = ~sample["site"].isin([s["site"] for s in sites_excluded])
    rows = np.flatnonzero(keep)
    data = frame.iloc[rows].reset_index(drop=True)
    for name in list(kept_covariates):
        if len(data) and data[name].nunique() < 2:
            notes.append(f"covariate {name!r} is constant in the analysed subjects and was dropped")
            kept_covariates.remove(name)
    design = Design(
        rows,
        data[["site", "dx", *kept_covariates]],
        kept_covariates,
        groups,
        sample,
        notes,
        sites_excluded,
        dropped,
        excluded_missing,
    )
    if design.n_case == 0 or design.n_control == 0 or len(design.sites) < 2:
        raise AnalysisError(
            f"contrast {contrast!r} leaves {design.n_case} {groups['case']} and "
            f"{design.n_control} {groups['control']} subjects at {len(design.sites)} site(s) "
            f"after the minimum of {min_per_group} per group and site; at least 2 sites with "
            "both groups are needed"
        )
    return design


def _sites_without(values: pd.Series, sites: pd.Series, keep: np.ndarray) -> list[str]:
    """Sites (among the kept subjects) where no subject has a value of the covariate."""
    present = values.notna().to_numpy()[keep]
    by_site = pd.Series(present).groupby(sites.to_numpy()[keep]).any()
    return sorted(str(site) for site, any_value in by_site.items() if not any_value)


def _sample_table(
    subjects: pd.DataFrame, frame: pd.DataFrame, keep: np.ndarray, groups: dict[str, str]
) -> pd.DataFrame:
    """Sample characteristics by site and group (subjects of the contrast)."""
    part = subjects.loc[keep].copy()
    part["group"] = np.where(frame.loc[keep, "dx"] > 0, groups["case"], groups["control"])
    records = []
    for (site, group), rows in part.groupby(["site", "group"], sort=True):
        record = {"site": site, "group": group, "n": len(rows)}
        if "age" in rows:
            record["age_mean"] = float(rows["age"].mean())
            record["age_sd"] = float(rows["age"].std(ddof=1)) if len(rows) > 1 else np.nan
        if "sex" in rows:
            record["female_pct"] = float((rows["sex"] == "F").mean() * 100)
        if "education_years" in rows and rows["education_years"].notna().any():
            record["education_mean"] = float(rows["education_years"].mean())
        if "mean_fd" in rows:
            record["mean_fd_mean"] = float(rows["mean_fd"].mean())
        records.append(record)
    return pd.DataFrame.from_records(records)


QC_SUMMARY_COLUMNS = ("site", "code", "field", "meaning", "n", "values", "threshold")


def _format_numbers(values: pd.Series, roi: bool) -> str:
    present = np.unique(values.dropna().to_numpy(dtype=float))
    if present.size == 0:
        return ""
    if roi:
        shown = ", ".join(f"{v:g}" for v in present[:6])
        return f"ROI {shown}" + (f" (+{present.size - 6} more)" if present.size > 6 else "")
    if present.size == 1:
        return f"{present[0]:.4g}"
    return f"{present[0]:.4g} to {present[-1]:.4g}"


def qc_table(dataset: Dataset) -> pd.DataFrame:
    """Sites' QC exclusion reasons, counted by site, code and field.

    Rendered from the structured reasons (:data:`sites.contract.QC_CODES`):
    ``meaning`` is the code's text, ``n`` the number of subjects with the
    reason, ``values`` the range of offending values (or the ROI indices) and
    ``threshold`` the rule's bound(s). A subject with several reasons counts
    once per reason.
    """
    reasons = getattr(dataset, "qc_reasons", None)
    if reasons is None or reasons.empty:
        return pd.DataFrame(
            {c: pd.Series(dtype="int64" if c == "n" else str) for c in QC_SUMMARY_COLUMNS}
        )
    records = []
    for (site, code, name), rows in reasons.groupby(["site", "code", "field"], sort=True):
        spec = QC_CODES.get(code)
        records.append(
            {
                "site": site,
                "code": code,
                "field": name,
                "meaning": spec.text if spec else "unknown code",
                "n": int(rows["subject_key"].nunique()),
                "values": _format_numbers(rows["value"], spec is not None and "ROI" in spec.value),
                "threshold": _format_numbers(rows["threshold"], False),
            }
        )
    return pd.DataFrame.from_records(records, columns=list(QC_SUMMARY_COLUMNS))
