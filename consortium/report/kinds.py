"""Report sections of the built-in analysis kinds (their ``report_section`` hooks).

Each function takes one loaded :class:`~consortium.report.sections.Analysis`
and returns its sections; the templates live in ``templates/sections/``.
"""

from __future__ import annotations

from consortium.report import labels
from consortium.report.sections import Analysis, Section

__all__ = ["dmn_sections", "edges_sections", "networks_sections", "voxels_sections"]

#: Model terms in words (the design's column names are the keys).
TERM_WORDS = {
    "Intercept": "intercept",
    "dx": "diagnosis",
    "age": "age",
    "sex": "sex",
    "education_years": "education (years)",
    "mean_fd": "head motion (mean FD)",
}
N_NETWORK_ROWS = 10


def term_words(term: str) -> str:
    """A model term in words (unknown terms as they are)."""
    return TERM_WORDS.get(term, term)


def dmn_sections(analysis: Analysis) -> list[Section]:
    """Mixed model of mean DMN FC, and the site-level meta-analysis."""
    from consortium.analysis.results import rename_vocabulary

    results = analysis.results
    meta = dict(results["meta"])
    meta["leave_one_site_out"] = rename_vocabulary(list(meta.get("leave_one_site_out") or []))
    models = results["dmn"]["models"]
    common = {"analysis": analysis, "groups": results["groups"], "labels": labels}
    return [
        Section(
            "mixed-model",
            "Mixed model",
            "Mean DMN connectivity: mixed model",
            template="sections/mixed_model.html.j2",
            context={
                **common,
                "models": models,
                "headers": {h: labels.harmonization_text(h) for h in models},
                "primary": results["dmn"]["primary"],
                "term_words": term_words,
                "design": results["design"],
            },
        ),
        Section(
            "forest-plot",
            "Site by site",
            "Site by site: meta-analysis and forest plot",
            template="sections/forest.html.j2",
            context={
                **common,
                "meta": meta,
                "harmonization": labels.harmonization_text(meta.get("outcome_harmonization")),
                "primary": results["dmn"]["primary"],
                "primary_short": labels.SHORT_NAMES.get(
                    results["dmn"]["primary"], results["dmn"]["primary"]
                ),
            },
        ),
    ]


def networks_sections(analysis: Analysis) -> list[Section]:
    """Network-by-network effects: the matrix and the strongest pairs."""
    networks = analysis.results["networks"]
    primary = networks["primary"]
    effects = [r for r in networks["effects"] if r.get("harmonization", primary) == primary]
    effects.sort(key=lambda r: -abs(r["t"]) if r.get("t") is not None else 0.0)
    return [
        Section(
            "network-matrix",
            "Networks",
            "Network-by-network effects",
            template="sections/networks.html.j2",
            context={
                "analysis": analysis,
                "networks": networks,
                "top": effects[:N_NETWORK_ROWS],
                "labels": labels,
                "harmonization": labels.harmonization_text(primary),
            },
        )
    ]


def edges_sections(analysis: Analysis) -> list[Section]:
    """Edge-wise effects: strongest edges by ROI label and network, and network blocks."""
    edges = analysis.results["edges"]
    return [
        Section(
            "glass-brain",
            "Edges",
            "Edge by edge: the strongest edges",
            template="sections/edges.html.j2",
            context={
                "analysis": analysis,
                "edges": edges,
                "alpha": analysis.parameters.get("fdr_alpha", 0.05),
                "labels": labels,
                "harmonization": labels.harmonization_text(analysis.harmonizer),
            },
        )
    ]


def voxels_sections(analysis: Analysis) -> list[Section]:
    """The voxel-wise map."""
    return [
        Section(
            "voxel-map",
            "Voxels",
            "Voxel by voxel",
            template="sections/voxels.html.j2",
            context={
                "analysis": analysis,
                "v": analysis.results["voxels"],
                "harmonization": labels.harmonization_text(analysis.harmonizer),
            },
        )
    ]

