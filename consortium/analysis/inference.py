"""Permutation inference of the analysis kinds: the Freedman-Lane engine, wired in.

One run of :func:`~consortium.analysis.permutation.permutation_test` per analysis
gives everything that needs the null distribution, from the same permutations (or
whole-site sign flips) of the mass model's residuals (one seed, recorded):

* edges: the FWE p of every edge by max-|t| (``p_fwe``), the network blocks' mean t
  corrected over blocks (:func:`~consortium.analysis.permutation.block_fwe`) and,
  with an NBS threshold, the network-based statistic's components
  (:mod:`consortium.analysis.nbs`);
* voxels: TFCE with FWE p per voxel (:func:`~consortium.analysis.tfce.tfce_test`).

The model is the kinds' mass model (:func:`consortium.analysis.fitting.mass_model`:
ML, site random intercept and optionally the site slope of Dx). With the slope and
enough sites, whole sites are sign-flipped with the variance components of the H0
model held; otherwise residuals are permuted within sites with the components of the
observed fit held (:func:`permutation_scheme`). A ``dask.distributed`` client, when the
caller opened one (:mod:`consortium.analysis.cluster`), runs the permutation
batches; results do not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from consortium.analysis.design import Design
from consortium.analysis.errors import AnalysisError
from consortium.analysis.fitting import MODEL_GROUP, MODEL_TERM
from consortium.analysis.nbs import NbsNull, NbsResult, nbs_components
from consortium.analysis.params import FWE_ALPHA
from consortium.analysis.permutation import (
    BlockMeanNull,
    FreedmanLaneResult,
    TailApproximation,
    block_fwe,
    permutation_test,
    tail_approximation,
)
from consortium.analysis.results import (
    NbsComponentSummary,
    NbsEdge,
    NbsSection,
    PermutationSummary,
    TailFit,
)

__all__ = [
    "FWE_ALPHA",
    "NBS_TAIL",
    "EdgeInference",
    "edge_inference",
    "model_options",
    "permutation_scheme",
    "nbs_section",
    "permutation_summary",
    "run_engine",
    "tail_p_values",
]

NBS_TAIL = "both"  # positive and negative components, FWE over both signs jointly
NBS_COLUMNS = [
    "component", "sign", "extent", "intensity", "p_extent", "p_intensity", "edge",
    "roi_a", "roi_b", "t", "network_a", "network_b",
]  # fmt: skip


#: Fewest sites for whole-site sign flips (2^10 = 1,024 distinct flips).
MIN_FLIP_SITES = 10


def permutation_scheme(n_sites: int, random_slope: bool) -> tuple[str, str]:
    """``(scheme, components)`` of the kinds' permutation test.

    With the site random slope of Dx and at least :data:`MIN_FLIP_SITES` sites, whole
    sites are sign-flipped with variance components fitted under H0 (the only scheme
    that keeps FWE with slope variance, see :mod:`consortium.analysis.permutation`);
    otherwise residuals are permuted within sites, which is exact without a slope
    and approximate with one when sites are too few to flip.
    """
    if random_slope and n_sites >= MIN_FLIP_SITES:
        return "signflip", "null"
    return "permute", "observed"


def model_options(
    design: Design, random_slope: bool, permutations: int, seed: int, tail: bool
) -> dict[str, Any]:
    """Keyword arguments of ``permutation_test`` for the kinds' mass model."""
    scheme, components = permutation_scheme(design.data[MODEL_GROUP].nunique(), random_slope)
    return {
        "scheme": scheme,
        "components": components,
        "data": design.data,
        "fixed": design.fixed,
        "group": MODEL_GROUP,
        "term": MODEL_TERM,
        "random_slopes": (MODEL_TERM,) if random_slope else (),
        "reml": False,
        "n_permutations": permutations,
        "seed": seed,
        "tail": tail,
    }


