"""``networks``: the mixed model on every within- and between-network mean FC.

Fitted on the submitted network means and (unless ``harmonize="none"``) on the
means recomputed from harmonized edges; BH-FDR across the network pairs.
"""

from __future__ import annotations

import pandas as pd

from consortium.analysis.data import ReleaseData, summaries_of
from consortium.analysis.design import Design
from consortium.analysis.figures import network_matrix_figure
from consortium.analysis.fitting import fdr, mass_fit
from consortium.analysis.kinds.dmn import edge_diagnostics, harmonizations
from consortium.analysis.params import FDR_ALPHA, AnalysisParams
from consortium.analysis.progress import Steps
from consortium.analysis.results import KindResult, NetworksSection

__all__ = ["label_pairs", "network_table", "run"]


def network_table(summaries: pd.DataFrame, design: Design, random_slope: bool) -> pd.DataFrame:
    """The model of every network-pair column (``a__b``) of ``summaries``, with FDR q."""
    pairs = summaries[[c for c in summaries.columns if "__" in c]]
    return label_pairs(mass_fit(pairs.to_numpy(), design, random_slope), list(pairs.columns))


def label_pairs(fit: pd.DataFrame, pairs: list[str]) -> pd.DataFrame:
    """``fit`` (one row per pair) with ``pair``, ``net_a``, ``net_b`` and BH-FDR ``q``.

    Shared with the federated networks analysis.
    """
    names = pd.Series(pairs).str.split("__", n=1, expand=True)
    fit.insert(0, "net_b", names[1].to_numpy())
    fit.insert(0, "net_a", names[0].to_numpy())
    fit.insert(0, "pair", list(pairs))
    fit["q"] = fdr(fit["p"].to_numpy())
    return fit


def run(data: ReleaseData, params: AnalysisParams, progress: Steps) -> KindResult:
    """Network-pair effects per harmonization, the table and the matrix figure."""
    tables = []
    for harm in harmonizations(params):
        with progress(f"network means ({harm})"):
            summaries = summaries_of(data, params.atlas, harm, params.ref_site)
        with progress(f"mass mixed model ({harm})"):
            table = network_table(summaries, data.design, params.random_slope)
            tables.append(table.assign(harmonization=harm))
    table = pd.concat(tables, ignore_index=True)
    table.to_parquet(data.out / "network_effects.parquet", index=False)
    primary = table[table["harmonization"] == params.harmonize]
    with progress("network matrix figure"):
        title = f"Network effects: d ({params.harmonize})"
        network_matrix_figure(primary, "d", title, data.out, "network_matrix")
    section = NetworksSection(
        primary=params.harmonize,
        n_pairs=int(len(primary)),
        n_fdr=int((primary["q"] < FDR_ALPHA).sum()),
        effects=table.to_dict(orient="records"),
    )
    figures = {"network_matrix": {"png": "network_matrix.png", "svg": "network_matrix.svg"}}
    sections = {"networks": section}
    if params.harmonize != "none":
        with progress(f"{params.harmonize} diagnostics"):
            sections["harmonization_diagnostics"] = edge_diagnostics(data, params)
    return KindResult(sections=sections, figures=figures)
