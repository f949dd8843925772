"""Quality control with structured, identity-free reasons.

Every subject of the phenotype table ends up in the bundle's QC tables,
included or excluded with the reasons found. A reason is a code of
:data:`sites.contract.QC_CODES` with a field (a phenotype column, an atlas or
a map metric), a number and a threshold; its ``detail`` (file paths, the
site's subject IDs, the offending text) is written only to the local QC log
next to the bundle (:func:`write_local_log`) and never into the bundle.
Rules (defaults in :class:`sites.config.QCConfig`):

- head motion: mean framewise displacement above ``max_mean_fd`` (0.2 mm, the
  REST-meta-MDD threshold [1]_) or unknown;
- too few volumes (``min_volumes``);
- coverage: an ROI whose signal is constant (zero variance, e.g. outside the
  field of view) or missing;
- non-finite values (NaN, inf) in the time series;
- non-finite connectivity (NaN, inf edges, also in precomputed matrices, for
  which the volume and coverage rules cannot run: the ``rules`` of each
  input format, :mod:`sites.formats`);
- implausible phenotypes: age outside ``[age_min, age_max]``, values outside
  the contract's plausible range, unknown or missing sex or diagnosis codes
  (from :mod:`sites.phenotypes`).

References
----------
.. [1] Yan C.-G. et al. (2019). PNAS 116:9078-9083.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sites.atlas import Atlas
from sites.config import QCConfig
from sites.contract import QC_CODES, QC_REASON_COLUMNS, empty_qc_reasons, join_codes
from sites.formats import SERIES_RULES, input_format

#: QC codes of the rules every subject goes through (phenotypes, head motion).
SUBJECT_RULES = (
    "missing_value",
    "not_a_number",
    "unknown_code",
    "implausible_value",
    "age_out_of_range",
    "motion_missing",
    "head_motion",
)


def rules_run(sources: dict[str, str], maps: bool) -> dict:
    """Which QC rules ran, for the manifest's ``qc_rules`` and the local log.

    Parameters
    ----------
    sources : dict
        Atlas name -> its input format (``"timeseries"``, ``"bold"``, ``"matrix"``
        or another of :func:`sites.formats.input_formats`).
    maps : bool
        Whether the site delivers voxel maps (``missing_map``).

    Returns
    -------
    dict
        ``run``: ``subject`` (codes), ``connectivity`` (atlas -> codes),
        ``maps``; ``not_run``: atlas -> codes of rules that did not apply.
    """
    return {
        "run": {
            "subject": list(SUBJECT_RULES),
            "connectivity": {a: list(input_format(s).rules) for a, s in sources.items()},
            "maps": ["missing_map"] if maps else [],
        },
        "not_run": {
            a: [c for c in SERIES_RULES if c not in input_format(s).rules]
            for a, s in sources.items()
            if input_format(s).precomputed
        },
    }


def rules_note(sources: dict[str, str]) -> str:
    """One line for the local log: the connectivity rules that ran per atlas."""
    parts = []
    for atlas, source in sources.items():
        text = f"{atlas} ({source}): {', '.join(input_format(source).rules)}"
        if input_format(source).precomputed:
            text += "; volume and coverage rules not run (no time series)"
        parts.append(text)
    return "phenotype and motion rules; " + " | ".join(parts)


@dataclass(frozen=True)
class Reason:
    """One exclusion reason of one subject.

    Attributes
    ----------
    code : str
        A code of :data:`sites.contract.QC_CODES`.
    field : str
        The phenotype column, atlas or map metric concerned.
    value, threshold : float
        The offending number (or ROI index, 1-based) and the rule's bound; NaN
        when the code has none.
    detail : str
        Human-readable text with paths and source values: local log only.
    """

    code: str
    field: str
    value: float = float("nan")
    threshold: float = float("nan")
    detail: str = ""

    def __post_init__(self) -> None:
        if self.code not in QC_CODES:
            raise ValueError(f"unknown QC code {self.code!r}")


def _roi_reasons(code: str, atlas: Atlas, mask: np.ndarray, source: str, what: str) -> list:
    return [
        Reason(code, atlas.name, float(i + 1), detail=f"{what} ({atlas.labels[i]}; {source})")
        for i in np.flatnonzero(mask)
    ]


def timeseries_problems(ts: np.ndarray, atlas: Atlas, rules: QCConfig, source: str) -> list[Reason]:
    """Reasons to exclude one subject's ROI time series (empty when fine).

    ``source`` names the file; it goes into the local detail only.
    """
    reasons = []
    if ts.shape[0] < rules.min_volumes:
        reasons.append(
            Reason(
                "too_few_volumes",
                atlas.name,
                float(ts.shape[0]),
                float(rules.min_volumes),
                f"too few volumes: {ts.shape[0]} < {rules.min_volumes} ({atlas.name}, {source})",
            )
        )
    finite = np.isfinite(ts)
    bad = ~finite.all(axis=0)
    reasons += _roi_reasons("non_finite", atlas, bad, source, "non-finite values in ROI")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        flat = np.nanstd(np.where(finite, ts, np.nan), axis=0) == 0
    flat &= ~bad
    reasons += _roi_reasons("zero_variance_roi", atlas, flat, source, "zero variance in ROI")
    return reasons


def phenotype_problems(age: float, mean_fd: float, rules: QCConfig, need_fd: bool) -> list[Reason]:
    """Reasons from age and head motion."""
    reasons = []
    if np.isfinite(age) and not rules.age_min <= age <= rules.age_max:
        bound = rules.age_min if age < rules.age_min else rules.age_max
        text = f"age {age:g} outside [{rules.age_min:g}, {rules.age_max:g}]"
        reasons.append(Reason("age_out_of_range", "age", float(age), float(bound), text))
    if need_fd and not np.isfinite(mean_fd):
        reasons.append(Reason("motion_missing", "mean_fd", detail="mean_fd: missing"))
    elif np.isfinite(mean_fd) and mean_fd > rules.max_mean_fd:
        text = f"head motion: mean FD {mean_fd:.3f} mm > {rules.max_mean_fd:g} mm"
        reasons.append(
            Reason("head_motion", "mean_fd", float(mean_fd), float(rules.max_mean_fd), text)
        )
    return reasons


def qc_tables(
    keys: list[str], reasons: list[list[Reason]], mean_fd: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The bundle's QC tables: one row per subject, and one row per reason.

    Returns
    -------
    qc : DataFrame
        ``subject_key``, ``included``, ``reason_codes``, ``mean_fd``.
    qc_reasons : DataFrame
        ``subject_key``, ``code``, ``field``, ``value``, ``threshold`` (no detail).
    """
    qc = pd.DataFrame(
        {
            "subject_key": keys,
            "included": [not r for r in reasons],
            "reason_codes": [join_codes(x.code for x in r) for r in reasons],
            "mean_fd": np.asarray(mean_fd, dtype=float),
        }
    )
    rows = [
        (key, x.code, x.field, float(x.value), float(x.threshold))
        for key, subject in zip(keys, reasons, strict=True)
        for x in subject
    ]
    if not rows:
        return qc, empty_qc_reasons()
    table = pd.DataFrame(rows, columns=list(QC_REASON_COLUMNS))
    return qc, table.astype({"value": float, "threshold": float})


