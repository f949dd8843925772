"""Render analysis results directories as one self-contained HTML page.

Every figure is embedded as a base64 ``data:`` URI and the style sheet is
inline, so the page makes no external request and can be mailed or archived
as a single file. Every template is rendered with autoescaping.

The page holds only the sections of what ran (:mod:`consortium.report.sections`):
the summary, sample and QC of the main analysis, one or more sections per
analysis found through its kind's ``report_section`` hook, the harmonization
diagnostics and covariate sensitivity when the analyses carry them, a
prediction section for a directory holding a ``prediction.json`` (rendered
generically, so new keys appear without changes here) and the provenance. The
navigation lists exactly these sections; anchors of the built-in sections are
stable (:data:`SECTION_IDS`).
"""

from __future__ import annotations

import base64
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from consortium.report import labels
from consortium.report.sections import Analysis, Section, hook_for

__all__ = [
    "Analysis",
    "ReportError",
    "SECTION_IDS",
    "load_analysis",
    "render_html",
    "render_report",
]

#: Anchors of the built-in sections, in page order, with what produces each. A
#: report shows (and lists in its navigation) those that ran; the others keep
#: their anchor in a short "not in this report" list at the end, so links work.
BUILTIN_SECTIONS = {
    "summary": ("Summary", "always"),
    "sample": ("Sample by site and group", "any analysis"),
    "qc-exclusions": ("Quality-control exclusions", "any analysis"),
    "mixed-model": ("Mean DMN connectivity: mixed model", "confed analyze dmn"),
    "forest-plot": ("Site by site: meta-analysis and forest plot", "confed analyze dmn"),
    "network-matrix": ("Network-by-network effects", "confed analyze networks"),
    "glass-brain": ("Edge by edge: the strongest edges", "confed analyze edges"),
    "voxel-map": ("Voxel by voxel", "confed analyze voxels"),
    "combat-diagnostics": ("Harmonization diagnostics", "an analysis with --harmonize other "
                           "than none"),
    "sensitivity": ("Sensitivity to the covariates", "confed analyze dmn or edges"),
    "prediction": ("Site-aware prediction", "a prediction.json (confed predict)"),
    "provenance": ("Provenance", "always"),
}
SECTION_IDS = tuple(BUILTIN_SECTIONS)
PREDICTION_FILE = "prediction.json"
RESULTS_FILE = "results.json"


class ReportError(ValueError):
    """An input directory cannot be rendered; the message names the file."""


def _data_uri(path: Path) -> str:
    if not path.is_file():
        raise ReportError(f"{path}: figure listed in the results is missing")
    mime = {
        ".png": "image/png",
        ".svg": "image/svg+xml",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
    }.get(path.suffix.lower())
    if mime is None:
        raise ReportError(f"{path}: unsupported figure type {path.suffix!r}")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return document


def _safe_child(directory: Path, name: str) -> Path:
    """A file named in a results document, which must stay inside its directory."""
    candidate = (directory / name).resolve()
    if directory.resolve() not in candidate.parents:
        raise ReportError(f"{directory / name}: figure path leaves the results directory")
    return candidate


def load_analysis(directory: str | Path) -> list[Analysis]:
    """Parse one results directory (``results.json`` and/or ``prediction.json``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ReportError(f"{directory}: not a directory")
    found = []
    results_path = directory / RESULTS_FILE
    if results_path.is_file():
        results = _read_json(results_path)
        kind = results.get("kind")
        if not isinstance(kind, str) or "provenance" not in results:
            raise ReportError(f"{results_path}: not a confed analysis (no kind or provenance)")
        images = {}
        for name, files in (results.get("figures") or {}).items():
            if "png" in files:
                images[name] = _data_uri(_safe_child(directory, files["png"]))
        found.append(Analysis(directory, kind, results, images))
    prediction_path = directory / PREDICTION_FILE
    if prediction_path.is_file():
        prediction = _read_json(prediction_path)
        images = {}
        for key, value in _figure_refs(prediction):
            images[key] = _data_uri(_safe_child(directory, value))
        found.append(Analysis(directory, "prediction", prediction, images))
    if not found:
        raise ReportError(f"{directory}: no {RESULTS_FILE} or {PREDICTION_FILE} in it")
    return found


def _figure_refs(document: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(key path, relative file) for every string value that names a PNG/SVG file."""
    refs = []
    if isinstance(document, dict):
        for key, value in document.items():
            refs += _figure_refs(value, f"{prefix}{key}.")
    elif isinstance(document, list):
        for i, value in enumerate(document):
            refs += _figure_refs(value, f"{prefix}{i}.")
    elif isinstance(document, str) and document.lower().endswith((".png", ".svg")):
        refs.append((prefix.rstrip("."), document))
    return refs


