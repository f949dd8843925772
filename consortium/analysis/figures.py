"""Figures of the analyses: matplotlib/nilearn, written deterministically.

PNG without the software stamp, SVG with a fixed hash salt and no date, so two
runs give identical files. Every function takes the values to draw and the
results directory, and returns nothing the statistics depend on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from consortium.analysis.params import FDR_ALPHA, FWE_ALPHA

__all__ = [
    "N_STRONGEST_EDGES",
    "dmn_rois_figure",
    "forest_figure",
    "nbs_figure",
    "network_matrix_figure",
    "save_figure",
    "strongest_edges",
    "strongest_edges_figure",
    "tfce_figure",
    "voxel_figure",
]

# Strongest edges drawn in the glass-brain connectome view.
N_STRONGEST_EDGES = 20


@contextmanager
def deterministic_svg() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "confed", "svg.fonttype": "path"}):
        yield


def save_figure(fig: Any, out: Path, stem: str, svg: bool = True) -> None:
    import matplotlib.pyplot as plt

    with deterministic_svg():
        fig.savefig(out / f"{stem}.png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        if svg:
            fig.savefig(out / f"{stem}.svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)


def network_matrix_figure(
    table: pd.DataFrame, value: str, title: str, out: Path, stem: str
) -> None:
    """Heatmap of a network x network effect (``table`` has net_a, net_b, value, q)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    nets = sorted(set(table["net_a"]) | set(table["net_b"]))
    index = {n: i for i, n in enumerate(nets)}
    matrix = np.full((len(nets), len(nets)), np.nan)
    significant = np.zeros_like(matrix, dtype=bool)
    for row in table.itertuples(index=False):
        i, j = index[row.net_a], index[row.net_b]
        matrix[i, j] = matrix[j, i] = getattr(row, value)
        significant[i, j] = significant[j, i] = bool(row.q < FDR_ALPHA)
    limit = float(np.nanmax(np.abs(matrix))) if np.isfinite(matrix).any() else 1.0
    size = 1.2 + 0.65 * len(nets)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_xticks(range(len(nets)), nets, rotation=45, ha="right")
    ax.set_yticks(range(len(nets)), nets)
    for i in range(len(nets)):
        for j in range(len(nets)):
            if np.isfinite(matrix[i, j]):
                mark = "*" if significant[i, j] else ""
                ax.text(j, i, f"{matrix[i, j]:.2f}{mark}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label=value)
    ax.set_title(title)
    save_figure(fig, out, stem)


def dmn_rois_figure(atlas: Any, out: Path) -> bool:
    if atlas.coords is None or atlas.dmn is None:
        return False
    coords = atlas.coords[atlas.dmn]
    _glass_brain(
        out, "dmn_rois", np.zeros((len(coords), len(coords))), coords,
        title=f"REST-meta-MDD DMN: {len(coords)} ROIs", node_color="#c0392b", node_size=25,
    )  # fmt: skip
    return True


def _glass_brain(out: Path, stem: str, adjacency: np.ndarray, coords: Any, **style: Any) -> None:
    """Save ``stem.png``: nilearn's left/right/top connectome view of ``adjacency``."""
    import matplotlib.pyplot as plt
    from nilearn import plotting

    fig = plt.figure(figsize=(9, 3))
    plotting.plot_connectome(
        adjacency, coords, display_mode="lzr", colorbar=False, figure=fig, **style
    )
    save_figure(fig, out, stem, svg=False)


def _strongest(atlas: Any, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper-triangle rows and columns of the atlas, and the strongest edges by |t|."""
    rows, cols = np.triu_indices(atlas.n_rois, k=1)
    return rows, cols, np.argsort(-np.abs(t), kind="stable")[:N_STRONGEST_EDGES]


def strongest_edges(atlas: Any, t: np.ndarray) -> list[dict[str, Any]]:
    """The strongest edges by |t| (stable order: ties resolve identically on every run)."""
    rows, cols, order = _strongest(atlas, t)
    return [
        {
            "edge": int(e),
            "index_a": int(rows[e]) + 1,
            "index_b": int(cols[e]) + 1,
            "roi_a": atlas.labels[rows[e]],
            "roi_b": atlas.labels[cols[e]],
            "network_a": atlas.networks[rows[e]],
            "network_b": atlas.networks[cols[e]],
            "t": float(t[e]),
        }
        for e in order
    ]


def strongest_edges_figure(atlas: Any, t: np.ndarray, out: Path) -> bool:
    """Glass-brain view of the strongest edges by |t| (False: the atlas has no coordinates)."""
    if atlas.coords is None:
        return False
    _, _, order = _strongest(atlas, t)
    _edge_graph(atlas, order, t[order], out, "strongest_edges",
                f"{len(order)} strongest edges (t)")  # fmt: skip
    return True


def nbs_figure(atlas: Any, table: pd.DataFrame, threshold: float, out: Path) -> bool:
    """Glass-brain graph of the NBS components (``nbs_components.png``).

    ``table`` is the component edge table (columns ``component``, ``edge``, ``t``,
    ``p_extent``). Components with FWE p < 0.05 are drawn, or the largest one when
    none is. False when there is no component or the atlas has no coordinates.
    """
    if atlas.coords is None or table.empty:
        return False
    significant = table[table["p_extent"] < FWE_ALPHA]
    shown = significant if len(significant) else table[table["component"] == 0]
    what = f"p_FWE<{FWE_ALPHA}" if len(significant) else "largest, not significant"
    n = shown["component"].nunique()
    _edge_graph(
        atlas, shown["edge"].to_numpy(), shown["t"].to_numpy(), out, "nbs_components",
        f"NBS |t|>{threshold:g}: {n} component(s), {len(shown)} edges ({what})",
    )  # fmt: skip
    return True


def _edge_graph(
    atlas: Any, edges: np.ndarray, t: np.ndarray, out: Path, stem: str, title: str
) -> None:
    """``stem.png``: the given edges (upper-triangle indices) coloured by their t."""
    rows, cols = np.triu_indices(atlas.n_rois, k=1)
    nodes = sorted(set(rows[edges]) | set(cols[edges]))
    local = {n: i for i, n in enumerate(nodes)}
    adjacency = np.zeros((len(nodes), len(nodes)))
    for e, value in zip(edges, t, strict=True):
        a, b = local[rows[e]], local[cols[e]]
        adjacency[a, b] = adjacency[b, a] = value
    limit = float(np.abs(adjacency).max()) or 1.0
    _glass_brain(
        out, stem, adjacency, atlas.coords[nodes],
        title=title, edge_cmap="RdBu_r", edge_vmin=-limit, edge_vmax=limit, node_size=12,
    )  # fmt: skip


def voxel_figure(t_img: Any, threshold: float | None, out: Path) -> None:
    import matplotlib.pyplot as plt
    from nilearn import plotting

    fig = plt.figure(figsize=(9, 3.2))
    title = "t map" + (
        f", FDR q<{FDR_ALPHA} (|t|>{threshold:.2f})"
        if threshold
        else ", nothing survives FDR: unthresholded"
    )
    plotting.plot_glass_brain(
        t_img,
        threshold=threshold if threshold else None,
        colorbar=True,
        plot_abs=False,
        cmap="RdBu_r",
        display_mode="lzry",
        figure=fig,
        title=title,
    )
    save_figure(fig, out, "voxel_map", svg=False)


def tfce_figure(corrected_img: Any, n_fwe: int, out: Path) -> None:
    """Glass brain of the TFCE-corrected map (``tfce_map.png``).

    ``corrected_img``: the signed TFCE where p_FWE < 0.05, 0 elsewhere.
    """
    import matplotlib.pyplot as plt
    from nilearn import plotting

    fig = plt.figure(figsize=(9, 3.2))
    title = (
        f"TFCE: {n_fwe} voxels with p_FWE<{FWE_ALPHA}"
        if n_fwe
        else f"TFCE: no voxel with p_FWE<{FWE_ALPHA}"
    )
    plotting.plot_glass_brain(
        corrected_img, threshold=None, colorbar=bool(n_fwe), plot_abs=False, cmap="RdBu_r",
        display_mode="lzry", figure=fig, title=title,
    )  # fmt: skip
    save_figure(fig, out, "tfce_map", svg=False)


def forest_figure(used: pd.DataFrame, pooled: Any, out: Path) -> None:
    """Forest plot of the sites' effects and the pooled estimate (``forest.png``/``.svg``)."""
    from consortium.analysis.forest import forest_plot

    with deterministic_svg():
        fig = forest_plot(
            used["yi"].to_numpy(),
            used["vi"].to_numpy(),
            labels=used["site"].tolist(),
            result=pooled,
        )
        save_figure(fig, out, "forest")
