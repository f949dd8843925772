"""The missing-covariate rule of the design step (docs/methods/analysis.md)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from consortium.analysis.pipeline import build_design


def _dataset(mean_fd: dict[str, list[float]], education: dict[str, list[float]]):
    rng = np.random.default_rng(0)
    rows = []
    for site in ("A", "B", "C"):
        for i in range(8):
            rows.append(
                {
                    "site": site,
                    "dx": "MDD" if i % 2 else "HC",
                    "age": float(rng.uniform(20, 60)),
                    "sex": "M" if i % 3 else "F",
                    "mean_fd": mean_fd.get(site, [0.1 + 0.01 * i] * 8)[i],
                    "education_years": education.get(site, [10.0 + i] * 8)[i],
                }
            )
    return SimpleNamespace(subjects=pd.DataFrame(rows), dx_labels={"case": "MDD", "control": "HC"})


def test_covariate_missing_for_a_whole_site_is_dropped_for_all():
    design = build_design(_dataset({"B": [np.nan] * 8}, {}), min_per_group=2)
    assert "mean_fd" not in design.covariates and "education_years" in design.covariates
    assert design.covariates_dropped == [
        {"covariate": "mean_fd", "reason": "missing for a whole site", "sites": ["B"]}
    ]
    assert len(design.data) == 24, "no subject is lost"
    assert any("'mean_fd'" in n and "site(s) B" in n for n in design.notes)


def test_covariate_missing_for_some_subjects_excludes_them():
    education = {"C": [np.nan, np.nan, np.nan, 12, 13, 14, 15, 16]}
    design = build_design(_dataset({}, education), min_per_group=2)
    assert "education_years" in design.covariates and design.covariates_dropped == []
    assert design.missing_covariate_exclusions == {"education_years": {"C": 3}}
    assert len(design.data) == 21
    assert "3 subjects without 'education_years' excluded (C: 3)" in design.notes
