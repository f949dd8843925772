"""The site meta-analysis: raw outcomes, per-site covariates, one implementation.

Per-site g and its variance are checked against an independent per-site statsmodels
OLS on real ABIDE data (KKI, OHSU, STANFORD; OHSU is all male, so sex is dropped
there), through ``site_effects`` and through the remote ``meta_analysis``. The
pipeline's meta-analysis must not depend on ComBat: a synthetic release (one
single-sex site) is analysed with and without it.

The documented conversion (Hedges 1981; Borenstein et al. 2009, ch. 4) with
m = n1 + n2 - 2 and J = Gamma(m/2) / (sqrt(m/2) Gamma((m-1)/2)):
g = J t sqrt(1/n1 + 1/n2), v = 1/n1 + 1/n2 + (1 - (m - 2) / (m J^2)) g^2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import special

from consortium.analysis import random_effects, site_effects
from consortium.analysis.pipeline import run_analysis
from consortium.dataset import Dataset
from consortium.report import render_report
from sites.bundle import read_bundle
from tests.helpers import bundles as synthetic
from tests.helpers.bundles import build_abide_bundle

ABIDE_SITES = ("KKI", "OHSU", "STANFORD")
COVARIATES = ["age", "sex", "mean_fd"]
OUTCOME = "unassigned__unassigned"  # mean FC over all ho111 edges (no networks)
MEASURE = "networks:ho111"


def _g_and_v(t: float, n1: int, n2: int) -> tuple[float, float]:
    """The documented conversion, computed with scipy's gamma function."""
    m = n1 + n2 - 2
    j = special.gamma(m / 2) / (np.sqrt(m / 2) * special.gamma((m - 1) / 2))
    g = j * t * np.sqrt(1 / n1 + 1 / n2)
    return g, 1 / n1 + 1 / n2 + (1 - (m - 2) / (m * j**2)) * g**2


def _statsmodels_site(part: pd.DataFrame, dx: str, covariates: list[str]) -> tuple[float, float]:
    """g and v of one site from statsmodels OLS; covariates constant there left out."""
    varying = [c for c in covariates if part[c].nunique() > 1]
    fit = smf.ols(" + ".join([f"y ~ {dx}", *varying]), part).fit()
    n1, n2 = int((part[dx] > 0).sum()), int((part[dx] <= 0).sum())
    return _g_and_v(float(fit.tvalues[dx]), n1, n2)


# ------------------------------------------------------------------- real ABIDE data


@pytest.fixture(scope="module")
def abide(abide_dir: Path, tmp_path_factory) -> Dataset:
    folder = tmp_path_factory.mktemp("abide-meta")
    bundles = [
        read_bundle(build_abide_bundle(abide_dir, site, folder / site)) for site in ABIDE_SITES
    ]
    return Dataset.from_bundles(bundles, release_name="abide-meta", release_hash="a" * 64)


@pytest.fixture(scope="module")
def abide_frame(abide: Dataset) -> pd.DataFrame:
    s = abide.subjects
    return pd.DataFrame({
        "subject": s["subject_key"].to_numpy(), "site": s["site"].to_numpy(),
        "dx": s["dx"].to_numpy(), "case": (s["dx"] == "ASD").to_numpy(dtype=float),
        "age": s["age"].to_numpy(float), "sex": s["sex"].to_numpy(),
        "male": (s["sex"] == "M").to_numpy(dtype=float), "mean_fd": s["mean_fd"].to_numpy(float),
        "y": abide.network_summaries("ho111")[OUTCOME].to_numpy(np.float64),
    })  # fmt: skip


def test_site_effects_equal_statsmodels_ols_on_abide(abide_frame):
    frame = abide_frame
    assert frame.query("site == 'OHSU'")["male"].nunique() == 1  # sex constant at OHSU
    covariates = ["age", "male", "mean_fd"]
    table = site_effects(frame, "y", "case", "site", covariates, min_per_group=2)
    assert list(table["site"]) == list(ABIDE_SITES) and table["included"].all()
    for row in table.itertuples():
        g, v = _statsmodels_site(frame[frame["site"] == row.site], "case", covariates)
        assert row.yi == pytest.approx(g, rel=1e-8, abs=1e-12), row.site
        assert row.vi == pytest.approx(v, rel=1e-8), row.site
    ohsu = table.set_index("site").loc["OHSU"]
    assert ohsu["covariates_dropped"] == "male (constant)"
    assert ohsu["covariates"] == "age, mean_fd"
    assert table.set_index("site").loc["KKI", "covariates_dropped"] == ""


def _scoped(abide: Dataset, frame: pd.DataFrame) -> Any:
    from consortium.proposals.scope import ScopedData

    subjects = frame[["subject", "site", "dx", "age", "sex", "mean_fd"]].reset_index(drop=True)
    tables = {MEASURE: abide.network_summaries("ho111").reset_index(drop=True)}
    return ScopedData(subjects, tables, {}, {}, dict(abide.dx_labels))


def _remote(abide, frame, covariates: list[str]) -> dict:
    from consortium.proposals.remote import run_query

    request = {"analysis": "meta_analysis", "measure": MEASURE, "outcome": OUTCOME,
               "covariates": covariates, "filters": []}  # fmt: skip
    columns = ["dx", "age", "sex", "mean_fd"]
    result, _ = run_query(request, _scoped(abide, frame), abide.dx_labels, columns, 5, {})
    return result


