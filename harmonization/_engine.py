"""The two passes of ComBat over X, and the engines that run them (private).

Pass 1 (:func:`least_squares_stats`) gives the least-squares coefficients and
per-site residual sums of squares, feature block by feature block; pass 2
(:func:`adjust`) writes the harmonized data. The engine object decides where
the passes run: :class:`NumpyEngine` in memory, :class:`DaskEngine` mapped
over the feature chunks of a dask array (on dask's local scheduler or on a
``distributed.Client`` passed in by the caller; no client is ever opened
here). dask is imported only when the dask engine is used.

The estimators compose an engine (``engine="numpy" | "dask"``); a mean model
is any picklable ``block_stats(block, chunk=None) -> LSStats``, so the dask
engine runs linear ComBat and GAM ComBat alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._design import _check_finite_chunk, _check_shape, _check_site_columns, _check_X

ENGINES = ("numpy", "dask")

_CHUNK_BYTES = 8 * 2**20  # below glibc's mmap threshold: temporaries are reused
_BLOCK_BYTES = 2 * 2**20  # one block of site-sorted data in the least-squares pass
_ADJUST_BYTES = 512 * 2**10  # one block of rows x features in the adjustment pass
_ADJUST_COLS = 8192
_DASK_CHUNK = 2048  # features per dask chunk when a numpy X is given to the dask engine


def _chunks(n_rows: int, n_cols: int, chunk: int | None = None) -> Iterator[slice]:
    """Column slices of about ``_CHUNK_BYTES`` of float64 each (or ``chunk`` columns)."""
    step = chunk or max(1, _CHUNK_BYTES // (8 * max(n_rows, 1)))
    for start in range(0, n_cols, step):
        yield slice(start, min(start + step, n_cols))


# ---------------------------------------------------------------------------
# pass 1: least squares and per-site residual sums of squares
# ---------------------------------------------------------------------------


@dataclass
class LSStats:
    """Per-feature least-squares results needed by ComBat (no subject-level data).

    ``coef`` is (n_sites + n_covariate_columns) x V with one-hot site columns
    first; ``ssr_site`` is n_sites x V, the residual sum of squares per site;
    ``constant`` flags features with zero variance within some site; ``extra``
    holds further per-feature results of the mean model (GAM: ``lambda_``,
    ``edf_``), set on the estimator as attributes.
    """

    coef: np.ndarray
    ssr_site: np.ndarray
    constant: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)


class _SiteBlocks:
    """Subjects sorted by site once, so each site is a contiguous block of rows.

    Per-site sums become ``np.add.reduceat`` over the sorted rows (one
    addition per element, where a one-hot matrix product costs 2 x n_sites
    flops per element) and per-site broadcasts are slices.
    """

    def __init__(self, site_idx: np.ndarray, n_sites: int) -> None:
        self.order = np.argsort(site_idx, kind="stable")
        self.counts = np.bincount(site_idx, minlength=n_sites)
        empty = np.flatnonzero(self.counts == 0)
        if empty.size:
            raise ValueError(f"site index {empty[0]} has no subjects")
        self.stops = np.cumsum(self.counts)
        self.starts = self.stops - self.counts

    def gather(self, X: np.ndarray, cols: slice) -> np.ndarray:
        """Columns ``cols`` of X as float64, rows sorted by site (a new array)."""
        src = X[:, cols]
        if src.dtype != np.float64:
            src = src.astype(np.float64)
        return np.take(src, self.order, axis=0)

    def sums(self, Xs: np.ndarray) -> np.ndarray:
        return np.add.reduceat(Xs, self.starts, axis=0)

    def blocks(self):
        return zip(self.starts, self.stops, strict=True)


def least_squares_stats(
    X: np.ndarray, design: np.ndarray, site_idx: np.ndarray, n_sites: int, chunk: int | None = None
) -> LSStats:
    """One pass over X (in feature chunks): coefficients and per-site residual SS.

    ``design`` is the one-hot site columns (``n_sites`` of them, in site
    order) followed by the covariate columns. The coefficients solve the
    normal equations ``(D'D) b = D'x``; ``D'x`` is the per-site sums plus
    ``C'x``, and the residuals are formed in place, so the only temporaries
    are one block of the (sorted) data and ``C b`` for it.
    """
    n, V = X.shape
    _check_site_columns(design, site_idx, n_sites)
    gram_inv = np.linalg.inv(design.T @ design)
    sb = _SiteBlocks(site_idx, n_sites)
    cov_sorted = np.ascontiguousarray(design[sb.order, n_sites:])
    several = sb.counts > 1
    coef = np.empty((design.shape[1], V))
    ssr = np.empty((n_sites, V))
    constant = np.zeros(V, dtype=bool)
    for cols in _chunks(n, V, chunk or _block_cols(n)):
        Xs = sb.gather(X, cols)
        site_sums = sb.sums(Xs)
        if not np.isfinite(site_sums).all():
            _check_finite_chunk(np.asarray(X[:, cols]), cols)
        DtX = np.vstack([site_sums, cov_sorted.T @ Xs])
        b = coef[:, cols] = gram_inv @ DtX
        constant[cols] = _constant_sorted(Xs, sb, site_sums, several)
        if cov_sorted.shape[1]:
            Xs -= cov_sorted @ b[n_sites:]
        for j, (a, z) in enumerate(sb.blocks()):
            Xs[a:z] -= b[j]
        np.square(Xs, out=Xs)
        ssr[:, cols] = sb.sums(Xs)
    return LSStats(coef=coef, ssr_site=ssr, constant=constant)


def _constant_sorted(
    Xs: np.ndarray, sb: _SiteBlocks, site_sums: np.ndarray, several: np.ndarray
) -> np.ndarray:
    """Features constant within a site of more than one subject (rows sorted by site).

    A loose screen on the within-site sum of squares, then an exact
    ``max == min`` check of the few candidates.
    """
    s2 = sb.sums(np.square(Xs))
    ss = s2 - site_sums**2 / sb.counts[:, None]
    candidate = (ss <= 1e-9 * s2 + 1e-300) & several[:, None]
    out = np.zeros(Xs.shape[1], dtype=bool)
    for j, v in zip(*np.nonzero(candidate), strict=True):
        col = Xs[sb.starts[j] : sb.stops[j], v]
        out[v] |= bool(col.max() == col.min())
    return out


def _block_cols(n_rows: int) -> int:
    return max(1, _BLOCK_BYTES // (8 * max(n_rows, 1)))


def _constant_within_site(
    Xc: np.ndarray,
    onehot: np.ndarray,
    counts: np.ndarray,
    site_idx: np.ndarray,
    s1: np.ndarray | None = None,
) -> np.ndarray:
    """Features with zero variance within any site of more than one subject (exact)."""
    s1 = onehot.T @ Xc if s1 is None else s1
    s2 = onehot.T @ np.square(Xc)
    ss = s2 - s1**2 / counts[:, None]
    # cheap screen with a loose tolerance, then an exact check of the candidates
    candidate = (ss <= 1e-9 * s2 + 1e-300) & (counts[:, None] > 1)
    out = np.zeros(Xc.shape[1], dtype=bool)
    for j, v in zip(*np.nonzero(candidate), strict=True):
        col = Xc[site_idx == j, v]
        out[v] |= bool(col.max() == col.min())
    return out


# ---------------------------------------------------------------------------
# pass 2: adjustment
# ---------------------------------------------------------------------------


def adjust(
    X: np.ndarray,
    cov_design: np.ndarray,
    cov_coef: np.ndarray,
    grand_mean: np.ndarray,
    var_pooled: np.ndarray,
    gamma_star: np.ndarray,
    delta_star: np.ndarray,
    site_idx: np.ndarray,
    keep_rows: np.ndarray | None = None,
    keep_cols: np.ndarray | None = None,
    out: np.ndarray | None = None,
    chunk: int | None = None,
    check: bool = True,
) -> np.ndarray:
    """Harmonized data ``(x - m - g* sd) / sqrt(d*) + m`` with ``m = grand mean + C beta``.

    ``keep_rows`` (subjects of the reference site) and ``keep_cols``
    (constant features) are copied unchanged.
    """
    n, V = X.shape
    if out is None:
        out = np.empty((n, V), dtype=np.float64)
    shift = gamma_star * np.sqrt(var_pooled)
    scale = 1.0 / np.sqrt(delta_star)
    # small blocks of rows x features: contiguous rows, temporaries stay in cache
    for cols in _chunks(n, V, chunk or min(V, _ADJUST_COLS)):
        step = max(2, _ADJUST_BYTES // (8 * (cols.stop - cols.start)))
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            Xb = X[rows, cols]
            mean = cov_design[rows] @ cov_coef[:, cols]
            mean += grand_mean[cols]
            res = np.subtract(Xb, mean, out=out[rows, cols])
            _shift_scale(res, site_idx[rows], shift[:, cols], scale[:, cols])
            res += mean
            if check and not np.isfinite(res.sum()):
                _check_finite_chunk(np.asarray(Xb), cols, row0=start)
    if keep_rows is not None and keep_rows.any():
        out[keep_rows] = X[keep_rows]
    if keep_cols is not None and keep_cols.any():
        out[:, keep_cols] = X[:, keep_cols]
    return out


def _shift_scale(res: np.ndarray, sites: np.ndarray, shift: np.ndarray, scale: np.ndarray):
    """``res = (res - shift[site]) * scale[site]`` row by row, in place."""
    if res.shape[0] > 16:  # narrow blocks: one gathered temporary beats many small calls
        res -= shift[sites]
        res *= scale[sites]
        return
    for row, j in zip(res, sites, strict=True):
        row -= shift[j]
        row *= scale[j]


# ---------------------------------------------------------------------------
# engines
# ---------------------------------------------------------------------------

BlockStats = Callable[..., LSStats]


@dataclass(frozen=True)
class AdjustInputs:
    """Everything pass 2 needs besides X (per site / per feature, plus the design)."""

    cov_design: np.ndarray
    cov_coef: np.ndarray
    grand_mean: np.ndarray
    var_pooled: np.ndarray
    gamma: np.ndarray
    delta: np.ndarray
    site_idx: np.ndarray
    keep_rows: np.ndarray | None
    keep_cols: np.ndarray | None

    def per_feature(self) -> np.ndarray:
        """The per-feature arrays stacked (rows: cov_coef, grand mean, var, gamma, delta, keep)."""
        keep = np.zeros(self.grand_mean.size) if self.keep_cols is None else self.keep_cols
        return np.vstack(
            [
                self.cov_coef, self.grand_mean, self.var_pooled, self.gamma, self.delta,
                np.asarray(keep, dtype=np.float64),
            ]
        )  # fmt: skip


class NumpyEngine:
    """Both passes in memory on a numpy array, ``chunk`` features per block."""

    name = "numpy"

    def __init__(self, chunk: int | None = None) -> None:
        self.chunk = chunk

    def check_X(self, X: Any) -> np.ndarray:
        return _check_X(X)

    def stats(
        self, X: np.ndarray, block_stats: BlockStats, n_coef: int, n_sites: int,
        extra: tuple[str, ...] = (),
    ) -> LSStats:  # fmt: skip
        """``block_stats`` on the whole of X (it walks the feature blocks itself)."""
        return block_stats(X, chunk=self.chunk)

    def adjust(self, X: np.ndarray, inputs: AdjustInputs, check: bool = True) -> np.ndarray:
        a = inputs
        return adjust(
            X, a.cov_design, a.cov_coef, a.grand_mean, a.var_pooled, a.gamma, a.delta,
            a.site_idx, a.keep_rows, a.keep_cols, chunk=self.chunk, check=check,
        )  # fmt: skip


class DaskEngine:
    """Both passes mapped over the feature chunks of a dask array.

    Parameters
    ----------
    chunk : int, optional
        Features per dask chunk (X is rechunked to it; default: X's own
        chunks, or 2048 features when X is a numpy array).
    client : distributed.Client, optional
        Cluster to compute on, passed in by the caller; default: dask's local
        scheduler. A scheduler address is refused: harmonization opens no
        network connection.
    """

    name = "dask"

    def __init__(self, chunk: int | None = None, client: Any = None) -> None:
        if isinstance(client, str | bytes):
            raise ValueError(
                f"client must be a dask.distributed Client or None, not the address {client!r}: "
                "connect with distributed.Client(address) and pass the client"
            )
        if client is not None and not hasattr(client, "compute"):
            raise ValueError(f"client must be a dask.distributed Client or None, got {client!r}")
        self.chunk = chunk
        self.client = client

    def check_X(self, X: Any) -> Any:
        import dask.array as da

        if not isinstance(X, da.Array):
            X = _check_X(X)
            X = da.from_array(X, chunks=(-1, self.chunk or _DASK_CHUNK))
        _check_shape(X.shape, X.dtype)
        return X.rechunk({0: -1} if self.chunk is None else {0: -1, 1: self.chunk})

    def _compute(self, obj: Any) -> Any:
        if self.client is None:
            import dask

            return dask.compute(obj)[0]
        return self.client.compute(obj, sync=True)

    def stats(
        self, X: Any, block_stats: BlockStats, n_coef: int, n_sites: int,
        extra: tuple[str, ...] = (),
    ) -> LSStats:  # fmt: skip
        """``block_stats`` mapped over the feature chunks; the small results are gathered.

        Each chunk returns its ``n_coef`` coefficient rows, ``n_sites``
        residual sum-of-squares rows, the constant flags and the ``extra`` rows.
        """
        p, K = n_coef, n_sites
        rows = p + K + 1 + len(extra)
        packed = X.map_blocks(
            _packed_stats, block_stats, extra, chunks=((rows,), X.chunks[1]), dtype=np.float64
        )
        packed = np.asarray(self._compute(packed))
        extras = {name: packed[p + K + 1 + k] for k, name in enumerate(extra)}
        return LSStats(
            coef=packed[:p], ssr_site=packed[p : p + K], constant=packed[p + K] > 0.5, extra=extras
        )

    def adjust(self, X: Any, inputs: AdjustInputs, check: bool = True) -> Any:
        import dask.array as da

        params = da.from_array(inputs.per_feature(), chunks=(-1, X.chunks[1]))
        return da.map_blocks(
            _adjust_block, X, params, inputs.cov_coef.shape[0], inputs.gamma.shape[0],
            inputs.cov_design, inputs.site_idx, inputs.keep_rows, chunks=X.chunks,
            dtype=np.float64,
        )  # fmt: skip


def _packed_stats(block: np.ndarray, block_stats: BlockStats, extra: tuple[str, ...]):
    st = block_stats(block, chunk=None)
    rows = [st.coef, st.ssr_site, st.constant[None, :].astype(np.float64)]
    return np.vstack(rows + [st.extra[name][None, :] for name in extra])


def _adjust_block(
    block: np.ndarray,
    params: np.ndarray,
    n_cov: int,
    n_effects: int,
    cov_design: np.ndarray,
    site_idx: np.ndarray,
    keep_rows: np.ndarray | None,
) -> np.ndarray:
    gm, vp = params[n_cov], params[n_cov + 1]
    gamma = params[n_cov + 2 : n_cov + 2 + n_effects]
    delta = params[n_cov + 2 + n_effects : n_cov + 2 + 2 * n_effects]
    constant = params[-1].astype(bool)
    return adjust(
        block, cov_design, params[:n_cov], gm, vp, gamma, delta, site_idx, keep_rows, constant
    )


def make_engine(engine: str, chunk: int | None = None, client: Any = None):
    """The engine named ``engine`` ("numpy" or "dask"); ValueError otherwise."""
    if engine == "numpy":
        if client is not None:
            raise ValueError("client is used only by engine='dask' (got engine='numpy')")
        return NumpyEngine(chunk)
    if engine == "dask":
        return DaskEngine(chunk, client)
    raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
