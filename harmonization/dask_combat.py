"""Out-of-core ComBat on dask arrays chunked by features.

Pass 1 maps each block of features to its least-squares statistics
(coefficients, per-site residual sums of squares, constant-feature flags):
small (n_sites + n_covariates + n_sites + 1) x V arrays, gathered on the
client. The empirical Bayes step (per site, across features) runs there on
those; pass 2 maps the adjustment over the same blocks and returns a lazy
dask array (store it with ``to_zarr`` or compute it). Only one block of
subjects x features is in a worker's memory at a time.

Runs on dask's local scheduler by default, or on a ``dask.distributed``
cluster when given a ``Client`` or a scheduler address.

References
----------
Johnson et al. (2007) Biostatistics 8, 118-127; Fortin et al. (2018)
NeuroImage 167, 104-120.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd

from .combat import ComBat, LSStats, _check_rank, _site_codes, adjust, least_squares_stats

__all__ = ["DaskComBat"]


def _stats_block(block: np.ndarray, design: np.ndarray, site_idx: np.ndarray, K: int):
    st = least_squares_stats(block, design, site_idx, K)
    return np.vstack([st.coef, st.ssr_site, st.constant[None, :].astype(np.float64)])


def _adjust_block(block: np.ndarray, params: np.ndarray, K: int, p_cov: int, **kw) -> np.ndarray:
    cov_coef = params[:p_cov]
    gm, vp = params[p_cov], params[p_cov + 1]
    gamma = params[p_cov + 2 : p_cov + 2 + kw["n_effects"]]
    delta = params[p_cov + 2 + kw["n_effects"] : p_cov + 2 + 2 * kw["n_effects"]]
    constant = params[-1].astype(bool)
    return adjust(
        block, kw["cov_design"], cov_coef, gm, vp, gamma, delta, kw["site_idx"],
        kw["keep_rows"], constant,
    )  # fmt: skip


class DaskComBat(ComBat):
    """ComBat for a dask array X (subjects x features, chunked by features).

    Parameters
    ----------
    client : distributed.Client or str, optional
        Cluster to run on (a scheduler address is connected to); default:
        dask's local scheduler.
    eb, parametric, mean_only, ref_site, new_sites
        As in :class:`harmonization.combat.ComBat`. New sites at transform
        are not supported by this engine (ValueError).

    Notes
    -----
    ``transform`` returns a lazy dask array with X's feature chunks; the fitted
    attributes are numpy arrays as in ``ComBat`` (per site / per feature).
    """

    def __init__(
        self,
        eb: bool = True,
        parametric: bool = True,
        mean_only: bool = False,
        ref_site: Any = None,
        new_sites: str = "error",
        client: Any = None,
    ) -> None:
        super().__init__(eb, parametric, mean_only, ref_site, new_sites)
        self.client = client

    def _compute(self, obj):
        if self.client is None:
            return dask.compute(obj)[0]
        client = self.client
        if isinstance(client, str):
            from distributed import Client

            client = Client(client)
        return client.compute(obj, sync=True)

    @staticmethod
    def _as_dask(X) -> da.Array:
        X = X if isinstance(X, da.Array) else da.from_array(np.asarray(X), chunks=(-1, 2048))
        if X.ndim != 2:
            raise ValueError(f"X must be subjects x features (2-D), got shape {X.shape}")
        return X.rechunk({0: -1})

    def fit(self, X, sites: Any, covariates: pd.DataFrame | None = None) -> DaskComBat:
        X = self._as_dask(X)
        n, V = X.shape
        labels, site_idx = _site_codes(sites, n)
        counts = np.bincount(site_idx, minlength=len(labels)).astype(np.float64)
        self._check_site_sizes(labels, counts)
        ref = self._ref_index(labels)
        encoder = self._make_encoder().fit(covariates)
        cov_design = encoder.transform(covariates, n)
        design = np.hstack([np.eye(len(labels))[site_idx], cov_design])
        _check_rank(design, [f"site {v}" for v in labels] + encoder.names)
        K, p = len(labels), design.shape[1]
        packed = X.map_blocks(
            _stats_block, design, site_idx, K,
            chunks=((p + K + 1,), X.chunks[1]), dtype=np.float64,
        )  # fmt: skip
        packed = np.asarray(self._compute(packed))
        stats = LSStats(coef=packed[:p], ssr_site=packed[p : p + K], constant=packed[-1] > 0.5)
        self._finish_fit(labels, counts, ref, encoder, stats)
        return self

    def transform(self, X, sites: Any, covariates: pd.DataFrame | None = None) -> da.Array:
        self._check_fitted()
        X = self._as_dask(X)
        n, V = X.shape
        if V != self.n_features_in_:
            raise ValueError(f"X has {V} features, the model was fitted on {self.n_features_in_}")
        known = {str(v): k for k, v in enumerate(self.sites_)}
        labels = [str(v) for v in np.asarray(sites, dtype=object).ravel()]
        if len(labels) != n:
            raise ValueError(f"sites has {len(labels)} labels but X has {n} subjects")
        unknown = sorted(set(labels) - set(known))
        if unknown:
            raise ValueError(f"site {unknown[0]!r} was not seen at fit (dask engine)")
        site_idx = np.array([known[v] for v in labels], dtype=np.intp)
        cov_design = self.encoder_.transform(covariates, n)
        K = len(self.sites_)
        params = np.vstack(
            [
                self.coef_[K:], self.grand_mean_, self.var_pooled_, self.gamma_star_,
                self.delta_star_, self.constant_features_.astype(np.float64),
            ]
        )  # fmt: skip
        params = da.from_array(params, chunks=(-1, X.chunks[1]))
        keep_rows = None if self.ref_index_ is None else site_idx == self.ref_index_
        return da.map_blocks(
            _adjust_block, X, params, K, self.coef_.shape[0] - K,
            n_effects=K, cov_design=cov_design, site_idx=site_idx, keep_rows=keep_rows,
            chunks=X.chunks, dtype=np.float64,
        )  # fmt: skip

    def fit_transform(self, X, sites: Any, covariates: pd.DataFrame | None = None) -> da.Array:
        return self.fit(X, sites, covariates).transform(X, sites, covariates)
