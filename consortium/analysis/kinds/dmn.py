"""``dmn``: the REST-meta-MDD model on mean DMN FC, with the site meta-analysis.

``y ~ Dx + Age + Sex + Edu + Motion + (1|Site) + (0 + Dx|Site)`` by maximum
likelihood, without and (unless ``harmonize="none"``) with the harmonizer, plus
the site-level meta-analysis (always on the unharmonized outcome), its forest
plot and leave-one-site-out table.

References
----------
Yan C-G et al. (2019). PNAS 116:9078-9083.
Hedges LV (1981). J Educ Stat 6:107-128.
Borenstein M, Hedges LV, Higgins JPT, Rothstein HR (2009). Introduction to
Meta-Analysis. Wiley.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from consortium.analysis.data import (
    ReleaseData,
    atlas_of,
    edges_of,
    harmonize_fitted,
    summaries_of,
)
from consortium.analysis.design import Design
from consortium.analysis.diagnostics import HarmonizationDiagnostics, harmonization_diagnostics
from consortium.analysis.errors import AnalysisError
from consortium.analysis.figures import dmn_rois_figure, forest_figure
from consortium.analysis.fitting import fit_dmn
from consortium.analysis.meta import leave_one_out, random_effects, site_effects
from consortium.analysis.params import AnalysisParams
from consortium.analysis.progress import Steps
from consortium.analysis.results import (
    DmnSection,
    KindResult,
    MetaAnalysis,
    pooled_effect,
    rename_vocabulary,
)
from consortium.analysis.sensitivity import (
    CovariateSensitivity,
    covariate_sensitivity,
    design_with_covariates,
    effect_of_model,
)

__all__ = ["META_HARMONIZATION_NOTE", "meta_from_sites", "run"]

OUTCOME = "dmn_restmeta"
META_HARMONIZATION_NOTE = (
    "The site meta-analysis uses the unharmonized outcome: each site's OLS t is invariant "
    "to that site's own location and scale, so per-site estimates need no harmonization, "
    "and ComBat (which adjusts each site towards the pooled covariate effects) would shrink "
    "the between-site heterogeneity the meta-analysis is meant to show."
)


def harmonizations(params: AnalysisParams) -> list[str]:
    """``["none"]``, or ``["none", params.harmonize]``: the unharmonized fit always runs."""
    return ["none"] if params.harmonize == "none" else ["none", params.harmonize]


def _dropped_notes(per_site: pd.DataFrame) -> list[str]:
    """One note per site whose model left out covariates (constant or collinear there)."""
    return [
        f"site {row.site}: covariates left out of this site's model: {row.covariates_dropped}"
        for row in per_site.itertuples(index=False)
        if row.covariates_dropped
    ]


def meta_analysis(y: np.ndarray, data: ReleaseData, min_per_group: int) -> MetaAnalysis:
    """Per-site OLS t for Dx -> Hedges' g -> random-effects pooling, forest plot, LOSO.

    ``y`` must be the unharmonized outcome (:data:`META_HARMONIZATION_NOTE`); each
    site's model has the design's covariates except those constant at that site.
    """
    design: Design = data.design
    frame = design.data.assign(y=np.asarray(y, dtype=float))
    per_site = site_effects(
        frame, "y", "dx", "site", design.covariates, min_per_group=min_per_group
    )
    return meta_from_sites(per_site, list(design.covariates), data.out)


def meta_from_sites(per_site: pd.DataFrame, covariates: list[str], out: Path) -> MetaAnalysis:
    """Random-effects pooling, forest plot and LOSO of per-site summaries (``site_effects``).

    Used on the sites' own OLS summaries in federated mode too; writes
    ``site_effects.parquet``, ``leave_one_site_out.parquet`` and the forest plot to ``out``.
    """
    used = per_site[per_site["included"].astype(bool)].reset_index(drop=True)
    if len(used) < 2:
        raise AnalysisError(f"the site meta-analysis needs 2 usable sites, got {len(used)}")
    pooled = random_effects(used["yi"].to_numpy(), used["vi"].to_numpy(), method="REML")
    per_site.to_parquet(out / "site_effects.parquet", index=False)
    loso: list[dict] = []
    if len(used) >= 3:
        table = leave_one_out(
            used["yi"].to_numpy(), used["vi"].to_numpy(), labels=used["site"].tolist(),
            method="REML",
        )  # fmt: skip
        table = table.rename(columns={"pvalue": "p"})
        table.to_parquet(out / "leave_one_site_out.parquet", index=False)
        loso = rename_vocabulary(table.to_dict(orient="records"))
    forest_figure(used, pooled, out)
    return MetaAnalysis(
        **{**asdict(pooled_effect(pooled)), "k": len(used)}, outcome_harmonization="none",
        outcome_harmonization_reason=META_HARMONIZATION_NOTE,
        covariates=covariates, notes=_dropped_notes(per_site),
        sites=per_site.to_dict(orient="records"), leave_one_site_out=loso,
    )  # fmt: skip


def _check_dmn(table: pd.DataFrame, atlas: str) -> None:
    if OUTCOME not in table.columns:
        raise AnalysisError(
            f"atlas {atlas!r} has no REST-meta-MDD DMN (no ROI has dmn = 1, so the "
            f"bundles hold no {OUTCOME!r} summary); the DMN analysis needs an "
            "atlas TSV with a dmn column shared by every site, see "
            "docs/site-data-manager/README.md#atlases"
        )


def run(data: ReleaseData, params: AnalysisParams, progress: Steps) -> KindResult:
    """The DMN mixed model (per harmonization) and the site meta-analysis."""
    atlas = params.atlas
    summaries = {}
    for harm in harmonizations(params):
        with progress("mean DMN FC" if harm == "none" else f"{harm} on edges"):
            summaries[harm] = summaries_of(data, atlas, harm, params.ref_site)
            _check_dmn(summaries[harm], atlas)
    models = {}
    for harm, table in summaries.items():
        with progress(f"mixed model ({harm})"):
            models[harm] = fit_dmn(
                data.dataset, table[OUTCOME].to_numpy(), data.design, params.contrast
            )
    rows = [
        {**vars(c), "harmonization": h} for h, m in models.items() for c in m.coefficients
    ]
    for row in rows:
        row.pop("df")
    pd.DataFrame.from_records(rows).to_parquet(data.out / "mixed_model.parquet", index=False)
    with progress("site meta-analysis"):
        meta = meta_analysis(summaries["none"][OUTCOME].to_numpy(), data, params.min_per_group)
    figures = {"forest": {"png": "forest.png", "svg": "forest.svg"}}
    with progress("DMN glass brain"):
        if dmn_rois_figure(atlas_of(data.dataset, atlas), data.out):
            figures["dmn_rois"] = {"png": "dmn_rois.png"}
    section = DmnSection(outcome=OUTCOME, primary=params.harmonize, models=models)
    sections = {"dmn": section, "meta": meta}
    if params.harmonize != "none":
        with progress(f"{params.harmonize} diagnostics"):
            sections["harmonization_diagnostics"] = edge_diagnostics(data, params)
    with progress("covariate sensitivity"):
        sections["sensitivity"] = sensitivity(data, params)
    return KindResult(sections=sections, figures=figures)


def edge_diagnostics(data: ReleaseData, params: AnalysisParams) -> HarmonizationDiagnostics:
    """Site means/variances of the edges before and after the harmonizer, and its estimates."""
    edges = edges_of(data, params.atlas)
    after, model = harmonize_fitted(edges, data.design, params.harmonize, params.ref_site)
    sites = data.design.data["site"].to_numpy()
    return harmonization_diagnostics(edges, after, sites, harmonizer=params.harmonize, model=model)


def sensitivity(data: ReleaseData, params: AnalysisParams) -> CovariateSensitivity:
    """The primary model refitted with all covariates and with each one left out."""

    def fit(covariates: tuple[str, ...]):
        part = ReleaseData(data.dataset, design_with_covariates(data.design, covariates), data.out)
        y = summaries_of(part, params.atlas, params.harmonize, params.ref_site)[OUTCOME]
        fitted = fit_dmn(data.dataset, y.to_numpy(), part.design, params.contrast, interval=False)
        return effect_of_model(fitted)

    return covariate_sensitivity(
        fit, data.design.covariates, outcome="mean DMN FC", harmonizer=params.harmonize
    )
