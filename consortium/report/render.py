"""Render analysis results directories as one self-contained HTML page.

Every figure is embedded as a base64 ``data:`` URI and the style sheet is
inline, so the page makes no external request and can be mailed or archived
as a single file. Sections have stable ``id`` attributes (see
:data:`SECTION_IDS`); a section whose analysis is not among the inputs says so
instead of disappearing, so links and automated checks keep working.

A directory holding a ``prediction.json`` (written by
``consortium.analysis.prediction``) adds the optional ``prediction`` section;
it is rendered generically (scalars, tables of records, embedded figures), so
new keys appear without changes here.
"""

from __future__ import annotations

import base64
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

__all__ = ["ReportError", "SECTION_IDS", "load_analysis", "render_report"]

SECTION_IDS = (
    "summary",
    "sample",
    "qc-exclusions",
    "mixed-model",
    "forest-plot",
    "network-matrix",
    "glass-brain",
    "voxel-map",
    "prediction",
    "provenance",
)
PREDICTION_FILE = "prediction.json"
RESULTS_FILE = "results.json"


class ReportError(ValueError):
    """An input directory cannot be rendered; the message names the file."""


@dataclass
class Analysis:
    """One results directory: its parsed JSON and figures as data URIs."""

    path: Path
    kind: str
    results: dict[str, Any]
    images: dict[str, str] = field(default_factory=dict)


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
    if value is None:
        return "–"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


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
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True)
    env.tests["mapping"] = lambda v: isinstance(v, dict)
    env.tests["records"] = lambda v: (
        isinstance(v, list) and len(v) > 0 and all(isinstance(r, dict) for r in v)
    )
    return env


def _pick(analyses: list[Analysis], kind: str) -> Analysis | None:
    for analysis in analyses:
        if analysis.kind == kind:
            return analysis
    return None


def _context(analyses: list[Analysis], title: str) -> dict[str, Any]:
    stats = [a for a in analyses if a.kind != "prediction"]
    # Sample and QC tables: from the DMN analysis if present (it is the main one).
    main = _pick(stats, "dmn") or (stats[0] if stats else None)
    return {
        "title": title,
        "main": main,
        "dmn": _pick(stats, "dmn"),
        "networks": _pick(stats, "networks"),
        "edges": _pick(stats, "edges"),
        "voxels": _pick(stats, "voxels"),
        "predictions": [a for a in analyses if a.kind == "prediction"],
        "analyses": stats,
        "section_ids": SECTION_IDS,
    }


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
    html = _environment().get_template("report.html.j2").render(**_context(analyses, title))
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
