"""Figures the report draws itself from ``results.json`` (embedded as data URIs).

Only summaries small enough for ``results.json`` are drawn here: the per-site
location/scale box plot of the harmonization diagnostics is built from the
stored box statistics (:class:`consortium.analysis.diagnostics.BoxStats`),
never from the features.
"""

from __future__ import annotations

import base64
import io

from consortium.analysis.diagnostics import BoxStats, HarmonizationDiagnostics

__all__ = ["location_scale_png"]


def _bxp_stats(boxes: tuple[BoxStats, ...]) -> list[dict[str, float | str]]:
    return [
        {"label": b.site, "whislo": b.low, "q1": b.q1, "med": b.median, "q3": b.q3,
         "whishi": b.high, "mean": b.mean, "fliers": []}
        for b in boxes
    ]  # fmt: skip


def location_scale_png(diagnostics: HarmonizationDiagnostics, harmonization: str) -> str | None:
    """Box plot per site of the estimated location (γ*) and scale (δ*) effects.

    Parameters
    ----------
    diagnostics : HarmonizationDiagnostics
        With non-empty ``location`` and ``scale``.
    harmonization : str
        Plain-language harmonization named in the figure title.

    Returns
    -------
    str or None
        A ``data:image/png;base64,`` URI, or None without estimates.
    """
    if not diagnostics.location or not diagnostics.scale:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n_sites = len(diagnostics.location)
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.1 * n_sites + 4.0), 3.4))
    panels = (
        (axes[0], diagnostics.location, "location γ* (pooled SD units)", 0.0),
        (axes[1], diagnostics.scale, "scale δ* (variance ratio)", 1.0),
    )
    for ax, boxes, title, neutral in panels:
        ax.bxp(_bxp_stats(boxes), showmeans=True, showfliers=False, patch_artist=True,
               boxprops={"facecolor": "#c9d8ea"}, medianprops={"color": "#1f3a5f"})
        ax.axhline(neutral, color="#8a949e", linestyle="--", linewidth=0.8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.suptitle(f"Per-site effects removed: {harmonization}", fontsize=9)
    axes[0].set_xlabel(f"boxes: 25th-75th percentile over {diagnostics.n_features} features; "
                       "whiskers: 5th-95th; triangle: mean", fontsize=7, loc="left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
