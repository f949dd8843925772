"""Multiple comparisons across features: BH FDR and a max-statistic permutation test.

References
----------
Benjamini Y, Hochberg Y (1995). Controlling the false discovery rate: a practical and
powerful approach to multiple testing. J R Stat Soc B 57:289-300.
Westfall PH, Young SS (1993). Resampling-Based Multiple Testing. Wiley.
Nichols TE, Holmes AP (2002). Nonparametric permutation tests for functional
neuroimaging: a primer with examples. Hum Brain Mapp 15:1-25.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "PermutationResult",
    "fdr_bh",
    "max_stat_permutation",
    "maxstat_permutation",
    "permute_within",
]


def fdr_bh(pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p values (q values) of the step-up procedure.

    q_(i) = min_{j >= i} min(1, m p_(j) / j), returned in the original order and shape;
    features with ``q <= alpha`` are the BH discoveries at FDR level ``alpha``. NaN p
    values are ignored (q NaN) and do not count in ``m``.
    """
    p = np.asarray(pvalues, dtype=float)
    shape = p.shape
    p = p.ravel()
    q = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError("p values must lie in [0, 1]")
    m = ok.size
    if m:
        order = ok[np.argsort(p[ok], kind="mergesort")]
        ranked = p[order] * m / np.arange(1, m + 1)
        q[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    return q.reshape(shape)


def permute_within(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Index array that permutes rows only within each group (e.g. site)."""
    groups = np.asarray(groups)
    index = np.arange(groups.size)
    out = index.copy()
    for g in pd.unique(groups):
        members = index[groups == g]
        out[members] = rng.permutation(members)
    return out


@dataclass
class PermutationResult:
    """Family-wise error corrected p values from the max-statistic null distribution."""

    observed: np.ndarray
    p_fwe: np.ndarray
    null_max: np.ndarray
    threshold: float
    n_permutations: int
    seed: int


def max_stat_permutation(
    statistic: Callable[[np.ndarray], np.ndarray],
    labels: np.ndarray,
    groups: np.ndarray,
    n_permutations: int = 1000,
    seed: int = 0,
    two_sided: bool = True,
    alpha: float = 0.05,
    progress: Callable[[int, int], None] | None = None,
) -> PermutationResult:
    """Max-statistic permutation test with labels permuted within groups.

    Parameters
    ----------
    statistic : callable
        ``statistic(labels) -> ndarray (n_features,)``, e.g. the Dx t of
        :func:`~consortium.analysis.mass.mass_mixed_model` refitted with permuted Dx.
    labels : ndarray (n_subjects,)
        Diagnosis codes; permuted within ``groups`` so that every site keeps its
        numbers of cases and controls (exchangeability within site).
    groups : ndarray (n_subjects,)
        Site of each subject.
    n_permutations, seed
        Number of permutations and the seed of ``numpy.random.default_rng``; the same
        seed gives the same result bit for bit.
    two_sided : bool
        Use ``|statistic|``.

    Returns
    -------
    PermutationResult
        ``p_fwe[j] = (1 + #{b: max_b >= s_j}) / (B + 1)`` and the ``1 - alpha``
        quantile of the max distribution as ``threshold``.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if labels.shape != groups.shape:
        raise ValueError(f"labels {labels.shape} and groups {groups.shape} differ in shape")
    if n_permutations < 1:
        raise ValueError("n_permutations must be >= 1")
    rng = np.random.default_rng(seed)

    def reduce(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        return np.abs(values) if two_sided else values

    observed = reduce(statistic(labels))
    null_max = np.empty(n_permutations)
    for b in range(n_permutations):
        perm = permute_within(groups, rng)
        null_max[b] = np.nanmax(reduce(statistic(labels[perm])))
        if progress is not None:
            progress(b + 1, n_permutations)
    exceed = (null_max[None, :] >= observed[:, None]).sum(axis=1)
    return PermutationResult(
        observed=observed,
        p_fwe=(1 + exceed) / (n_permutations + 1),
        null_max=null_max,
        threshold=float(np.quantile(null_max, 1 - alpha)),
        n_permutations=n_permutations,
        seed=seed,
    )


def maxstat_permutation(
    Y: np.ndarray,
    data: pd.DataFrame,
    fixed: Sequence[str],
    group: str,
    term: str,
    random_slopes: Sequence[str] = (),
    reml: bool = False,
    n_permutations: int = 1000,
    seed: int = 0,
    two_sided: bool = True,
    alpha: float = 0.05,
    progress: Callable[[int, int], None] | None = None,
) -> PermutationResult:
    """FWE-corrected p values of ``term`` in the mass mixed model by within-group permutation.

    Refits :func:`~consortium.analysis.mass.mass_mixed_model` on all features for each
    permutation of ``data[term]`` within ``data[group]`` (so a random slope on ``term``
    is refitted with the permuted labels too) and takes the max |t| over features.
    """
    from consortium.analysis.mass import mass_mixed_model

    if term not in fixed:
        raise ValueError(f"term {term!r} must be one of the fixed effects {list(fixed)}")

    def statistic(labels: np.ndarray) -> np.ndarray:
        frame = data.assign(**{term: labels})
        res = mass_mixed_model(Y, frame, fixed, group, random_slopes=random_slopes, reml=reml)
        return res.tvalues[term].to_numpy()

    return max_stat_permutation(
        statistic,
        data[term].to_numpy(dtype=float),
        data[group].to_numpy(),
        n_permutations=n_permutations,
        seed=seed,
        two_sided=two_sided,
        alpha=alpha,
        progress=progress,
    )
