"""Sections shared by every report: summary, sample, QC, harmonization
diagnostics, covariate sensitivity, prediction and provenance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from consortium.analysis.diagnostics import HarmonizationDiagnostics
from consortium.analysis.sensitivity import CovariateSensitivity
from consortium.report import labels
from consortium.report.figures import location_scale_png
from consortium.report.kinds import term_words
from consortium.report.sections import Analysis, Section

__all__ = ["federated_note", "head_sections", "qc_by_site_code", "tail_sections"]


def qc_by_site_code(by_site_reason: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """QC exclusions counted by site and reason code (fields listed, counts summed).

    ``by_site_reason`` has one record per site, code and field with ``n`` the
    subjects having that reason; a subject excluded for one code on two fields
    counts once per field.
    """
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for row in by_site_reason:
        key = (str(row["site"]), str(row["code"]))
        entry = merged.setdefault(
            key, {"site": key[0], "code": key[1], "meaning": row.get("meaning", ""),
                  "fields": [], "n": 0},
        )  # fmt: skip
        if row.get("field") and row["field"] not in entry["fields"]:
            entry["fields"].append(str(row["field"]))
        entry["n"] += int(row["n"])
    rows = [dict(v, fields=", ".join(v["fields"])) for v in merged.values()]
    return sorted(rows, key=lambda r: (r["site"], r["code"]))


def federated_note(results: dict[str, Any]) -> str | None:
    """The line marking a federated run (``provenance.federated``), or None if pooled.

    Names the sites whose statistics were combined and those that refused a round or
    did not answer in time.
    """
    rounds = (results.get("provenance") or {}).get("federated")
    if not rounds:
        return None
    used = set(results.get("design", {}).get("sites") or [])
    refused = sorted({s for r in rounds for s in r.get("refused", {})} - used)
    silent = sorted({s for r in rounds for s in r.get("missing", [])} - used - set(refused))
    return (
        "Federated run: subject-level data stayed at the sites; combined from per-site "
        f"statistics of {len(used)} sites (refused: {', '.join(refused) or 'none'}; "
        f"silent: {', '.join(silent) or 'none'})."
    )


def head_sections(main: Analysis | None, analyses: Sequence[Analysis],
                  predictions: Sequence[Analysis], absent: Sequence[str]) -> list[Section]:
    """Summary, and (from the main analysis) sample and QC."""
    dmn = next((a for a in analyses if a.kind == "dmn"), None)
    sections = [
        Section("summary", "Summary", "Summary", template="sections/summary.html.j2",
                context={"main": main, "dmn": dmn, "analyses": analyses,
                         "predictions": predictions, "absent": absent,
                         "edges": next((a for a in analyses if a.kind == "edges"), None),
                         "voxels": next((a for a in analyses if a.kind == "voxels"), None),
                         "federated": [(a.kind, federated_note(a.results)) for a in analyses
                                       if federated_note(a.results)],
                         "harmonization": labels.harmonization_text}),
    ]  # fmt: skip
    if main is None:
        return sections
    qc = main.results["qc"]
    sections += [
        Section("sample", "Sample", "Sample by site and group", template="sections/sample.html.j2",
                context={"main": main}),
        Section("qc-exclusions", "QC", "Quality-control exclusions",
                template="sections/qc.html.j2",
                context={"main": main, "qc": qc, "by_code": qc_by_site_code(qc["by_site_reason"]),
                         "labels": labels}),
    ]  # fmt: skip
    return sections


def _diagnostics(analyses: Sequence[Analysis]) -> list[dict[str, Any]]:
    """Distinct harmonization diagnostics (dmn, networks and edges share their edges')."""
    found: list[dict[str, Any]] = []
    for analysis in analyses:
        record = analysis.results.get("harmonization_diagnostics")
        if not record or analysis.harmonizer in (None, "none"):
            continue
        for item in found:
            if item["record"] == record:
                item["kinds"].append(analysis.kind)
                break
        else:
            found.append({"record": record, "kinds": [analysis.kind]})
    for item in found:
        diag = HarmonizationDiagnostics.from_dict(item["record"])
        text = labels.harmonization_text(diag.harmonizer)
        item.update(diag=diag, harmonization=text, plot=location_scale_png(diag, text),
                    rows=[vars(s) for s in diag.sites])
    return found


def _sensitivity(analyses: Sequence[Analysis]) -> list[dict[str, Any]]:
    tables = []
    for analysis in analyses:
        record = analysis.results.get("sensitivity")
        if not record:
            continue
        table = CovariateSensitivity.from_dict(record)
        mass = any(r.effect is not None and r.effect.n_significant is not None
                   for r in table.rows)
        tables.append({"analysis": analysis, "table": table, "mass": mass,
                       "harmonization": labels.harmonization_text(table.harmonizer)})
    return tables


def tail_sections(analyses: Sequence[Analysis], predictions: Sequence[Analysis]) -> list[Section]:
    """Diagnostics and sensitivity (when present), prediction, provenance."""
    sections = []
    diagnostics = _diagnostics(analyses)
    if diagnostics:
        sections.append(Section("combat-diagnostics", "Harmonization", "Harmonization diagnostics",
                                template="sections/diagnostics.html.j2",
                                context={"items": diagnostics, "labels": labels}))
    sensitivity = _sensitivity(analyses)
    if sensitivity:
        sections.append(Section("sensitivity", "Sensitivity", "Sensitivity to the covariates",
                                template="sections/sensitivity.html.j2",
                                context={"tables": sensitivity, "term_words": term_words}))
    if predictions:
        sections.append(Section("prediction", "Prediction", "Site-aware prediction",
                                template="sections/prediction.html.j2",
                                context={"predictions": predictions}))
    sections.append(Section("provenance", "Provenance", "Provenance",
                            template="sections/provenance.html.j2",
                            context={"analyses": analyses, "predictions": predictions}))
    return sections
