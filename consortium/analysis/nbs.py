"""Network-based statistic (NBS) on edge t statistics, with within-site permutations.

Edges are the upper triangle of an ``R x R`` connectivity matrix in
``numpy.triu_indices(R, k=1)`` order (the order of
:func:`consortium.analysis.edges_to_matrix` and of the pipeline's edge tables).

Given a primary threshold ``T`` chosen by the user, the supra-threshold edges form a
graph whose connected components (with at least one edge) are measured by

* extent: the number of edges of the component (Zalesky et al. 2010), and
* intensity: the sum over its edges of ``|t| - T`` (the NBS toolbox's "intensity",
  the mass of the statistic above the threshold; Zalesky et al. 2010).

Tails: ``"positive"`` (t > T), ``"negative"`` (-t > T), ``"both"`` (components of each
sign found separately; the null distribution is the per-permutation maximum over
both signs, so the FWE is controlled over both tails jointly) and ``"abs"`` (|t| > T
with signs mixed in a component, as bctpy's ``nbs_bct(tail="both")``). Each
component's FWE p is ``(1 + #{b: max_b >= observed}) / (B + 1)`` against the null
maxima of extent and of intensity, from the same permutations as the max-|t| test of
:func:`consortium.analysis.permutation.permutation_test`.

References
----------
Zalesky A, Fornito A, Bullmore ET (2010). Network-based statistic: identifying
differences in brain networks. NeuroImage 53:1197-1207.
Winkler AM et al. (2014). Permutation inference for the general linear model.
NeuroImage 92:381-397.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from consortium.analysis.effects import _n_rois

__all__ = ["NbsComponent", "NbsNull", "NbsResult", "nbs_components", "nbs_test"]

TAILS = ("positive", "negative", "both", "abs")


def _signed(t: np.ndarray, tail: str) -> list[tuple[int, np.ndarray]]:
    """(sign, value) pairs whose values are thresholded from above."""
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
    if tail == "abs":
        return [(0, np.abs(t))]
    signs = {"positive": (1,), "negative": (-1,), "both": (1, -1)}[tail]
    return [(s, s * t) for s in signs]


@dataclass
class NbsComponent:
    """One supra-threshold component: its edges (indices), nodes, extent and intensity."""

    sign: int  # +1, -1, or 0 for tail="abs"
    edges: np.ndarray
    nodes: np.ndarray
    extent: int
    intensity: float
    p_extent: float = float("nan")
    p_intensity: float = float("nan")


def nbs_components(
    t: np.ndarray, threshold: float, tail: str = "both", n_rois: int | None = None
) -> list[NbsComponent]:
    """Components of the supra-threshold graph of edge statistics ``t``, largest first."""
    t = np.asarray(t, dtype=float)
    n = _n_rois(t.size) if n_rois is None else n_rois
    rows, cols = np.triu_indices(n, k=1)
    if rows.size != t.size:
        raise ValueError(f"{t.size} edge statistics for {n} ROIs ({rows.size} edges)")
    found = []
    for sign, values in _signed(t, tail):
        supra = np.flatnonzero(values > threshold)
        if supra.size == 0:
            continue
        graph = coo_matrix((np.ones(supra.size), (rows[supra], cols[supra])), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        edge_label = labels[rows[supra]]
        for label in np.unique(edge_label):
            edges = supra[edge_label == label]
            found.append(
                NbsComponent(
                    sign=sign,
                    edges=edges,
                    nodes=np.unique(np.concatenate([rows[edges], cols[edges]])),
                    extent=int(edges.size),
                    # summed in edge order, as the null's kernel does (bitwise equal)
                    intensity=float(np.cumsum(values[edges] - threshold)[-1]),
                )
            )
    return sorted(found, key=lambda c: (-c.extent, -c.intensity, int(c.edges[0])))


@numba.njit(cache=True, nogil=True)
def _root(parent, v):  # pragma: no cover - compiled
    while parent[v] != v:
        parent[v] = parent[parent[v]]
        v = parent[v]
    return v


@numba.njit(cache=True, nogil=True)
def _max_components(values, rows, cols, n_nodes, threshold):  # pragma: no cover - compiled
    """Largest extent and intensity over the components of each row of ``values``."""
    B, m = values.shape
    out = np.zeros((B, 2))
    parent = np.empty(n_nodes, np.int64)
    extent = np.zeros(n_nodes, np.int64)
    mass = np.zeros(n_nodes)
    for b in range(B):
        for v in range(n_nodes):
            parent[v] = v
            extent[v] = 0
            mass[v] = 0.0
        for e in range(m):
            if values[b, e] > threshold:
                ra, rb = _root(parent, rows[e]), _root(parent, cols[e])
                if ra != rb:
                    parent[ra] = rb
        for e in range(m):
            if values[b, e] > threshold:
                r = _root(parent, rows[e])
                extent[r] += 1
                mass[r] += values[b, e] - threshold
        for v in range(n_nodes):
            if extent[v] > out[b, 0]:
                out[b, 0] = extent[v]
            if mass[v] > out[b, 1]:
                out[b, 1] = mass[v]
    return out


@dataclass
class NbsNull:
    """Null statistic for :func:`~consortium.analysis.permutation.permutation_test`.

    Returns (B, 2): the largest component extent and intensity of each permutation,
    maximised over the signs of ``tail``.
    """

    threshold: float
    tail: str = "both"
    n_rois: int | None = None

    def __call__(self, t: np.ndarray) -> np.ndarray:
        t = np.atleast_2d(np.asarray(t, dtype=float))
        n = _n_rois(t.shape[1]) if self.n_rois is None else self.n_rois
        rows, cols = np.triu_indices(n, k=1)
        out = np.zeros((t.shape[0], 2))
        for _, values in _signed(t, self.tail):
            out = np.maximum(
                out, _max_components(np.ascontiguousarray(values), rows, cols, n, self.threshold)
            )
        return out


@dataclass
class NbsResult:
    """NBS components with FWE p, the null maxima and the max-|t| results."""

    threshold: float
    tail: str
    components: list[NbsComponent]
    null_extent: np.ndarray
    null_intensity: np.ndarray
    permutation: Any  # FreedmanLaneResult of the same permutations

    def table(
        self, labels: Sequence[str] | None = None, networks: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """One row per component edge: component, sign, p values, ROIs and their networks."""
        n = _n_rois(self.permutation.t.size)
        rows, cols = np.triu_indices(n, k=1)
        labels = np.asarray(labels if labels is not None else [str(i) for i in range(n)])
        if labels.size != n or (networks is not None and len(networks) != n):
            raise ValueError(f"labels and networks must have one entry per ROI ({n})")
        records = []
        for k, comp in enumerate(self.components):
            for e in comp.edges:
                record = {
                    "component": k, "sign": comp.sign, "extent": comp.extent,
                    "intensity": comp.intensity, "p_extent": comp.p_extent,
                    "p_intensity": comp.p_intensity, "edge": int(e),
                    "roi_a": labels[rows[e]], "roi_b": labels[cols[e]],
                    "t": float(self.permutation.t[e]),
                }  # fmt: skip
                if networks is not None:
                    record["network_a"] = networks[rows[e]]
                    record["network_b"] = networks[cols[e]]
                records.append(record)
        return pd.DataFrame.from_records(records)


def nbs_test(
    Y: np.ndarray,
    data: pd.DataFrame,
    fixed: Sequence[str],
    group: str,
    term: str,
    threshold: float,
    tail: str = "both",
    **kwargs: Any,
) -> NbsResult:
    """NBS of ``term`` over edges ``Y`` (subjects x edges) with Freedman-Lane permutations.

    Keyword arguments go to :func:`~consortium.analysis.permutation.permutation_test`
    (``random_slopes``, ``reml``, ``n_permutations``, ``seed``, ``client``, ...); the
    max-|t| results of the same permutations are in ``result.permutation``.
    """
    from consortium.analysis.permutation import permutation_test

    if not np.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"the NBS primary threshold must be a positive t, got {threshold}")
    n = _n_rois(np.shape(Y)[1])
    _signed(np.zeros(1), tail)  # validates tail
    null = NbsNull(float(threshold), tail, n)
    res = permutation_test(Y, data, fixed, group, term, null_statistics={"nbs": null}, **kwargs)
    null_extent, null_intensity = res.null["nbs"][:, 0], res.null["nbs"][:, 1]
    components = nbs_components(res.t, threshold, tail, n)
    B = res.n_permutations
    for comp in components:
        comp.p_extent = float((1 + (null_extent >= comp.extent).sum()) / (B + 1))
        comp.p_intensity = float((1 + (null_intensity >= comp.intensity).sum()) / (B + 1))
    return NbsResult(float(threshold), tail, components, null_extent, null_intensity, res)
