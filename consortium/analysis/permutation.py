"""Permutation inference for the mass mixed model: Freedman-Lane within exchangeability blocks.

Scheme
------
For every feature ``f`` the mass mixed model (:mod:`consortium.analysis.mass`) gives
relative variance components ``s(f)`` (random intercept per site and, optionally, an
uncorrelated site slope on the tested term). With them held at the observed fit,
``H_s(f) = I + Z_s L(f)^2 Z_s'`` is fixed and ``H_s^-1 = I - Z_s M_s(f) Z_s'`` with
``M_s = L (I + L Z_s'Z_s L)^-1 L``.

Freedman & Lane (1983): the reduced model (all fixed effects but the tested term) is
fitted per feature by GLS with this ``H``; its residuals ``r`` are permuted within
site (sites are exchangeability blocks, Winkler et al. 2014) and the full model's
t of the term is computed on ``y* = P r`` with ``s(f)`` fixed and ``sigma^2`` profiled
(so the statistic stays a t, pivotal across features). Adding the reduced fit back
(``y* = P r + X_r b_r``) would not change the t, so it is left out. The identity
permutation reproduces the mass model's t exactly.

Why it is cheap: every quantity of the GLS t is a sum over sites of small
cross-products, ``X'y* = sum_s X_s' P_s r_s`` and ``Z_s'y*_s = Z_s' P_s r_s``. A
within-site permutation of residuals is a permutation of the rows of the small design
``U = [X Z]`` (``U_s' P_s r_s = (P_s' U_s)' r_s``), so a block of ``B`` permutations
costs one GEMM ``r' (P'U)`` over all rows for the covariates and one GEMM per site
for a random slope; columns constant within every site (the intercept) are invariant
and computed once. The rest is per-feature algebra of size ``p x q`` per site,
compiled (:mod:`consortium.analysis.freedman_lane`). Nothing is refitted.

Scale-out: batches of permutations are dask tasks, on dask's local threaded scheduler
(one BLAS thread per task) or on a ``dask.distributed`` client passed in. The draws
are generated once, in a fixed order, from one generator, and every product is done
on blocks of the same size aligned on the permutation index, so the result is the
same bit for bit whatever the batch size, the scheduler or the number of workers.

Sign flipping (``scheme="signflip"``) flips whole sites: individual flips would break
the within-site correlation that the random intercept implies, whereas a whole-site
flip keeps it, and is valid when each site's error vector is symmetric about zero (as
in the Gaussian mixed model; Winkler et al. 2014, whole-block exchangeability). Only
``2^G`` distinct flips exist for ``G`` sites. It is the scheme for a term constant
within sites (the intercept of a one-sample design), and the scheme for Dx when the
model has a **site random slope of Dx**: a within-site permutation breaks the link
between a site's cases and its slope, so its null lacks the slope variance that the
observed t carries and is anti-conservative, whereas flipping a whole site flips its
slope with it, which leaves the slope's distribution unchanged.

Which variance components are held matters for flips (``components``). The full
model's components are fitted to the observed data with the Dx effect removed, so
sites whose slopes agree give a small slope variance and a large t together; the
flipped data do not share that selection, and the null is too narrow (measured: FWE
0.32 at slope SD 0.05). Components fitted under H0 (``components="null"``: the reduced
model, Dx only in the random part) depend on the site slopes through their squares,
which flips leave unchanged, so the observed and flipped statistics are computed
alike. The statistic is then the GLS t of Dx at the H0 components; its observed value
differs slightly from the mass model's t (reported apart).

References
----------
Freedman D, Lane D (1983). A nonstochastic interpretation of reported significance
levels. J Bus Econ Stat 1:292-298.
Winkler AM, Ridgway GR, Webster MA, Smith SM, Nichols TE (2014). Permutation inference
for the general linear model. NeuroImage 92:381-397.
Winkler AM, Ridgway GR, Douaud G, Nichols TE, Smith SM (2016). Faster permutation
inference in brain imaging. NeuroImage 141:502-516.
Nichols TE, Holmes AP (2002). Hum Brain Mapp 15:1-25.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from consortium.analysis.freedman_lane import MICRO, Engine, build_engine, run_batch
from consortium.analysis.mixed import MixedDesign, build_design

__all__ = [
    "BlockMeanNull",
    "block_fwe",
    "FreedmanLaneResult",
    "TailApproximation",
    "generate_permutations",
    "generate_signflips",
    "permutation_test",
    "permuted_statistics",
    "tail_approximation",
]

SCHEMES = ("permute", "signflip")
#: Which fit's variance components are held: the full model's or the reduced (H0) model's.
COMPONENTS = ("observed", "null")
NullStatistic = Callable[[np.ndarray], np.ndarray]


@dataclass
class TailApproximation:
    """Generalized Pareto fit to the upper tail of the null max distribution."""

    threshold: float
    quantile: float
    shape: float
    scale: float
    n_exceedances: int

    def sf(self, x: np.ndarray, n_permutations: int) -> np.ndarray:
        """Tail p: ``P(max > u) * GPD.sf(x - u)`` above the threshold ``u``, else NaN.

        With a negative shape the fitted tail is bounded; beyond its end point the
        approximation gives 0.
        """
        x = np.asarray(x, float)
        rate = self.n_exceedances / n_permutations
        p = rate * stats.genpareto.sf(x - self.threshold, self.shape, scale=self.scale)
        return np.where(x > self.threshold, p, np.nan)


@dataclass
class FreedmanLaneResult:
    """Observed t, FWE (max-|t|) and uncorrected permutation p per feature."""

    t: np.ndarray
    p_fwe: np.ndarray
    p_uncorrected: np.ndarray
    null_max: np.ndarray
    seed: int
    n_permutations: int
    scheme: str
    term: str
    two_sided: bool
    null: dict[str, np.ndarray] = field(default_factory=dict)
    components: str = "observed"
    tail: TailApproximation | None = None
    p_fwe_tail: np.ndarray | None = None


def generate_permutations(codes: np.ndarray, n_permutations: int, seed: int) -> np.ndarray:
    """Within-block permutations, one row per permutation (indices into the rows).

    For permutation ``b = 0, 1, ...`` and block ``g = 0, 1, ...`` in that order, the rows
    of block ``g`` are permuted by ``rng.permutation`` of one
    ``numpy.random.default_rng(seed)``; so the permutations do not depend on how they
    are later split into batches.
    """
    codes = np.asarray(codes)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(codes == g) for g in np.unique(codes)]
    out = np.empty((n_permutations, codes.size), dtype=np.int64)
    for b in range(n_permutations):
        for idx in members:
            out[b, idx] = idx[rng.permutation(idx.size)]
    return out


def generate_signflips(n_blocks: int, n_permutations: int, seed: int) -> np.ndarray:
    """Whole-block sign flips (``n_permutations x n_blocks`` of +-1) from one generator."""
    rng = np.random.default_rng(seed)
    return 1.0 - 2.0 * rng.integers(0, 2, size=(n_permutations, n_blocks))


def tail_approximation(null_max: np.ndarray, quantile: float = 0.9) -> TailApproximation:
    """Fit a generalized Pareto distribution to the exceedances of ``null_max``.

    The threshold is the ``quantile`` of the null max distribution (PALM's tail
    approximation, Winkler et al. 2016, fits the exceedances above such a threshold by
    maximum likelihood with the location at 0).
    """
    if not 0.5 <= quantile < 1:
        raise ValueError(f"tail quantile must lie in [0.5, 1), got {quantile}")
    u = float(np.quantile(null_max, quantile))
    excess = null_max[null_max > u] - u
    if excess.size < 10:
        raise ValueError(
            f"{excess.size} null values above the {quantile} quantile: too few for a tail fit"
        )
    shape, _, scale = stats.genpareto.fit(excess, floc=0.0)
    return TailApproximation(u, quantile, float(shape), float(scale), int(excess.size))


@dataclass
class BlockMeanNull:
    """Null statistic: the max over feature blocks of the mean t (``|mean t|`` two-sided).

    For network blocks of edges (within and between networks), the FWE p of each
    block's mean t is then corrected over blocks by :func:`block_fwe`.
    """

    blocks: Sequence[np.ndarray]
    two_sided: bool = True

    def __call__(self, t: np.ndarray) -> np.ndarray:
        means = np.stack([t[:, np.asarray(idx)].mean(axis=1) for idx in self.blocks], axis=1)
        return (np.abs(means) if self.two_sided else means).max(axis=1)


def block_fwe(
    t: np.ndarray, blocks: Sequence[np.ndarray], null_max: np.ndarray, two_sided: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Mean t per block and its FWE p against the null of :class:`BlockMeanNull`."""
    means = np.array([np.asarray(t)[np.asarray(idx)].mean() for idx in blocks])
    stat = np.abs(means) if two_sided else means
    p = (1 + (null_max[None] >= stat[:, None]).sum(axis=1)) / (null_max.size + 1)
    return means, p


