"""``harmonize`` of remote analyses: any registered harmonizer, equal to the library's own.

``run_query`` is called on an in-memory grant view (no server): four sites with
a site effect on five network-pair columns, 15 cases and 15 controls each.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from consortium.errors import ConfedError
from consortium.proposals.remote import run_query
from consortium.proposals.schemas import AnalysisRequest
from consortium.proposals.scope import ScopedData
from harmonization.combat import ComBat
from harmonization.gam import GAMComBat

MEASURE = "networks:toy"
COLUMNS = ["dx", "age", "sex"]
DX = {"case": "ASD", "control": "TDC"}
STRATA = {"age": [0.0, 120.0]}


def _scoped(table: pd.DataFrame | None = None, seed: int = 0) -> ScopedData:
    rng = np.random.default_rng(seed)
    n_sites, per = 4, 30
    sites = np.repeat([f"S{k}" for k in range(n_sites)], per)
    subjects = pd.DataFrame({
        "subject": [f"p{i}" for i in range(sites.size)],
        "site": sites,
        "dx": np.tile(["ASD"] * (per // 2) + ["TDC"] * (per // 2), n_sites),
        "age": rng.uniform(8, 40, sites.size),
        "sex": rng.choice(["M", "F"], sites.size),
    })  # fmt: skip
    if table is None:
        shift = rng.normal(0, 1, (n_sites, 5))[np.repeat(np.arange(n_sites), per)]
        scale = rng.uniform(0.5, 2, (n_sites, 1))[np.repeat(np.arange(n_sites), per)]
        age_effect = 0.02 * (subjects["age"].to_numpy() - 25)[:, None] ** 2 / 10
        case = (subjects["dx"] == "ASD").to_numpy(dtype=float)[:, None]
        values = shift + scale * rng.normal(size=(sites.size, 5)) + age_effect + 0.5 * case
        table = pd.DataFrame(values, columns=[f"n{j}__n{j}" for j in range(5)])
    return ScopedData(subjects, {MEASURE: table}, {}, {}, dict(DX))


def _query(analysis: str, harmonize: str, covariates=("age", "sex")) -> dict:
    body = AnalysisRequest(analysis=analysis, measure=MEASURE, outcome="n2__n2",
                           covariates=list(covariates), harmonize=harmonize)  # fmt: skip
    return body.model_dump()


def _run(req: dict, data: ScopedData) -> dict:
    result, _ = run_query(req, data, DX, COLUMNS, minimum=5, strata=STRATA)
    return result


def _library(model, data: ScopedData) -> ScopedData:
    """The grant view with its measure table harmonized directly by ``model``."""
    s = data.subjects
    covariates = pd.DataFrame({
        "dx": (s["dx"] == "ASD").to_numpy(dtype=float),
        "age": s["age"].to_numpy(dtype=float),
        "sex": s["sex"].astype("category"),
    })  # fmt: skip
    table = data.tables[MEASURE]
    values = model.fit_transform(table.to_numpy(dtype=float), s["site"].to_numpy(), covariates)
    harmonized = pd.DataFrame(values, columns=table.columns)
    return ScopedData(s, {MEASURE: harmonized}, {}, {}, dict(DX))


def _numbers(result: dict) -> np.ndarray:
    if result["analysis"] == "mixed_model":
        return np.array([[v[k] for k in ("estimate", "se", "t", "p")]
                         for v in result["coefficients"]])  # fmt: skip
    return np.array([result["pooled"]["estimate"], result["pooled"]["se"]])


@pytest.mark.parametrize("analysis", ["mixed_model", "meta_analysis"])
def test_combat_gam_equals_the_library_gam_combat(analysis):
    data = _scoped()
    harmonized = _run(_query(analysis, "combat-gam"), data)
    direct = _run(_query(analysis, "none"), _library(GAMComBat(smooth_terms=("age",)), data))
    raw = _run(_query(analysis, "none"), data)
    assert harmonized["harmonize"] == "combat-gam" and raw["harmonize"] == "none"
    assert harmonized["n_subjects"] == direct["n_subjects"] == 120  # every row analysed
    np.testing.assert_allclose(_numbers(harmonized), _numbers(direct), rtol=1e-9, atol=1e-12)
    assert not np.allclose(_numbers(harmonized), _numbers(raw))  # harmonization did something


def test_combat_equals_the_library_combat():
    data = _scoped(seed=1)
    harmonized = _run(_query("mixed_model", "combat"), data)
    direct = _run(_query("mixed_model", "none"), _library(ComBat(), data))
    np.testing.assert_allclose(_numbers(harmonized), _numbers(direct), rtol=1e-9, atol=1e-12)


def test_unknown_harmonizer_is_refused_with_the_choices():
    with pytest.raises(ValidationError, match="unknown harmonizer 'neuroharmonize'.*combat-gam"):
        _query("mixed_model", "neuroharmonize")


def test_gam_without_age_names_the_smooth_term():
    with pytest.raises(ConfedError, match="harmonize combat-gam: .*age") as err:
        _run(_query("mixed_model", "combat-gam", covariates=("sex",)), _scoped())
    assert err.value.status == 422


def test_missing_values_name_the_column():
    data = _scoped()
    data.tables[MEASURE].iloc[3, 4] = np.nan
    with pytest.raises(ConfedError, match="column 'n4__n4' of networks:toy has missing values"):
        _run(_query("mixed_model", "combat"), data)