def local_log_path(bundle_dir: str | Path) -> Path:
    """Where the local QC log of ``bundle_dir`` goes: a sibling, never inside it."""
    bundle_dir = Path(bundle_dir)
    return bundle_dir.parent / f"{bundle_dir.name}.qc-local.csv"


def write_local_log(
    path: Path,
    ids: list[str],
    keys: list[str],
    reasons: list[list[Reason]],
    rules: str = "",
) -> Path:
    """Write the site-only QC log (subject IDs, paths, details), mode 0600.

    One row per reason, and one row with an empty code per included subject;
    ``rules`` (:func:`rules_note`) fills a ``qc_rules`` column saying which
    rules ran.
    """
    rows = []
    for subject, key, found in zip(ids, keys, reasons, strict=True):
        for x in found or [None]:
            rows.append(
                {
                    "subject_id": subject,
                    "subject_key": key,
                    "included": not found,
                    "code": x.code if x else "",
                    "field": x.field if x else "",
                    "value": x.value if x else np.nan,
                    "threshold": x.threshold if x else np.nan,
                    "detail": x.detail if x else "",
                    "qc_rules": rules,
                }
            )
    tmp = path.parent / f".{path.name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="") as handle:
        pd.DataFrame(rows).to_csv(handle, index=False)
    os.replace(tmp, path)
    return path