def _fmt(value: Any, digits: int = 3) -> str:
    """Numbers for tables: fixed decimals, scientific for small p values, '-' for none."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_p(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


def _cell(value: Any, column: Any) -> str:
    """A table cell formatted as its :class:`~consortium.report.labels.Column` says."""
    if column.format == "p":
        return _fmt_p(value) if isinstance(value, int | float) else _fmt(value)
    if column.format == "int" and isinstance(value, float) and value.is_integer():
        return str(int(value))
    if column.format == "text":
        return _fmt(value)
    return _fmt(value, column.digits)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("consortium.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["fmt_p"] = _fmt_p
    env.filters["cell"] = _cell
    env.filters["scheme_text"] = labels.scheme_text
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True)
    env.tests["mapping"] = lambda v: isinstance(v, dict)
    env.tests["records"] = lambda v: (
        isinstance(v, list) and len(v) > 0 and all(isinstance(r, dict) for r in v)
    )
    return env


def _known_kinds() -> tuple[str, ...]:
    """Registered analysis kinds (the built-in four if the registry is not importable)."""
    try:
        from consortium.analysis.registry import kind_names
    except ImportError:
        return ("dmn", "networks", "edges", "voxels")
    return tuple(kind_names())


def _sections(analyses: list[Analysis]) -> list[Section]:
    """Every section of the page, in order: only what ran."""
    from consortium.report.common import head_sections, tail_sections

    stats = [a for a in analyses if a.kind != "prediction"]
    predictions = [a for a in analyses if a.kind == "prediction"]
    # Sample and QC from the DMN analysis if present (it is the main one).
    main = next((a for a in stats if a.kind == "dmn"), stats[0] if stats else None)
    ran = {a.kind for a in stats}
    absent = [k for k in _known_kinds() if k not in ran]
    sections = head_sections(main, stats, predictions, absent)
    for analysis in stats:
        sections += list(hook_for(analysis.kind)(analysis))
    return sections + tail_sections(stats, predictions)


def _unique_ids(sections: list[Section]) -> list[Section]:
    seen: dict[str, int] = {}
    out = []
    for section in sections:
        count = seen.get(section.id, 0) + 1
        seen[section.id] = count
        if count > 1:
            section = Section(f"{section.id}-{count}", section.nav, section.title,
                              section.template, section.source, section.context)
        out.append(section)
    return out


def _render_section(env: jinja2.Environment, section: Section) -> markupsafe.Markup:
    template = (
        env.get_template(section.template)
        if section.template is not None
        else env.from_string(section.source or "")
    )
    try:
        return markupsafe.Markup(template.render(**section.context))
    except (jinja2.TemplateError, KeyError, TypeError, AttributeError) as exc:
        raise ReportError(f"section {section.id!r}: cannot render ({exc})") from exc


def render_html(analyses: list[Analysis], title: str) -> str:
    """The page for loaded analyses (see :func:`render_report`)."""
    env = _environment()
    sections = _unique_ids(_sections(analyses))
    bodies = [(s, _render_section(env, s)) for s in sections]
    main = next((a for a in analyses if a.kind == "dmn"), None) or next(
        (a for a in analyses if a.kind != "prediction"), None
    )
    return env.get_template("report.html.j2").render(title=title, main=main, sections=bodies)


def render_report(
    analysis_dirs: Sequence[str | Path] | str | Path,
    output_html: str | Path,
    title: str = "Consortium analysis report",
) -> Path:
    """Render results directories as one self-contained HTML file.

    Parameters
    ----------
    analysis_dirs : path or sequence of paths
        Directories written by :func:`consortium.analysis.pipeline.run_analysis`
        (any kinds) and/or holding a ``prediction.json``.
    output_html : path
        File to write; written to a temporary sibling and renamed into place.
    title : str
        Page title.

    Returns
    -------
    Path
        ``output_html``.
    """
    if isinstance(analysis_dirs, str | Path):
        analysis_dirs = [analysis_dirs]
    if not analysis_dirs:
        raise ReportError("no analysis directory given")
    analyses: list[Analysis] = []
    for directory in analysis_dirs:
        analyses += load_analysis(directory)
    html = render_html(analyses, title)
    output_html = Path(output_html)
    output_html.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output_html.name}.", dir=output_html.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(html)
        os.replace(tmp, output_html)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return output_html