def test_remote_meta_analysis_uses_covariates(abide, abide_frame):
    frame = abide_frame
    adjusted = _remote(abide, frame, COVARIATES)
    plain = _remote(abide, frame, [])
    yi, vi = [], []
    for site in ABIDE_SITES:
        g, v = _statsmodels_site(frame[frame["site"] == site], "case", COVARIATES)
        assert adjusted["sites"][site]["g"] == pytest.approx(g, rel=1e-8, abs=1e-12), site
        assert adjusted["sites"][site]["vi"] == pytest.approx(v, rel=1e-8), site
        yi.append(g)
        vi.append(v)
        g0, _ = _statsmodels_site(frame[frame["site"] == site], "case", [])
        assert plain["sites"][site]["g"] == pytest.approx(g0, rel=1e-8, abs=1e-12), site
        assert abs(adjusted["sites"][site]["g"] - plain["sites"][site]["g"]) > 1e-4, site
    assert adjusted["sites"]["OHSU"]["covariates_dropped"] == ["sex[M] (constant)"]
    assert adjusted["sites"]["KKI"]["covariates_dropped"] == []
    reference = random_effects(np.array(yi), np.array(vi)).as_dict()
    for key in ("estimate", "se", "tau2", "q", "i2", "k"):
        assert adjusted["pooled"][key] == pytest.approx(reference[key], rel=1e-7, abs=1e-10), key
    assert adjusted["pooled"]["estimate"] != pytest.approx(plain["pooled"]["estimate"])
    assert adjusted["model"] == f"{OUTCOME} ~ 1 + case + age + sex[M] + mean_fd, OLS per site"


# ------------------------------------------------------------------- pipeline, ComBat


def _synthetic_release(out: Path) -> Dataset:
    """Three synthetic sites (scanner effects, planted DMN effect); SITE_C is all male."""
    original = synthetic.site_tables

    def tables(site: str, *args: Any, **kwargs: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
        subjects, qc = original(site, *args, **kwargs)
        if site == "SITE_C":
            subjects["sex"] = "M"
        return subjects, qc

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic, "site_tables", tables)
        bundles = synthetic.make_bundles(out, n_sites=3, seed=7)
    return Dataset.from_bundles(bundles, release_name="meta-combat", release_hash="e" * 64)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("meta-runs")
    dataset = _synthetic_release(root / "bundles")
    return {
        harm: run_analysis(dataset, "dmn", root / harm, harmonize=harm, progress=False)
        for harm in ("combat", "none")
    } | {"dataset": dataset}


def test_pipeline_meta_analysis_does_not_depend_on_combat(runs):
    docs = {h: json.loads((runs[h] / "results.json").read_text()) for h in ("combat", "none")}
    models = docs["combat"]["dmn"]["models"]
    assert models["combat"]["t"] != models["none"]["t"]  # ComBat did change the mega-analysis
    assert docs["combat"]["meta"] == docs["none"]["meta"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(runs["combat"] / "site_effects.parquet"),
        pd.read_parquet(runs["none"] / "site_effects.parquet"),
        check_exact=True,
    )
    meta = docs["combat"]["meta"]
    assert meta["outcome_harmonization"] == "none"
    assert "unharmonized" in meta["outcome_harmonization_reason"]
    assert meta["covariates"] == ["age", "sex", "education_years", "mean_fd"]
    assert meta["notes"] == [
        "site SITE_C: covariates left out of this site's model: sex (constant)"
    ]


def test_pipeline_site_g_equals_statsmodels_on_raw_outcome(runs):
    dataset = runs["dataset"]
    s = dataset.subjects
    frame = pd.DataFrame({
        "site": s["site"], "dx": np.where(s["dx"] == "MDD", 1.0, -1.0),
        "age": s["age"].astype(float), "sex": (s["sex"] == "M").astype(float),
        "education_years": s["education_years"].astype(float),
        "mean_fd": s["mean_fd"].astype(float),
        "y": dataset.network_summaries("dosenbach160")["dmn_restmeta"].to_numpy(np.float64),
    })  # fmt: skip
    sites = pd.read_parquet(runs["combat"] / "site_effects.parquet")
    covariates = ["age", "sex", "education_years", "mean_fd"]
    for row in sites.itertuples():
        g, v = _statsmodels_site(frame[frame["site"] == row.site], "dx", covariates)
        assert row.yi == pytest.approx(g, rel=1e-8, abs=1e-12), row.site
        assert row.vi == pytest.approx(v, rel=1e-8), row.site


def test_report_says_meta_analysis_is_unharmonized(runs, tmp_path):
    html = render_report(runs["combat"], tmp_path / "report.html").read_text()
    start = html.index('id="forest-plot"')
    section = html[start : html.index("</section>", start)]
    assert "uses the unharmonized outcomes" in section
    assert "although the mixed model uses ComBat-harmonized ones" in section
    assert "a site's t is invariant to its own location and scale" in section
    assert "site SITE_C: covariates left out of this site&#39;s model: sex (constant)" in section
