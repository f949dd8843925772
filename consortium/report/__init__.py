"""One self-contained HTML page from the results directories of ``confed analyze``."""

from consortium.report.render import ReportError, load_analysis, render_report

__all__ = ["ReportError", "load_analysis", "render_report"]
