"""``edges``: the mass-univariate model over every edge.

t and d matrices, Benjamini-Hochberg FDR, network-block summaries and the
strongest edges. With ``permutations``: Freedman-Lane permutations or whole-site
sign flips (:mod:`consortium.analysis.inference`) give every edge's FWE p by max-|t|
(``p_fwe``), the blocks' mean t corrected over blocks (``p_fwe`` of
``network_blocks.parquet``) and, with ``nbs_threshold``, the NBS components
(section ``nbs``, ``nbs_components.parquet`` and the ``nbs_components`` figure).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from consortium.analysis.data import (
    ReleaseData,
    atlas_of,
    edges_of,
    harmonize,
    harmonize_fitted,
)
from consortium.analysis.diagnostics import harmonization_diagnostics
from consortium.analysis.effects import edges_to_matrix
from consortium.analysis.errors import AnalysisError
from consortium.analysis.figures import (
    dmn_rois_figure,
    nbs_figure,
    network_matrix_figure,
    strongest_edges,
    strongest_edges_figure,
)
from consortium.analysis.fitting import fdr, mass_fit, mass_model, mass_table
from consortium.analysis.inference import (
    FWE_ALPHA,
    EdgeInference,
    edge_inference,
    model_options,
    nbs_section,
    permutation_summary,
)
from consortium.analysis.params import FDR_ALPHA, AnalysisParams
from consortium.analysis.progress import Steps
from consortium.analysis.results import EdgesSection, KindResult
from consortium.analysis.sensitivity import (
    CovariateSensitivity,
    MainEffect,
    covariate_sensitivity,
    design_with_covariates,
)
from sites.connectivity import network_pairs

__all__ = ["block_summary", "run"]


def _edge_matrix(values: np.ndarray, labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame(edges_to_matrix(values), index=pd.Index(labels, name="roi"), columns=labels)


def block_summary(
    fit: pd.DataFrame, atlas: Any, inference: EdgeInference | None = None
) -> pd.DataFrame:
    """Mean edge effect within and between networks (a network-block summary).

    With ``inference``, ``p_fwe`` of each block's mean t, corrected over blocks.
    """
    records = []
    for k, (name, index) in enumerate(network_pairs(atlas).items()):
        net_a, net_b = name.split("__", 1)
        block = fit.iloc[index]
        records.append(
            {
                "pair": name,
                "net_a": net_a,
                "net_b": net_b,
                "n_edges": len(index),
                "mean_t": float(block["t"].mean()),
                "mean_d": float(block["d"].mean()),
                "n_fdr": int((block["q"] < FDR_ALPHA).sum()),
                "q": float(block["q"].min()),
                **({} if inference is None else {"p_fwe": float(inference.block_p_fwe[k])}),
            }
        )
    return pd.DataFrame.from_records(records)


def _fit(
    Y: np.ndarray, params: AnalysisParams, data: ReleaseData, atlas: Any, progress: Steps
) -> tuple[pd.DataFrame, EdgeInference | None]:
    with progress(f"mass mixed model ({Y.shape[1]} edges)") as advance:
        model = mass_model(Y, data.design, params.random_slope, progress=advance)
        fit = mass_table(model, data.design.n_case, data.design.n_control)
        fit["q"] = fdr(fit["p"].to_numpy())
    if params.permutations == 0:
        return fit, None
    options = model_options(
        data.design, params.random_slope, params.permutations, params.seed,
        params.tail_approximation,
    )  # fmt: skip
    blocks = list(network_pairs(atlas).values())
    with progress(f"{params.permutations} Freedman-Lane permutations") as advance:
        inference = edge_inference(
            Y, options, blocks, params.nbs_threshold, fit=model, client=data.client,
            progress=advance,
        )  # fmt: skip
    fit["p_fwe"] = inference.permutation.p_fwe
    if inference.permutation.p_fwe_tail is not None:
        fit["p_fwe_tail"] = inference.permutation.p_fwe_tail
    return fit, inference


def _label(fit: pd.DataFrame, atlas: Any) -> pd.DataFrame:
    rows, cols = np.triu_indices(atlas.n_rois, k=1)
    nets = np.asarray(atlas.networks)
    fit.insert(0, "network_b", nets[cols])
    fit.insert(0, "network_a", nets[rows])
    fit.insert(0, "roi_b", np.asarray(atlas.labels)[cols])
    fit.insert(0, "roi_a", np.asarray(atlas.labels)[rows])
    fit.insert(0, "edge", np.arange(len(fit)))
    return fit


def _figures(blocks: pd.DataFrame, atlas: Any, t: np.ndarray, out: Any) -> dict:
    figures = {}
    if len(blocks) > 1:
        table = blocks.rename(columns={"mean_d": "d"})
        network_matrix_figure(table, "d", "Mean edge d per network block", out, "edge_blocks")
        figures["edge_blocks"] = {"png": "edge_blocks.png", "svg": "edge_blocks.svg"}
    if strongest_edges_figure(atlas, t, out):
        figures["strongest_edges"] = {"png": "strongest_edges.png"}
    if dmn_rois_figure(atlas, out):
        figures["dmn_rois"] = {"png": "dmn_rois.png"}
    return figures


def run(data: ReleaseData, params: AnalysisParams, progress: Steps) -> KindResult:
    """Edge-wise effects, matrices, blocks and figures."""
    atlas = atlas_of(data.dataset, params.atlas)
    with progress("connectivity"):
        Y = edges_of(data, params.atlas)
        if Y.shape[1] != atlas.n_edges:
            raise AnalysisError(
                f"connectivity has {Y.shape[1]} edges but atlas {params.atlas!r} "
                f"has {atlas.n_edges}"
            )
    before, sections = Y, {}
    if params.harmonize != "none":
        with progress(f"{params.harmonize} on edges"):
            Y, model = harmonize_fitted(Y, data.design, params.harmonize, params.ref_site)
            sites = data.design.data["site"].to_numpy()
            sections["harmonization_diagnostics"] = harmonization_diagnostics(
                before, Y, sites, harmonizer=params.harmonize, model=model
            )
    fit, inference = _fit(Y, params, data, atlas, progress)
    fit = _label(fit, atlas)
    out = data.out
    fit.to_parquet(out / "edge_effects.parquet", index=False)
    _edge_matrix(fit["t"].to_numpy(), atlas.labels).to_parquet(out / "edge_t_matrix.parquet")
    _edge_matrix(fit["d"].to_numpy(), atlas.labels).to_parquet(out / "edge_d_matrix.parquet")
    with progress("network blocks and figures"):
        blocks = block_summary(fit, atlas, inference)
        blocks.to_parquet(out / "network_blocks.parquet", index=False)
        figures = _figures(blocks, atlas, fit["t"].to_numpy(), out)
    section = EdgesSection(
        n_edges=int(len(fit)),
        n_fdr=int((fit["q"] < FDR_ALPHA).sum()),
        max_abs_t=float(np.abs(fit["t"]).max()),
        strongest=_with_d_and_q(strongest_edges(atlas, fit["t"].to_numpy()), fit),
        blocks=blocks.to_dict(orient="records"),
        n_fwe=int((fit["p_fwe"] < FWE_ALPHA).sum()) if "p_fwe" in fit else None,
        permutation=permutation_summary(inference.permutation) if inference else None,
    )
    sections = {"edges": section, **sections}
    if inference is not None and inference.nbs is not None:
        sections["nbs"], table = nbs_section(inference.nbs, atlas)
        table.to_parquet(out / "nbs_components.parquet", index=False)
        if nbs_figure(atlas, table, inference.nbs.threshold, out):
            figures["nbs_components"] = {"png": "nbs_components.png"}
    with progress("covariate sensitivity"):
        sections["sensitivity"] = sensitivity(before, fit, data, params)
    return KindResult(sections=sections, figures=figures)


def _with_d_and_q(records: list[dict[str, Any]], fit: pd.DataFrame) -> list[dict[str, Any]]:
    """The strongest-edge records with each edge's d and FDR q beside its t."""
    d, q = fit["d"].to_numpy(), fit["q"].to_numpy()
    return [{**r, "d": float(d[r["edge"]]), "q": float(q[r["edge"]])} for r in records]


def sensitivity(
    before: np.ndarray, fit: pd.DataFrame, data: ReleaseData, params: AnalysisParams
) -> CovariateSensitivity:
    """FDR edge count refitted with each covariate left out (harmonizer refitted too).

    The all-covariates row is the main fit itself (``fit``), not a refit.
    """

    def refit(covariates: tuple[str, ...]) -> MainEffect:
        design = design_with_covariates(data.design, covariates)
        Y = before
        if params.harmonize != "none":
            Y = harmonize(before, design, params.harmonize, params.ref_site)
        table = mass_fit(Y, design, params.random_slope)
        return MainEffect.from_mass(table["t"], table["d"], fdr(table["p"].to_numpy()), FDR_ALPHA)

    main = MainEffect.from_mass(fit["t"], fit["d"], fit["q"], FDR_ALPHA)
    return covariate_sensitivity(
        refit, data.design.covariates, outcome="edges", harmonizer=params.harmonize, main=main
    )