# --------------------------------------------------------------------------- setup


def _relative_sds(
    Y: np.ndarray, data: pd.DataFrame, fixed, group, random_slopes, reml, fit
) -> np.ndarray:
    from consortium.analysis.mass import mass_mixed_model

    if fit is None:
        fit = mass_mixed_model(Y, data, fixed, group, random_slopes=random_slopes, reml=reml)
    vc = fit.variance_components.to_numpy(float)
    scale = fit.scale.to_numpy(float)[:, None]
    if vc.shape != (Y.shape[1], 1 + len(random_slopes)):
        raise ValueError(
            f"fit has variance components of shape {vc.shape}; expected "
            f"{(Y.shape[1], 1 + len(random_slopes))} (features x random terms)"
        )
    return np.sqrt(np.maximum(vc, 0.0) / scale)


# --------------------------------------------------------------------------- driver


def _compute(
    engine: Engine,
    batches: list[np.ndarray],
    signflip: bool,
    observed: np.ndarray,
    client: Any,
    scheduler: str | None,
    progress: Callable[[int, int], None] | None,
) -> list[dict[str, np.ndarray]]:
    """Run the batches on a dask.distributed ``client`` or dask's local scheduler, in order."""
    total = len(batches)
    if client is not None:
        from distributed import as_completed

        remote = client.scatter(engine, broadcast=True)
        futures = [
            client.submit(run_batch, remote, d, signflip, observed, pure=False) for d in batches
        ]
        done = 0
        for _ in as_completed(futures):
            done += 1
            if progress is not None:
                progress(done, total)
        return client.gather(futures)
    import dask
    from threadpoolctl import threadpool_limits

    scheduler = scheduler or "threads"
    lazy_engine = dask.delayed(engine, name="confed-permutation-engine", traverse=False)
    results: list[dict[str, np.ndarray]] = []
    wave = 8
    # with dask's threads, one BLAS thread per task: the tasks run in parallel already
    with threadpool_limits(1, user_api="blas") if scheduler == "threads" else nullcontext():
        for start in range(0, total, wave):
            tasks = [
                dask.delayed(run_batch, pure=False)(lazy_engine, d, signflip, observed)
                for d in batches[start : start + wave]
            ]
            results.extend(dask.compute(*tasks, scheduler=scheduler))
            if progress is not None:
                progress(len(results), total)
    return results


