"""Forest plot of site effect sizes and the pooled random-effects estimate.

References
----------
Lewis S, Clarke M (2001). Forest plots: trying to see the wood and the trees. BMJ
322:1479-1480.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from consortium.analysis.meta import RandomEffectsResult  # noqa: E402

__all__ = ["forest_plot", "save_forest_plot"]


def forest_plot(
    yi: Sequence[float],
    vi: Sequence[float],
    labels: Sequence[str],
    result: RandomEffectsResult | None = None,
    xlabel: str = "Hedges' g",
    title: str | None = None,
    level: float = 0.95,
) -> plt.Figure:
    """Draw one row per site (estimate, CI, box area ~ inverse variance) and the pooled diamond."""
    yi = np.asarray(yi, dtype=float)
    vi = np.asarray(vi, dtype=float)
    if not (yi.size == vi.size == len(labels)):
        raise ValueError(f"{yi.size} effects, {vi.size} variances and {len(labels)} labels")
    z = stats.norm.ppf(1 - (1 - level) / 2)
    half = z * np.sqrt(vi)
    k = yi.size
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * (k + 4) + 1))
    rows = np.arange(k, 0, -1) + 1.0
    w = 1 / vi
    sizes = 20 + 120 * w / w.max()
    ax.hlines(rows, yi - half, yi + half, color="0.2", lw=1)
    ax.scatter(yi, rows, s=sizes, marker="s", color="0.2", zorder=3)
    ticks, ticklabels = list(rows), [str(label) for label in labels]
    pooled = result
    if pooled is not None:
        diamond = np.array(
            [
                [pooled.ci_low, 0.5],
                [pooled.estimate, 0.8],
                [pooled.ci_high, 0.5],
                [pooled.estimate, 0.2],
            ]
        )
        ax.fill(diamond[:, 0], diamond[:, 1], color="tab:red", zorder=3)
        ticks.append(0.5)
        ticklabels.append(f"RE model ({pooled.method}, {pooled.test})")
        ax.text(
            1.01,
            0.5,
            f"{pooled.estimate:.2f} [{pooled.ci_low:.2f}, {pooled.ci_high:.2f}]",
            transform=ax.get_yaxis_transform(),
            va="center",
            fontsize=8,
        )
    for r, y, h in zip(rows, yi, half, strict=True):
        ax.text(
            1.01,
            r,
            f"{y:.2f} [{y - h:.2f}, {y + h:.2f}]",
            transform=ax.get_yaxis_transform(),
            va="center",
            fontsize=8,
        )
    ax.axvline(0, color="0.5", ls="--", lw=0.8)
    ax.set_yticks(ticks, ticklabels, fontsize=8)
    ax.set_ylim(0, k + 2)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    fig.subplots_adjust(left=0.3, right=0.72)
    return fig


def save_forest_plot(fig: plt.Figure, stem: str | Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.svg`` atomically (temporary file, then rename)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in ("png", "svg"):
        target = stem.with_suffix(f".{ext}")
        fd, tmp = tempfile.mkstemp(dir=stem.parent, suffix=f".{ext}.part")
        os.close(fd)
        try:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    plt.close(fig)
    return written
