"""The demo's summary: planted and recovered effect sizes, QC, timings (``summary.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consortium.report.labels import SCHEME_DRAWS

if TYPE_CHECKING:
    from consortium.simulate import ConsortiumSimulator

    from .site_setup import DemoSite

__all__ = ["format_summary"]


def _summarize(
    out: Path,
    sites: list[DemoSite],
    analyses: dict[str, Path],
    sim: ConsortiumSimulator | None,
    timings: dict[str, float],
    wall: float,
    report: Path,
) -> dict[str, Any]:
    first = json.loads((next(iter(analyses.values())) / "results.json").read_text())
    summary: dict[str, Any] = {
        "sites": len(sites),
        "subjects_in_site_files": sum(s.n_subjects for s in sites),
        # federated: QC ran at the sites, which report no subject counts of it
        "qc_excluded": None if "federated" in first["provenance"] else first["qc"]["n_excluded"],
        "qc_by_site_reason": first["qc"]["by_site_reason"],
        "analysed": {
            "n": first["design"]["n"],
            "n_case": first["design"]["n_case"],
            "n_control": first["design"]["n_control"],
            "sites": len(first["design"]["sites"]),
            "sites_excluded": first["design"]["sites_excluded"],
        },
        "timings_s": timings,
        "total_s": round(wall, 1),
        "report": str(report),
        "analyses": {k: str(v) for k, v in analyses.items()},
    }
    if "dmn" in analyses:
        dmn = json.loads((analyses["dmn"] / "results.json").read_text())
        recovered = {}
        for harm, model in dmn["dmn"]["models"].items():
            low, high = model["d_ci"]
            recovered[harm] = {"d": model["d"], "ci": [low, high], "p": model["p"]}
            if sim is not None:
                planted = sim.model.effect_size
                recovered[harm]["planted_within_ci"] = bool(low <= planted <= high)
        summary["dmn"] = recovered
        summary["meta_analysis"] = {k: dmn["meta"][k] for k in ("estimate", "ci", "p", "k")}
    if sim is not None:
        summary["planted_d"] = sim.model.effect_size
        summary["calibration"] = vars(sim.calibration_)
        summary["seed"] = sim.seed
    if "edges" in analyses:
        edges = json.loads((analyses["edges"] / "results.json").read_text())
        summary["edges"] = {
            k: v for k, v in edges.get("edges", {}).items() if isinstance(v, int | float | str)
        }
        summary.update(_corrected(edges))
    if "voxels" in analyses:
        summary.update(_corrected(json.loads((analyses["voxels"] / "results.json").read_text())))
    return summary


def _corrected(doc: dict[str, Any]) -> dict[str, Any]:
    """Permutation-corrected counts of an edges or voxels ``results.json``."""
    out: dict[str, Any] = {}
    perm = doc.get("edges", {}).get("permutation")
    if perm:
        out["edges_fwe"] = {
            "n_permutations": perm["n_permutations"], "seed": perm["seed"],
            "scheme": perm["scheme"],
            "n_fwe": doc["edges"]["n_fwe"], "n_edges": doc["edges"]["n_edges"],
        }  # fmt: skip
    if "nbs" in doc:
        nbs = doc["nbs"]
        out["nbs"] = {
            "threshold": nbs["threshold"], "n_components": nbs["n_components"],
            "n_significant": nbs["n_significant"],
            "components": [
                {k: c[k] for k in ("extent", "intensity", "p_extent", "p_intensity", "sign")}
                for c in nbs["components"][:5]
            ],
        }  # fmt: skip
    if "tfce" in doc:
        tfce = doc["tfce"]
        out["tfce"] = {k: tfce[k] for k in ("n_voxels", "n_fwe", "min_p_fwe")} | {
            "n_permutations": tfce["permutation"]["n_permutations"]
        }
    return out


def _corrected_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    if "edges_fwe" in summary:
        e = summary["edges_fwe"]
        lines.append(
            f"edges, corrected ({e['n_permutations']} {SCHEME_DRAWS[e['scheme']]}): "
            f"{e['n_fwe']} of {e['n_edges']} with p_FWE < 0.05"
        )
    if "nbs" in summary:
        n = summary["nbs"]
        largest = ""
        if n["components"]:
            c = n["components"][0]
            largest = f"; largest: {c['extent']} edges, p_FWE = {c['p_extent']:.3g}"
        lines.append(
            f"NBS (|t| > {n['threshold']:g}): {n['n_components']} components, "
            f"{n['n_significant']} with p_FWE < 0.05{largest}"
        )
    if "tfce" in summary:
        t = summary["tfce"]
        lines.append(
            f"voxels, TFCE ({t['n_permutations']} permutations): {t['n_fwe']} of "
            f"{t['n_voxels']} with p_FWE < 0.05"
        )
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    """A short, human-readable summary of a demo run."""
    a = summary["analysed"]
    lines = [
        *(["mode: federated (the sites sent aggregate statistics only)"]
          if "federated" in summary.get("mode", "") else []),
        f"sites: {summary['sites']} ({a['sites']} analysed); subjects in site files: "
        f"{summary['subjects_in_site_files']}, QC exclusions: "
        f"{'at the sites' if summary['qc_excluded'] is None else summary['qc_excluded']}, "
        f"analysed: {a['n']} ({a['n_case']} cases, {a['n_control']} controls)",
    ]
    if summary.get("sites_without_bundle"):
        lines.append(
            "sites with no subject passing QC (nothing submitted): "
            + ", ".join(summary["sites_without_bundle"])
        )
    if "dmn" in summary:
        planted = summary.get("planted_d")
        if planted is not None:
            lines.append(f"planted effect on mean DMN FC: d = {planted:+.3f}")
        for harm, r in summary["dmn"].items():
            verdict = ""
            if "planted_within_ci" in r:
                verdict = (
                    "  planted value inside CI"
                    if r["planted_within_ci"]
                    else "  planted value OUTSIDE CI"
                )
            lines.append(
                f"recovered (mixed model, {'ComBat' if harm == 'combat' else 'no ComBat'}"
                f"): d = {r['d']:+.3f}  95% CI [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"
                f"  p = {r['p']:.2g}{verdict}"
            )
        m = summary["meta_analysis"]
        lines.append(
            f"site meta-analysis (k = {m['k']}): g = {m['estimate']:+.3f}  "
            f"95% CI [{m['ci'][0]:+.3f}, {m['ci'][1]:+.3f}]"
        )
    lines.extend(_corrected_lines(summary))
    lines.append(
        "time per stage: "
        + ", ".join(f"{name} {secs:.1f} s" for name, secs in summary["timings_s"].items())
    )
    lines.append(f"total: {summary['total_s']:.1f} s")
    lines.append(f"report: {summary['report']}")
    return "\n".join(lines)
