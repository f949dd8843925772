"""The contrasts of the consortium analyses: one definition of each, with its filters.

A contrast names which subjects form the case group (coded +1) and the
comparison group (coded -1), by phenotype filters on the canonical columns
(:data:`sites.contract.PHENOTYPE_COLUMNS`: ``dx``, ``episode``, ``medication``).
Filter values ``"<case>"``/``"<control>"`` stand for the release's diagnosis
labels. Used by the DMN model (:mod:`consortium.analysis.dmn`), the design
(:mod:`consortium.analysis.design`), :class:`consortium.analysis.params.AnalysisParams`
and through it the API and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy/pandas are imported where used: `confed analyze --help` reads CONTRASTS
    import pandas as pd

__all__ = ["CONTRASTS", "CONTRAST_NAMES", "Contrast", "contrast_sample", "get_contrast"]


@dataclass(frozen=True)
class Contrast:
    """Which subjects form the case group (+1) and the comparison group (-1).

    ``case_name``/``control_name`` are the groups' display names, with
    ``{case}``/``{control}`` replaced by the release's diagnosis labels.
    """

    name: str
    description: str
    case: dict[str, str]
    control: dict[str, str]
    case_name: str = "{case}"
    control_name: str = "{control}"

    def group_names(self, case: str, control: str) -> dict[str, str]:
        """``{"case": ..., "control": ...}`` display names for these diagnosis labels."""
        labels = {"case": case, "control": control}
        return {
            "case": self.case_name.format(**labels),
            "control": self.control_name.format(**labels),
        }


_FEDN = {"dx": "<case>", "episode": "first", "medication": "naive"}
_RECURRENT = {"dx": "<case>", "episode": "recurrent"}

CONTRASTS: dict[str, Contrast] = {
    c.name: c
    for c in (
        Contrast("all", "all patients vs controls", {"dx": "<case>"}, {"dx": "<control>"}),
        Contrast(
            "recurrent",
            "recurrent patients vs controls",
            _RECURRENT,
            {"dx": "<control>"},
            case_name="recurrent {case}",
        ),
        Contrast(
            "fedn",
            "first-episode drug-naive patients vs controls",
            _FEDN,
            {"dx": "<control>"},
            case_name="first-episode drug-naive {case}",
        ),
        Contrast(
            "fedn_vs_recurrent",
            "first-episode drug-naive vs recurrent patients",
            _FEDN,
            _RECURRENT,
            case_name="first-episode drug-naive {case}",
            control_name="recurrent {case}",
        ),
    )
}
CONTRAST_NAMES: tuple[str, ...] = tuple(CONTRASTS)


def get_contrast(contrast: str | Contrast) -> Contrast:
    """The :class:`Contrast` of a name (``ValueError`` naming the choices)."""
    if isinstance(contrast, Contrast):
        return contrast
    if contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}; choose from {CONTRAST_NAMES}")
    return CONTRASTS[contrast]


def _matches(data: pd.DataFrame, filters: dict[str, str], labels: dict[str, str]) -> pd.Series:
    import pandas as pd

    keep = pd.Series(True, index=data.index)
    for column, value in filters.items():
        if column not in data.columns:
            raise KeyError(f"contrast needs phenotype column {column!r}, absent from the data")
        value = labels.get(value.strip("<>"), value) if value.startswith("<") else value
        keep &= data[column].astype("string") == value
    return keep


def contrast_sample(
    data: pd.DataFrame, contrast: str | Contrast, case: str, control: str
) -> pd.DataFrame:
    """Rows of the contrast's two groups with a ``Dx`` column: +1 case group, -1 comparison."""
    import numpy as np

    spec = get_contrast(contrast)
    labels = {"case": case, "control": control}
    in_case = _matches(data, spec.case, labels)
    in_control = _matches(data, spec.control, labels)
    overlap = in_case & in_control
    if overlap.any():
        raise ValueError(f"contrast {spec.name!r}: {int(overlap.sum())} subjects in both groups")
    out = data[in_case | in_control].copy()
    out["Dx"] = np.where(in_case[out.index], 1.0, -1.0)
    return out
