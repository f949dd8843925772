"""Quality control with recorded reasons.

Every subject of the phenotype table ends up in the bundle's QC report,
included or excluded with the reasons found. Rules (defaults in
:class:`sites.config.QCConfig`):

- head motion: mean framewise displacement above ``max_mean_fd`` (0.2 mm, the
  REST-meta-MDD threshold [1]_) or unknown;
- too few volumes (``min_volumes``);
- coverage: an ROI whose signal is constant (zero variance, e.g. outside the
  field of view) or missing;
- non-finite values (NaN, inf) in the time series;
- implausible phenotypes: age outside ``[age_min, age_max]``, unknown or
  missing sex or diagnosis codes (from :mod:`sites.phenotypes`).

References
----------
.. [1] Yan C.-G. et al. (2019). PNAS 116:9078-9083.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from sites.atlas import Atlas
from sites.config import QCConfig


def _roi_list(atlas: Atlas, mask: np.ndarray, limit: int = 5) -> str:
    names = [atlas.labels[i] for i in np.flatnonzero(mask)]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def timeseries_problems(ts: np.ndarray, atlas: Atlas, rules: QCConfig, source: str) -> list[str]:
    """Reasons to exclude one subject's ROI time series (empty when fine).

    ``source`` names the file, so that the reason says where the problem is.
    """
    reasons = []
    if ts.shape[0] < rules.min_volumes:
        reasons.append(
            f"too few volumes: {ts.shape[0]} < {rules.min_volumes} ({atlas.name}, {source})"
        )
    finite = np.isfinite(ts)
    bad = ~finite.all(axis=0)
    if bad.any():
        reasons.append(
            f"non-finite values in {bad.sum()} ROI(s) of {atlas.name} "
            f"({_roi_list(atlas, bad)}; {source})"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        flat = np.nanstd(np.where(finite, ts, np.nan), axis=0) == 0
    flat &= ~bad
    if flat.any():
        reasons.append(
            f"coverage: {flat.sum()} ROI(s) of {atlas.name} with zero variance "
            f"({_roi_list(atlas, flat)}; {source})"
        )
    return reasons


def phenotype_problems(age: float, mean_fd: float, rules: QCConfig, need_fd: bool) -> list[str]:
    """Reasons from age and head motion."""
    reasons = []
    if np.isfinite(age) and not rules.age_min <= age <= rules.age_max:
        reasons.append(f"age: {age:g} outside [{rules.age_min:g}, {rules.age_max:g}]")
    if need_fd and not np.isfinite(mean_fd):
        reasons.append("mean_fd: missing")
    elif np.isfinite(mean_fd) and mean_fd > rules.max_mean_fd:
        reasons.append(f"head motion: mean FD {mean_fd:.3f} mm > {rules.max_mean_fd:g} mm")
    return reasons


def qc_table(keys: list[str], reasons: list[list[str]], mean_fd: np.ndarray) -> pd.DataFrame:
    """The QC report: one row per subject of the phenotype table."""
    return pd.DataFrame(
        {
            "subject_key": keys,
            "included": [not r for r in reasons],
            "reason": ["; ".join(r) for r in reasons],
            "mean_fd": np.asarray(mean_fd, dtype=float),
        }
    )