def _prepare(
    Y,
    data,
    fixed,
    group,
    term,
    random_slopes,
    reml,
    scheme,
    fit,
    components="observed",
    **kwargs: Any,
) -> tuple[MixedDesign, Engine]:
    """Validate the inputs and build the engine (variance components, reduced model, residuals)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if components not in COMPONENTS:
        raise ValueError(f"components must be one of {COMPONENTS}, got {components!r}")
    if kwargs.get("chunk", 1) < 1:
        raise ValueError("chunk_size must be >= 1")
    design = build_design(data, fixed, group, random_slopes)
    if term not in design.fixed_names:
        raise ValueError(f"term {term!r} is not a fixed effect ({design.fixed_names})")
    Y = np.asarray(Y.to_numpy() if isinstance(Y, pd.DataFrame) else Y, dtype=float)
    if Y.ndim != 2 or Y.shape[0] != design.nobs:
        raise ValueError(f"Y must be subjects x features with {design.nobs} rows (got {Y.shape})")
    if not np.isfinite(Y).all():
        raise ValueError("Y has missing or non-finite values")
    j = design.fixed_names.index(term)
    if scheme == "permute" and all(
        np.ptp(design.X[design.codes == g, j]) == 0 for g in range(design.n_groups)
    ):
        raise ValueError(
            f"term {term!r} is constant within every {group!r} block: within-block "
            "permutation cannot test it; use scheme='signflip'"
        )
    held = fixed
    if components == "null":
        if term == "Intercept":
            raise ValueError("components='null' needs a tested term other than the intercept")
        held = [name for name in fixed if name != term]
    s = _relative_sds(Y, data, held, group, tuple(random_slopes), reml, fit)
    return design, build_engine(Y, design, s, j, reml, **kwargs)


def permuted_statistics(
    Y: np.ndarray,
    data: pd.DataFrame,
    fixed: Sequence[str],
    group: str,
    term: str,
    draws: np.ndarray,
    random_slopes: Sequence[str] = (),
    reml: bool = False,
    scheme: str = "permute",
    fit: Any = None,
    components: str = "observed",
) -> np.ndarray:
    """Freedman-Lane t of ``term`` for given permutations or flips, (B, features).

    ``fit`` and ``components`` as in :func:`permutation_test`.

    ``draws`` is (B, n) of row indices in the order of ``data``, ``y*_i = r_{draws[b, i]}``
    (each a permutation within ``group``), or, for ``scheme="signflip"``, (B, G) of +-1
    per group in sorted group order. Row ``draws[b] = arange(n)`` (all ones) gives the
    observed t.
    """
    design, engine = _prepare(
        Y, data, fixed, group, term, random_slopes, reml, scheme, fit, components,
        two_sided=True, chunk=4096, nulls={},
    )  # fmt: skip
    draws = np.atleast_2d(np.asarray(draws))
    if scheme == "signflip":
        if draws.shape[1] != design.n_groups or not np.isin(draws, (-1, 1)).all():
            raise ValueError(f"sign flips must be (B, {design.n_groups}) arrays of +-1")
        return engine.t_batch(draws.astype(float), True)
    n = design.nobs
    if draws.shape[1] != n or not (np.sort(draws, axis=1) == np.arange(n)).all():
        raise ValueError(f"draws must be permutations of the {n} rows")
    if not (design.codes[draws] == design.codes[None]).all():
        raise ValueError(f"draws must permute rows within {group!r}")
    order = np.argsort(design.codes, kind="stable")
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    return engine.t_batch(pos[draws[:, order]], False)


def permutation_test(
    Y: np.ndarray,
    data: pd.DataFrame,
    fixed: Sequence[str],
    group: str,
    term: str,
    random_slopes: Sequence[str] = (),
    reml: bool = False,
    n_permutations: int = 5000,
    seed: int = 0,
    scheme: str = "permute",
    two_sided: bool = True,
    fit: Any = None,
    components: str = "observed",
    null_statistics: Mapping[str, NullStatistic] | None = None,
    tail: bool = False,
    tail_quantile: float = 0.9,
    batch_size: int = 64,
    chunk_size: int = 4096,
    client: Any = None,
    scheduler: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FreedmanLaneResult:
    """Max-|t| permutation test of ``term`` in the mass mixed model (Freedman-Lane).

    Parameters
    ----------
    Y : ndarray (subjects, features)
        Outcomes, rows aligned with ``data``.
    data, fixed, group, random_slopes, reml
        The model, as in :func:`consortium.analysis.mass_mixed_model`; ``group`` (site)
        defines the exchangeability blocks. ``reml`` sets the fit and the residual
        degrees of freedom of the t (``n`` for ML, ``n - p`` for REML), as there.
    term : str
        Tested fixed effect (``"Intercept"`` only with ``scheme="signflip"``).
    n_permutations, seed
        Permutations (or flips) drawn from ``numpy.random.default_rng(seed)`` by
        :func:`generate_permutations` (:func:`generate_signflips`); the same seed
        gives the same result bit for bit, whatever ``batch_size`` and scheduler.
    scheme : {"permute", "signflip"}
        Within-site permutation of reduced-model residuals (default) or whole-site
        sign flipping (see the module notes for when each is valid).
    two_sided : bool
        Max of ``|t|`` (default) or of ``t``.
    fit : MassMixedResult, optional
        The fit that supplies ``s(f)`` (avoids refitting): of the full model, or with
        ``components="null"`` of the reduced model (``fixed`` without ``term``, the same
        random terms).
    components : {"observed", "null"}
        Hold the variance components of the full model's fit (default) or of the
        reduced model's fit under H0. With a random slope of ``term`` and sign flips,
        ``"null"`` is the valid choice (see the module notes).
    null_statistics : mapping name -> callable, optional
        ``fn(t) -> ndarray`` applied to every batch of permuted t (B, features); the
        results are concatenated along the first axis into ``result.null[name]``
        (e.g. :class:`consortium.analysis.nbs.NbsNull`,
        :class:`consortium.analysis.tfce.TfceNull`). Must be picklable for a client.
    tail, tail_quantile
        Also fit a generalized Pareto tail to the null max distribution
        (:func:`tail_approximation`) and report ``p_fwe_tail`` (the tail p where the
        observed statistic exceeds the threshold, the permutation p elsewhere).
    batch_size, chunk_size
        Permutations per task, rounded up to a multiple of ``MICRO`` (the products
        run on blocks of ``MICRO`` permutations, one GEMM per site each, so results do
        not depend on the batch size), and features per product.
    client : dask.distributed.Client, optional
        Run the batches on this client; otherwise dask's local ``scheduler``
        (default ``"threads"``).
    progress : callable(done, total), optional

    Returns
    -------
    FreedmanLaneResult
        ``p_fwe = (1 + #{b: max_b >= stat_f}) / (B + 1)`` and the uncorrected
        ``(1 + #{b: stat_bf >= stat_f}) / (B + 1)``.
    """
    design, engine = _prepare(
        Y, data, fixed, group, term, random_slopes, reml, scheme, fit, components,
        two_sided=two_sided, chunk=chunk_size, nulls=dict(null_statistics or {}),
    )  # fmt: skip
    if n_permutations < 1 or batch_size < 1:
        raise ValueError("n_permutations and batch_size must be >= 1")
    batch_size = -(-batch_size // MICRO) * MICRO
    signflip = scheme == "signflip"
    n = design.nobs
    identity = np.ones((1, design.n_groups)) if signflip else np.arange(n)[None]
    t_obs = engine.t_batch(identity, signflip)[0]
    observed = np.abs(t_obs) if two_sided else t_obs
    if signflip:
        draws = generate_signflips(design.n_groups, n_permutations, seed)
    else:
        draws = generate_permutations(np.sort(design.codes), n_permutations, seed)
    batches = [draws[i : i + batch_size] for i in range(0, n_permutations, batch_size)]
    parts = _compute(engine, batches, signflip, observed, client, scheduler, progress)
    null_max = np.concatenate([part["max"] for part in parts])
    exceed = np.sum([part["exceed"] for part in parts], axis=0)
    result = FreedmanLaneResult(
        t=t_obs,
        p_fwe=(1 + (null_max[None] >= observed[:, None]).sum(axis=1)) / (n_permutations + 1),
        p_uncorrected=(1 + exceed) / (n_permutations + 1),
        null_max=null_max,
        seed=seed,
        n_permutations=n_permutations,
        scheme=scheme,
        term=term,
        two_sided=two_sided,
        components=components,
        null={name: np.concatenate([part[name] for part in parts]) for name in engine.nulls},
    )
    if tail:
        result.tail = tail_approximation(null_max, tail_quantile)
        approx = result.tail.sf(observed, n_permutations)
        result.p_fwe_tail = np.where(np.isfinite(approx), approx, result.p_fwe)
    return result
