"""ComBat harmonization of site effects (Johnson 2007; Fortin 2017, 2018).

The model for feature v of subject i at site j is

    x_iv = alpha_v + C_i beta_v + gamma_jv + delta_jv * eps_iv,

with covariates C (one-hot categorical, linear numeric), additive site effect
gamma and multiplicative site effect delta. ComBat estimates alpha, beta and
the pooled variance by least squares, standardizes the data, estimates
gamma/delta per site and feature, shrinks them with empirical Bayes across
features and removes them. The numbers are the same as R ``neuroCombat`` /
``sva::ComBat`` and ``neuroHarmonize`` (parametric and non-parametric priors,
no-EB, mean-only, reference site).

This module holds the estimator; the passes over X and the engines that run
them are in :mod:`harmonization._engine`, the empirical Bayes step in
:mod:`harmonization.eb`, the covariate encoding in
:mod:`harmonization.covariates` and the ``.npz`` format in
:mod:`harmonization.persistence`.

The engine never forms the standardized data: one pass over the features
(in cache-sized chunks, subjects sorted by site so that per-site sums are
contiguous slices) gives the least-squares coefficients and, per site, the
residual sums of squares, which are all that the empirical Bayes step needs;
a second pass over blocks of whole subject rows writes the harmonized data.
The only array of X's size that is allocated is the output.

References
----------
Johnson, W. E., Li, C., Rabinovic, A. (2007). Adjusting batch effects in
microarray expression data using empirical Bayes methods. Biostatistics 8(1),
118-127.
Fortin, J.-P. et al. (2017). Harmonization of multi-site diffusion tensor
imaging data. NeuroImage 161, 149-170.
Fortin, J.-P. et al. (2018). Harmonization of cortical thickness measurements
across scanners and sites. NeuroImage 167, 104-120.
Pomponio, R. et al. (2020). Harmonization of large MRI datasets for the
analysis of brain imaging patterns throughout the lifespan. NeuroImage 208,
116450.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError

from ._design import _check_finite_chunk, _check_rank, _site_codes, _site_labels
from ._engine import AdjustInputs, LSStats, _chunks, adjust, least_squares_stats, make_engine
from .covariates import CovariateEncoder
from .eb import EBResult, empirical_bayes, standardized_moments
from .persistence import model_from_bytes, model_to_bytes

__all__ = [
    "ComBat", "combat", "CovariateEncoder", "EBResult", "LSStats", "adjust", "empirical_bayes",
    "least_squares_stats", "standardized_moments",
]  # fmt: skip

_NEW_SITES = ("estimate", "error")


class ComBat(TransformerMixin, BaseEstimator):
    """ComBat harmonization as a scikit-learn estimator.

    Parameters
    ----------
    eb : bool, default=True
        Shrink the site effects with empirical Bayes priors across features.
    parametric : bool, default=True
        Parametric priors (normal / inverse gamma) or the non-parametric
        leave-one-feature-out weighting (O(V^2) per site).
    mean_only : bool, default=False
        Remove only the additive site effect (multiplicative effect fixed at 1).
    ref_site : label, optional
        Reference site: its data are left unchanged, the other sites are
        mapped onto its mean and variance (pooled variance from it alone).
    new_sites : {"estimate", "error"}, default="estimate"
        What ``transform`` does with a site not seen at fit: estimate its
        effects from its own subjects (see Notes) or raise ``ValueError``.
        The dask engine always raises.
    chunk : int, optional
        Numpy engine: features per block in the two passes over X (default:
        about 2 MiB of float64 per block in the least-squares pass, whole
        rows in the adjustment pass). Dask engine: features per dask chunk.
    engine : {"numpy", "dask"}, default="numpy"
        Where the passes over X run: in memory, or mapped over the feature
        chunks of a dask array (``transform`` then returns a lazy dask array).
    client : distributed.Client, optional
        Dask engine only: the cluster to compute on, passed in by the caller
        (harmonization never connects to a scheduler). Default: dask's local
        scheduler. Not saved by :meth:`to_bytes`.

    Attributes
    ----------
    sites_ : list
        Site labels seen at fit (sorted).
    site_counts_ : ndarray (n_sites,)
    ref_index_ : int or None
        Index of the reference site in ``sites_``.
    encoder_ : CovariateEncoder
    coef_ : ndarray (n_sites + n_covariate_columns, V)
        Least-squares coefficients, one-hot site columns first.
    grand_mean_, var_pooled_ : ndarray (V,)
    gamma_hat_, delta_hat_, gamma_star_, delta_star_ : ndarray (n_sites, V)
    constant_features_ : ndarray of bool (V,)
        Features with zero variance within some site; passed through
        unchanged and left out of the empirical Bayes priors (as R
        ``neuroCombat`` does).
    n_features_in_ : int

    Notes
    -----
    The site labels are the second argument of ``fit``/``transform`` (where
    scikit-learn passes ``y``): ``fit(X, sites, covariates)``.

    ``transform`` with subjects from a site not seen at fit estimates that
    site's location/scale effects from its own subjects with the stored
    coefficients, pooled variance and grand mean, and shrinks them with
    priors from the new site's own features. The covariates of the new
    subjects are required. Never use the diagnosis (or any outcome of a
    later analysis) of held-out test subjects as a covariate: it would leak
    the outcome into the harmonized data.

    A site with a single subject, a non-finite value, a covariate collinear
    with site, or an unknown categorical level raise ``ValueError`` naming
    the site, subject row / feature index or column.

    References
    ----------
    Johnson et al. (2007) Biostatistics 8, 118-127; Fortin et al. (2017)
    NeuroImage 161, 149-170; Fortin et al. (2018) NeuroImage 167, 104-120;
    Pomponio et al. (2020) NeuroImage 208, 116450.
    """

    _EXTRA_ARRAYS: tuple[str, ...] = ()

    def __init__(
        self,
        eb: bool = True,
        parametric: bool = True,
        mean_only: bool = False,
        ref_site: Any = None,
        new_sites: str = "estimate",
        chunk: int | None = None,
        engine: str = "numpy",
        client: Any = None,
    ) -> None:
        self.eb = eb
        self.parametric = parametric
        self.mean_only = mean_only
        self.ref_site = ref_site
        self.new_sites = new_sites
        self.chunk = chunk
        self.engine = engine
        self.client = client

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True  # the site labels, passed where sklearn passes y
        tags.input_tags.allow_nan = False
        return tags

    # -- parameters ---------------------------------------------------------

    def _check_params(self) -> None:
        """Validate the parameters (at fit: ``__init__`` stores them unchanged)."""
        for name in ("eb", "parametric", "mean_only"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.new_sites not in _NEW_SITES:
            raise ValueError(f"new_sites must be one of {_NEW_SITES}, got {self.new_sites!r}")
        chunk = self.chunk
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int | np.integer)
                                  or chunk < 1):  # fmt: skip
            raise ValueError(f"chunk must be a positive integer or None, got {chunk!r}")

    def _engine(self):
        return make_engine(self.engine, self.chunk, self.client)

    # -- fitting ------------------------------------------------------------

    def fit(self, X: Any, sites: Any = None, covariates: pd.DataFrame | None = None) -> ComBat:
        """Estimate the site effects from X (subjects x features), the sites and covariates."""
        self._fit(X, sites, covariates)
        return self

    def fit_transform(
        self, X: Any, sites: Any = None, covariates: pd.DataFrame | None = None, **fit_params: Any
    ) -> Any:
        """``fit`` then ``transform`` of the same subjects (one pass fewer in memory)."""
        X, engine, site_idx, cov_design = self._fit(X, sites, covariates)
        if engine.name != "numpy":
            return self.transform(X, sites, covariates)
        # X was checked for non-finite values during fit
        return self._adjust(engine, X, site_idx, cov_design, self.gamma_star_, self.delta_star_,
                            check=False)  # fmt: skip

    def _fit(self, X, sites, covariates):
        self._check_params()
        self._require_sites(sites)
        engine = self._engine()
        X = engine.check_X(X)
        n = X.shape[0]
        if n < 2:
            raise ValueError("X has 1 sample (one subject): ComBat needs subjects of 2 sites")
        labels, site_idx = _site_codes(sites, n)
        K = len(labels)
        counts = np.bincount(site_idx, minlength=K).astype(np.float64)
        self._check_site_sizes(labels, counts)
        ref = self._ref_index(labels)
        encoder = self._make_encoder().fit(covariates)
        cov_design = encoder.transform(covariates, n)
        design = np.hstack([np.eye(K)[site_idx], cov_design])
        _check_rank(design, [f"site {v}" for v in labels] + encoder.names)
        block_stats = self._block_stats(design, site_idx, K, encoder)
        stats = engine.stats(X, block_stats, design.shape[1], K, self._EXTRA_ARRAYS)
        self._finish_fit(labels, counts, ref, encoder, stats)
        return X, engine, site_idx, cov_design

    def _require_sites(self, sites: Any) -> None:
        if sites is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None: "
                "pass the site labels (one per subject) as the second argument"
            )

    def _make_encoder(self) -> CovariateEncoder:
        return CovariateEncoder()

    def _block_stats(self, design, site_idx, n_sites, encoder):
        """The mean model: ``f(block, chunk=None) -> LSStats`` (picklable, for dask)."""
        return partial(least_squares_stats, design=design, site_idx=site_idx, n_sites=n_sites)

    def _finish_fit(self, labels, counts, ref, encoder, stats: LSStats) -> None:
        if len(labels) < 2:
            raise ValueError(f"ComBat needs at least 2 sites, got only {labels}")
        grand_mean, var_pooled, site_mean, site_var = standardized_moments(stats, counts, ref)
        keep = ~stats.constant
        zero_var = np.flatnonzero(keep & (var_pooled == 0))
        if zero_var.size:
            raise ValueError(f"feature index {zero_var[0]} has zero residual variance")
        if self.eb and keep.sum() < 2:
            raise ValueError(
                f"empirical Bayes needs at least 2 non-constant features (X has {keep.size} "
                f"feature(s), {int(keep.sum())} non-constant); use eb=False"
            )
        res = empirical_bayes(
            site_mean[:, keep], site_var[:, keep], counts,
            eb=self.eb, parametric=self.parametric, mean_only=self.mean_only, ref=ref,
        )  # fmt: skip
        K, V = site_mean.shape
        self.sites_ = labels
        self.site_counts_ = counts
        self.ref_index_ = ref
        self.encoder_ = encoder
        self.coef_ = stats.coef
        self.grand_mean_ = grand_mean
        self.var_pooled_ = var_pooled
        self.constant_features_ = stats.constant
        for name in ("gamma_hat", "delta_hat", "gamma_star", "delta_star"):
            full = np.zeros((K, V)) if name.startswith("gamma") else np.ones((K, V))
            full[:, keep] = getattr(res, name)
            setattr(self, f"{name}_", full)
        for name, values in stats.extra.items():
            setattr(self, name, values)
        self.n_features_in_ = V

    def _check_site_sizes(self, labels, counts) -> None:
        small = [lab for lab, c in zip(labels, counts, strict=True) if c < 2]
        if small and not self.mean_only:
            raise ValueError(
                f"site {small[0]!r} has a single subject: its variance cannot be estimated "
                "(use mean_only=True or drop the site)"
            )

    def _ref_index(self, labels) -> int | None:
        if self.ref_site is None:
            return None
        matches = [k for k, v in enumerate(labels) if str(v) == str(self.ref_site)]
        if not matches:
            raise ValueError(f"reference site {self.ref_site!r} is not among the sites {labels}")
        return matches[0]

    # -- applying -----------------------------------------------------------

    def transform(self, X: Any, sites: Any = None, covariates: pd.DataFrame | None = None) -> Any:
        """Harmonize X with the fitted model; new sites are estimated from their own data."""
        self._check_fitted()
        engine = self._engine()
        X = engine.check_X(X)
        n, V = X.shape
        if V != self.n_features_in_:
            raise ValueError(
                f"X has {V} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input"
            )
        self._require_sites(sites)
        labels = _site_labels(sites, n)
        cov_design = self.encoder_.transform(covariates, n)
        known = {str(v): k for k, v in enumerate(self.sites_)}
        new = sorted({str(v) for v in labels} - set(known))
        gamma, delta = self.gamma_star_, self.delta_star_
        if new and self.new_sites != "estimate":
            raise ValueError(f"site {new[0]!r} was not seen at fit (known sites: {self.sites_})")
        if new and engine.name != "numpy":
            raise ValueError(f"site {new[0]!r} was not seen at fit (dask engine)")
        if new:
            gamma, delta = self._new_site_effects(X, labels, new, cov_design)
            known.update({s: len(self.sites_) + k for k, s in enumerate(new)})
        site_idx = np.array([known[str(v)] for v in labels], dtype=np.intp)
        return self._adjust(engine, X, site_idx, cov_design, gamma, delta)

    def _adjust(self, engine, X, site_idx, cov_design, gamma, delta, check=True) -> Any:
        keep_rows = None if self.ref_index_ is None else site_idx == self.ref_index_
        inputs = AdjustInputs(
            cov_design, self.coef_[len(self.sites_) :], self.grand_mean_, self.var_pooled_,
            gamma, delta, site_idx, keep_rows, self.constant_features_,
        )  # fmt: skip
        return engine.adjust(X, inputs, check=check)

    def _new_site_effects(self, X, labels, new, cov_design):
        """Location/scale of unseen sites from their own standardized data, then EB."""
        V = self.n_features_in_
        codes = pd.Series([str(v) for v in labels])
        counts = np.array([(codes == s).sum() for s in new], dtype=np.float64)
        self._check_site_sizes(new, counts)
        s_mean = np.empty((len(new), V))
        s_var = np.empty((len(new), V))
        sd = np.sqrt(self.var_pooled_)
        cov_coef = self.coef_[len(self.sites_) :]
        for k, s in enumerate(new):
            rows = np.flatnonzero(codes.to_numpy() == s)
            for cols in _chunks(rows.size, V, self.chunk):
                Xc = np.asarray(X[rows, cols], dtype=np.float64)
                _check_finite_chunk(Xc, cols)
                z = Xc - cov_design[rows] @ cov_coef[:, cols]
                z -= self.grand_mean_[cols]
                z /= sd[cols]
                s_mean[k, cols] = z.mean(axis=0)
                s_var[k, cols] = z.var(axis=0, ddof=1) if rows.size > 1 else 1.0
        keep = ~self.constant_features_
        res = empirical_bayes(
            s_mean[:, keep], s_var[:, keep], counts,
            eb=self.eb, parametric=self.parametric, mean_only=self.mean_only,
        )  # fmt: skip
        g_new, d_new = np.zeros((len(new), V)), np.ones((len(new), V))
        g_new[:, keep], d_new[:, keep] = res.gamma_star, res.delta_star
        return np.vstack([self.gamma_star_, g_new]), np.vstack([self.delta_star_, d_new])

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError(
                f"this {type(self).__name__} instance is not fitted yet; call fit first"
            )

    # -- persistence --------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Serialize the model as ``.npz`` bytes (see :mod:`harmonization.persistence`).

        Only per-site and per-feature parameters are stored (no subject-level
        data); :meth:`from_bytes` never unpickles.
        """
        self._check_fitted()
        return model_to_bytes(self)

    @classmethod
    def from_bytes(cls, payload: bytes) -> ComBat:
        """Rebuild a model written by :meth:`to_bytes` (of this same class)."""
        return model_from_bytes(cls, payload)


def combat(
    X: np.ndarray, sites: Any, covariates: pd.DataFrame | None = None, **options: Any
) -> np.ndarray:
    """Harmonize X (subjects x features) across sites; see :class:`ComBat` for options."""
    return ComBat(**options).fit_transform(X, sites, covariates)