def run_engine(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a permutation function; its input errors become :class:`AnalysisError`."""
    try:
        return call(*args, **kwargs)
    except ValueError as exc:
        raise AnalysisError(f"permutations: {exc}") from exc


def permutation_summary(
    result: FreedmanLaneResult,
    tail: TailApproximation | None = None,
    p_tail: np.ndarray | None = None,
) -> PermutationSummary:
    """The recorded scheme, seed and (when fitted) tail approximation of a run.

    ``tail`` and ``p_tail`` replace the run's own max-|t| tail fit (for TFCE, whose
    tail is fitted to the max-TFCE null by :func:`tail_p_values`).
    """
    if tail is None:
        tail, p_tail = result.tail, result.p_fwe_tail
    fit = None
    if tail is not None:
        fit = TailFit(tail.threshold, tail.quantile, tail.shape, tail.scale, tail.n_exceedances)
    method = "freedman-lane"
    if result.components == "null":
        method += ", variance components under H0"
    return PermutationSummary(
        method=method,
        scheme=result.scheme,
        blocks=MODEL_GROUP,
        n_permutations=result.n_permutations,
        seed=result.seed,
        two_sided=result.two_sided,
        tail=fit,
        n_fwe_tail=None if p_tail is None else int((p_tail < FWE_ALPHA).sum()),
    )


def tail_p_values(
    null_max: np.ndarray, stat: np.ndarray, p_fwe: np.ndarray
) -> tuple[TailApproximation, np.ndarray]:
    """Generalized Pareto tail fit of ``null_max`` and the FWE p of ``stat`` it gives.

    Above the fit's threshold the tail p replaces the permutation p (as
    ``permutation_test(tail=True)`` does for max-|t|).
    """
    fit = run_engine(tail_approximation, null_max)
    approx = fit.sf(stat, null_max.size)
    return fit, np.where(np.isfinite(approx), approx, p_fwe)


@dataclass
class EdgeInference:
    """Permutation results of the edges kind."""

    permutation: FreedmanLaneResult
    block_mean_t: np.ndarray
    block_p_fwe: np.ndarray
    nbs: NbsResult | None


def edge_inference(
    Y: np.ndarray,
    options: dict[str, Any],
    blocks: Sequence[np.ndarray],
    nbs_threshold: float | None,
    fit: Any = None,
    client: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> EdgeInference:
    """Max-|t|, network blocks and NBS of edges ``Y`` from one set of permutations.

    ``options`` from :func:`model_options`; ``blocks`` the edge indices of each network
    block; ``fit`` the observed mass model (its variance components are reused unless
    the scheme holds those of the H0 model, which is then fitted).
    """
    if options.get("components") == "null":
        fit = None
    nulls: dict[str, Any] = {"blocks": BlockMeanNull(list(blocks))}
    if nbs_threshold is not None:
        nulls["nbs"] = NbsNull(float(nbs_threshold), NBS_TAIL)
    res = run_engine(
        permutation_test, Y, **options, fit=fit, null_statistics=nulls, client=client,
        progress=progress,
    )  # fmt: skip
    means, p_blocks = block_fwe(res.t, blocks, res.null["blocks"])
    nbs = None
    if nbs_threshold is not None:
        nbs = _nbs_result(res, float(nbs_threshold))
    return EdgeInference(res, means, p_blocks, nbs)


def _nbs_result(res: FreedmanLaneResult, threshold: float) -> NbsResult:
    """Components of the observed t with FWE p against the NBS null of ``res``.

    As :func:`consortium.analysis.nbs.nbs_test` does, from permutations shared with
    the max-|t| and block nulls (``nbs_test`` runs its own permutations).
    """
    null_extent, null_intensity = res.null["nbs"][:, 0], res.null["nbs"][:, 1]
    components = nbs_components(res.t, threshold, NBS_TAIL)
    B = res.n_permutations
    for comp in components:
        comp.p_extent = float((1 + (null_extent >= comp.extent).sum()) / (B + 1))
        comp.p_intensity = float((1 + (null_intensity >= comp.intensity).sum()) / (B + 1))
    return NbsResult(threshold, NBS_TAIL, components, null_extent, null_intensity, res)


def nbs_section(nbs: NbsResult, atlas: Any) -> tuple[NbsSection, pd.DataFrame]:
    """The ``nbs`` section (edges named by ROI labels and networks) and its edge table."""
    table = nbs.table(list(atlas.labels), list(atlas.networks))
    if table.empty:
        table = pd.DataFrame(columns=NBS_COLUMNS)
    labels = np.asarray(atlas.labels)
    components = []
    for k, comp in enumerate(nbs.components):
        rows = table[table["component"] == k]
        edges = [
            NbsEdge(int(r.edge), str(r.roi_a), str(r.roi_b), str(r.network_a),
                    str(r.network_b), float(r.t))
            for r in rows.itertuples()
        ]  # fmt: skip
        components.append(
            NbsComponentSummary(
                component=k, sign=int(comp.sign), extent=int(comp.extent),
                intensity=float(comp.intensity), p_extent=float(comp.p_extent),
                p_intensity=float(comp.p_intensity),
                nodes=[str(n) for n in labels[comp.nodes]], edges=edges,
            )  # fmt: skip
        )
    section = NbsSection(
        threshold=nbs.threshold,
        tail=nbs.tail,
        n_permutations=nbs.permutation.n_permutations,
        seed=nbs.permutation.seed,
        n_components=len(components),
        n_significant=sum(c.p_extent < FWE_ALPHA for c in components),
        components=components,
        scheme=nbs.permutation.scheme,
    )
    return section, table
