"""The GLS algebra of Freedman-Lane permutations for the mass mixed model, batched.

With the relative variance components ``s(f)`` of feature ``f`` fixed at the observed
fit, ``H_s^-1 = I - Z_s M_s Z_s'`` per site with ``M_s = L (I + L Z_s'Z_s L)^-1 L``
(``L = diag(s)``). For a permuted residual vector ``y* = P r``:

* ``X'H^-1 y* = X'y* - sum_s K_s Z_s'y*_s`` with ``K_s = (Z_s'X_s)' M_s``,
* ``y*'H^-1 y* = r'r - sum_s (Z_s'y*_s)' M_s (Z_s'y*_s)`` (``P`` preserves ``r'r``),
* ``beta = C^-1 X'H^-1 y*`` with ``C = X'H^-1 X``, ``rss = y*'H^-1 y* - beta'X'H^-1 y*``,
* ``t = beta_j / sqrt(rss / dof * [C^-1]_jj)``.

Columns of ``U = [X Z]`` constant within every site (the intercept) give products that
a within-site permutation leaves unchanged: computed once. The other columns of ``X``
that are not in ``Z`` need only ``X'y*`` summed over sites: one GEMM over all rows,
``r' (P'U)``, for a block of permutations. Varying columns of ``Z`` (a random slope)
need per-site products: one GEMM per site. The per-feature rest is a compiled loop
(numba) of ``O(G p q)`` per feature and permutation. Products are computed feature
first, ``r'A``, so the compiled loop reads memory contiguously.

References
----------
Freedman D, Lane D (1983). J Bus Econ Stat 1:292-298.
Winkler AM et al. (2014). Permutation inference for the general linear model.
NeuroImage 92:381-397.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from consortium.analysis.mixed import MixedDesign

MICRO = 64  # draws per product; batches are whole multiples of it
_TINY = float(np.finfo(float).tiny)


@numba.njit(cache=True, nogil=True)
def _t_kernel(G1, W, xsrc, xidx, base, Kv, Nv, Mvv, qbase, Cinv, term, dof, out):
    """t for every feature (rows of G1) and permutation; see the module notes.

    Loops run over permutations innermost, on contiguous memory, so they vectorize.
    """
    mc, B = G1.shape[0], G1.shape[1]
    G, qv, p = W.shape[0], W.shape[3], base.shape[1]
    v = np.empty((p, B))
    quad = np.empty(B)
    beta = np.empty(B)
    explained = np.empty(B)
    for f in range(mc):
        for i in range(p):
            for b in range(B):
                v[i, b] = base[f, i]
            if xsrc[i] == 1:
                for b in range(B):
                    v[i, b] += G1[f, b, xidx[i]]
            elif xsrc[i] == 2:
                for s in range(G):
                    for b in range(B):
                        v[i, b] += W[s, f, b, xidx[i]]
        quad[:] = 0.0
        for s in range(G):
            for j in range(qv):
                for i in range(p):
                    k_ij = Kv[f, s, i, j]
                    for b in range(B):
                        v[i, b] -= k_ij * W[s, f, b, j]
                n_j = 2.0 * Nv[f, s, j]
                for b in range(B):
                    quad[b] += n_j * W[s, f, b, j]
                for k in range(qv):
                    m_jk = Mvv[f, s, j, k]
                    for b in range(B):
                        quad[b] += m_jk * W[s, f, b, j] * W[s, f, b, k]
        explained[:] = 0.0
        for i in range(p):
            for b in range(B):
                beta[b] = 0.0
            for k in range(p):
                c_ik = Cinv[f, i, k]
                for b in range(B):
                    beta[b] += c_ik * v[k, b]
            for b in range(B):
                explained[b] += v[i, b] * beta[b]
            if i == term:
                for b in range(B):
                    out[b, f] = beta[b]
        scale = Cinv[f, term, term] / dof
        for b in range(B):
            rss = max(qbase[f] - quad[b] - explained[b], _TINY)
            out[b, f] = out[b, f] / np.sqrt(rss * scale)


@dataclass
class Engine:
    """Everything a batch of draws needs (arrays feature first); picklable for dask."""

    starts: np.ndarray  # site boundaries in the site-sorted row order (G + 1)
    U: np.ndarray  # distinct columns of [X Z], site-sorted rows (n, k)
    g_cols: np.ndarray  # columns of U in the all-rows GEMM (varying, in X only)
    z_var: np.ndarray  # columns of U of the varying Z columns (per-site GEMMs)
    xsrc: np.ndarray  # per X column: 0 constant, 1 GEMM, 2 sum of per-site products
    xidx: np.ndarray
    rT: np.ndarray  # reduced-model residuals, features x site-sorted rows (m, n)
    base: np.ndarray  # (m, p): constant part of X'H^-1 y*
    Kv: np.ndarray  # (m, G, p, qv)
    Nv: np.ndarray  # (m, G, qv)
    Mvv: np.ndarray  # (m, G, qv, qv)
    qbase: np.ndarray  # (m,): r'r - constant part of the quadratic form
    flip_parts: np.ndarray  # (G, p, m): X_s'H_s^-1 r_s, for whole-site sign flips
    flip_quad: np.ndarray  # (m,): r'H^-1 r, invariant under whole-site flips
    Cinv: np.ndarray  # (m, p, p)
    term: int
    dof: int
    two_sided: bool
    chunk: int
    nulls: Mapping[str, Callable[[np.ndarray], np.ndarray]]

    @property
    def n_features(self) -> int:
        return self.rT.shape[0]

    def _permuted(self, perms: np.ndarray, sl: slice) -> np.ndarray:
        B, m = perms.shape[0], sl.stop - sl.start
        inverse = np.empty_like(perms)
        np.put_along_axis(inverse, perms, np.arange(perms.shape[1])[None], axis=1)
        moved = self.U[inverse]  # (B, n, k): rows of U moved as the residuals are
        kg, qv = self.g_cols.size, self.z_var.size
        G1 = self.rT[sl] @ moved[:, :, self.g_cols].transpose(1, 0, 2).reshape(-1, B * kg)
        W = np.empty((self.starts.size - 1, m, B, qv))
        for s in range(self.starts.size - 1):
            a, b = self.starts[s], self.starts[s + 1]
            A = moved[:, a:b][:, :, self.z_var].transpose(1, 0, 2).reshape(b - a, B * qv)
            np.matmul(self.rT[sl, a:b], A, out=W[s].reshape(m, B * qv))
        out = np.empty((B, m))
        _t_kernel(
            G1.reshape(m, B, kg), W, self.xsrc, self.xidx, self.base[sl], self.Kv[sl],
            self.Nv[sl], self.Mvv[sl], self.qbase[sl], self.Cinv[sl], self.term,
            float(self.dof), out,
        )  # fmt: skip
        return out

    def _flipped(self, signs: np.ndarray, sl: slice) -> np.ndarray:
        G, p = self.flip_parts.shape[:2]
        m = sl.stop - sl.start
        v = (signs @ self.flip_parts[:, :, sl].reshape(G, p * m)).reshape(-1, p, m)
        Cinv = self.Cinv[sl]
        beta = np.einsum("fik,bkf->bif", Cinv, v)
        rss = np.maximum(self.flip_quad[sl] - np.einsum("bif,bif->bf", v, beta), _TINY)
        scale = rss / self.dof * Cinv[:, self.term, self.term]
        return beta[:, self.term] / np.sqrt(scale)

    def t_batch(self, draws: np.ndarray, signflip: bool) -> np.ndarray:
        """t for ``draws``, computed in blocks of exactly ``MICRO`` draws.

        Every product has the same shape whatever the batch, so a permutation's t does
        not depend on its neighbours in the batch (BLAS results can differ in the last
        bit with the shape of a product); the last block is padded with the identity.
        """
        m, B = self.n_features, draws.shape[0]
        pad = -B % MICRO
        if pad:
            identity = np.ones(draws.shape[1]) if signflip else np.arange(draws.shape[1])
            draws = np.vstack([draws, np.tile(identity.astype(draws.dtype), (pad, 1))])
        fn = self._flipped if signflip else self._permuted
        out = np.empty((draws.shape[0], m))
        for first in range(0, draws.shape[0], MICRO):
            rows = slice(first, first + MICRO)
            for start in range(0, m, self.chunk):
                sl = slice(start, min(start + self.chunk, m))
                out[rows, sl] = fn(draws[rows], sl)
        return out[:B]

    def reduce(self, t: np.ndarray, observed: np.ndarray) -> dict[str, np.ndarray]:
        """Max statistic, per-feature exceedances and the extra null statistics of a batch."""
        stat = np.abs(t) if self.two_sided else t
        out = {"max": stat.max(axis=1), "exceed": (stat >= observed[None]).sum(axis=0)}
        for name, fn in self.nulls.items():
            out[name] = np.asarray(fn(t))
        return out


def run_batch(
    engine: Engine, draws: np.ndarray, signflip: bool, observed: np.ndarray
) -> dict[str, np.ndarray]:
    """One dask task: t of a batch of draws, reduced."""
    return engine.reduce(engine.t_batch(draws, signflip), observed)


def _unique_columns(U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct columns of ``U`` and, for every column, its index among them."""
    keep: list[int] = []
    where = np.empty(U.shape[1], dtype=np.int64)
    for j in range(U.shape[1]):
        match = [k for k, i in enumerate(keep) if np.array_equal(U[:, i], U[:, j])]
        where[j] = match[0] if match else len(keep)
        if not match:
            keep.append(j)
    return U[:, keep], where


