"""Report sections of the built-in analysis kinds (their ``report_section`` hooks).

Each function takes one loaded :class:`~consortium.report.sections.Analysis`
and returns its sections; the templates live in ``templates/sections/``.
"""

from __future__ import annotations

from consortium.report import labels
from consortium.report.sections import Analysis, Section

__all__ = [
    "dmn_sections",
    "edges_sections",
    "nbs_rows",
    "networks_sections",
    "voxels_sections",
]

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
N_NBS_COMPONENTS = 10  # components listed in the NBS table
N_NBS_EDGES = 30  # edges of the first component listed


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


def nbs_rows(nbs: dict) -> list[dict]:
    """One plain-language row per NBS component (the first :data:`N_NBS_COMPONENTS`)."""
    rows = []
    for comp in nbs["components"][:N_NBS_COMPONENTS]:
        networks = sorted({e[k] for e in comp["edges"] for k in ("network_a", "network_b")})
        rows.append({
            **comp,
            "component": comp["component"] + 1,
            "direction": {1: "stronger in cases", -1: "weaker in cases"}.get(
                comp["sign"], "mixed"),
            "n_nodes": len(comp["nodes"]),
            "networks": ", ".join(networks),
        })  # fmt: skip
    return rows


def _nbs_section(analysis: Analysis) -> Section:
    nbs = analysis.results["nbs"]
    first = nbs["components"][0]["edges"] if nbs["components"] else []
    first = sorted(first, key=lambda e: -abs(e["t"]))[:N_NBS_EDGES]
    return Section(
        "nbs",
        "NBS",
        "Network-based statistic: connected sets of edges",
        template="sections/nbs.html.j2",
        context={
            "analysis": analysis,
            "nbs": nbs,
            "rows": nbs_rows(nbs),
            "first_edges": first,
            "labels": labels,
            "harmonization": labels.harmonization_text(analysis.harmonizer),
        },
    )


def edges_sections(analysis: Analysis) -> list[Section]:
    """Edge-wise effects: strongest edges by ROI label and network, network blocks, NBS."""
    edges = analysis.results["edges"]
    nbs = [_nbs_section(analysis)] if "nbs" in analysis.results else []
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
        ),
        *nbs,
    ]


def voxels_sections(analysis: Analysis) -> list[Section]:
    """The voxel-wise map and, when it ran, the TFCE-corrected map."""
    harmonization = labels.harmonization_text(analysis.harmonizer)
    tfce = []
    if "tfce" in analysis.results:
        tfce = [
            Section(
                "tfce",
                "TFCE",
                "Voxel by voxel, corrected: threshold-free cluster enhancement",
                template="sections/tfce.html.j2",
                context={
                    "analysis": analysis,
                    "tfce": analysis.results["tfce"],
                    "harmonization": harmonization,
                },
            )
        ]
    return [
        Section(
            "voxel-map",
            "Voxels",
            "Voxel by voxel",
            template="sections/voxels.html.j2",
            context={
                "analysis": analysis,
                "v": analysis.results["voxels"],
                "harmonization": harmonization,
            },
        ),
        *tfce,
    ]

