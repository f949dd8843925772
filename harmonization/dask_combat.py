"""Out-of-core ComBat on dask arrays chunked by features: ComBat on the dask engine.

Pass 1 maps each block of features to its least-squares statistics
(coefficients, per-site residual sums of squares, constant-feature flags):
small (n_sites + n_covariates + n_sites + 1) x V arrays, gathered on the
client. The empirical Bayes step (per site, across features) runs there on
those; pass 2 maps the adjustment over the same blocks and returns a lazy
dask array (store it with ``to_zarr`` or compute it). Only one block of
subjects x features is in a worker's memory at a time. The engine itself is
:class:`harmonization._engine.DaskEngine`; this class only names it.

Runs on dask's local scheduler by default, or on a ``dask.distributed``
cluster when given a ``Client`` (the caller connects; a scheduler address is
refused).

References
----------
Johnson et al. (2007) Biostatistics 8, 118-127; Fortin et al. (2018)
NeuroImage 167, 104-120.
"""

from __future__ import annotations

from typing import Any

from .combat import ComBat

__all__ = ["DaskComBat"]


class DaskComBat(ComBat):
    """ComBat for a dask array X (subjects x features, chunked by features).

    Parameters
    ----------
    eb, parametric, mean_only, ref_site
        As in :class:`harmonization.combat.ComBat`.
    new_sites : {"error"}, default="error"
        New sites at transform are not supported by the dask engine
        (``ValueError`` naming the site).
    client : distributed.Client, optional
        Cluster to run on, connected by the caller; default: dask's local
        scheduler.
    chunk : int, optional
        Features per dask chunk (default: X's own chunks, or 2048 for a
        numpy X).

    Notes
    -----
    Equivalent to ``ComBat(engine="dask", new_sites="error", ...)``. The engine
    is fixed (``engine`` is a class attribute, not a parameter). ``transform``
    returns a lazy dask array with X's feature chunks; the fitted attributes
    are numpy arrays as in ``ComBat``.
    """

    engine = "dask"

    def __init__(
        self,
        eb: bool = True,
        parametric: bool = True,
        mean_only: bool = False,
        ref_site: Any = None,
        new_sites: str = "error",
        client: Any = None,
        chunk: int | None = None,
    ) -> None:
        self.eb = eb
        self.parametric = parametric
        self.mean_only = mean_only
        self.ref_site = ref_site
        self.new_sites = new_sites
        self.client = client
        self.chunk = chunk