def _reduced_residuals(
    X: np.ndarray, Z: np.ndarray, Y: np.ndarray, blocks, s: np.ndarray, term: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``M_s``, ``K_s``, ``C = X'H^-1 X`` per feature and the reduced model's GLS residuals."""
    p, q = X.shape[1], Z.shape[1]
    ZZ = np.stack([Z[a:b].T @ Z[a:b] for a, b in blocks])
    ZX = np.stack([Z[a:b].T @ X[a:b] for a, b in blocks])
    inner = s[:, None, :, None] * ZZ[None] * s[:, None, None, :] + np.eye(q)
    M = s[:, None, :, None] * np.linalg.inv(inner) * s[:, None, None, :]  # (m, G, q, q)
    K = np.einsum("gjp,fgjk->fgpk", ZX, M)  # (Z_s'X_s)' M_s: (m, G, p, q)
    C = X.T @ X - np.einsum("fgpk,gkr->fpr", K, ZX)  # X'H^-1 X
    Zy = np.stack([Z[a:b].T @ Y[a:b] for a, b in blocks])
    Xhy = (X.T @ Y).T - np.einsum("fgpk,gkf->fp", K, Zy)  # X'H^-1 y
    red = [i for i in range(p) if i != term]
    beta_r = np.linalg.solve(C[:, red][:, :, red], Xhy[:, red][..., None])[..., 0]
    return M, K, C, Y - X[:, red] @ beta_r.T


def _column_roles(x_cols: np.ndarray, z_cols: np.ndarray, varying: set[int]):
    """Where each X column's ``X'y*`` comes from: 0 constant, 1 all-rows GEMM, 2 per-site sums."""
    zv = [j for j in range(z_cols.size) if z_cols[j] in varying]
    zi = [j for j in range(z_cols.size) if z_cols[j] not in varying]
    z_var = z_cols[zv]
    g_cols = np.array(sorted(varying - set(z_var.tolist())), dtype=np.int64)
    xsrc = np.zeros(x_cols.size, dtype=np.int64)
    xidx = np.zeros(x_cols.size, dtype=np.int64)
    for i, u in enumerate(x_cols):
        if u in z_var:
            xsrc[i], xidx[i] = 2, int(np.flatnonzero(z_var == u)[0])
        elif u in varying:
            xsrc[i], xidx[i] = 1, int(np.searchsorted(g_cols, u))
    return zv, zi, z_var, g_cols, xsrc, xidx


def build_engine(
    Y: np.ndarray, design: MixedDesign, s: np.ndarray, term: int, reml: bool, **kwargs: Any
) -> Engine:
    """Reduced-model residuals and every per-feature constant, for relative SDs ``s``."""
    order = np.argsort(design.codes, kind="stable")
    X, Z, Y = design.X[order], design.Z[order], Y[order]
    starts = np.concatenate([[0], np.cumsum(np.bincount(design.codes))])
    blocks = list(zip(starts[:-1], starts[1:], strict=True))
    n, p = X.shape
    M, K, C, r = _reduced_residuals(X, Z, Y, blocks, s, term)
    U, where = _unique_columns(np.column_stack([X, Z]))
    x_cols, z_cols = where[:p], where[p:]
    varying = {j for j in range(U.shape[1]) if any(np.ptp(U[a:b, j]) > 0 for a, b in blocks)}
    zv, zi, z_var, g_cols, xsrc, xidx = _column_roles(x_cols, z_cols, varying)
    Ur = np.stack([r[a:b].T @ U[a:b] for a, b in blocks], axis=1)  # (m, G, k): U_s' r_s
    w_inv = Ur[:, :, z_cols[zi]]  # (m, G, qi): Z'y* of the invariant Z columns
    base = np.where(xsrc == 0, Ur[:, :, x_cols].sum(axis=1), 0.0)
    base -= np.einsum("fgpk,fgk->fp", K[:, :, :, zi], w_inv)
    Mi = M[:, :, zi][:, :, :, zi]
    w_all = Ur[:, :, z_cols]
    flip_parts = Ur[:, :, x_cols] - np.einsum("fgpk,fgk->fgp", K, w_all)
    rr = np.einsum("if,if->f", r, r)
    return Engine(
        starts=starts, U=U, g_cols=g_cols, z_var=z_var, xsrc=xsrc, xidx=xidx,
        rT=np.ascontiguousarray(r.T), base=np.ascontiguousarray(base),
        Kv=np.ascontiguousarray(K[:, :, :, zv]),
        Nv=np.ascontiguousarray(np.einsum("fgjk,fgk->fgj", M[:, :, zv][:, :, :, zi], w_inv)),
        Mvv=np.ascontiguousarray(M[:, :, zv][:, :, :, zv]),
        qbase=rr - np.einsum("fgj,fgjk,fgk->f", w_inv, Mi, w_inv),
        flip_parts=np.ascontiguousarray(np.moveaxis(flip_parts, 0, -1)),
        flip_quad=rr - np.einsum("fgj,fgjk,fgk->f", w_all, M, w_all),
        Cinv=np.linalg.inv(C), term=term, dof=n if not reml else n - p, **kwargs,
    )  # fmt: skip
