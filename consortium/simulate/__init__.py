"""Simulate a multi-site consortium: the files each hospital would hold.

For every site the simulator writes what a site's data manager has on disk
after local preprocessing, in the formats the site agent reads:

- a phenotype table (CSV, TSV or XLSX, with the site's own column names and
  codes; the site config maps them to the canonical columns),
- one Dosenbach-160 ROI time series per subject, as C-PAC ``.1D`` (optionally
  gzip-compressed), DPARSF ``ROISignals_<subject>.mat`` (variable
  ``ROISignals``, a wider matrix whose columns 1409-1568 are Dosenbach 160) or
  fMRIPrep/XCP-D-style TSV with a header,
- one ALFF-like voxel map per subject on a coarse MNI grid (the MNI152 brain
  mask that nilearn ships, resampled to ``voxel_size`` mm) and the site's mask,
- the data section of the site config (``site.toml``).

Design
------
The default design has the 17 sites of the REST-meta-MDD mixed-model analysis
[1]_ with their sizes, diagnosis counts and covariate distributions, from the
per-site, per-group facts in ``consortium/data/restmeta_sites.csv`` (made by
:func:`summarize_design` from the published design; no subject-level rows are
shipped). Ages, education and sex are drawn per group from those facts;
mean framewise displacement from a log-normal with the group's mean and SD.

Signal model
------------
Each subject's time series (volumes x 160 ROIs) is drawn from a
network-structured covariance built from latent factors, so no per-subject
160 x 160 factorization is needed::

    f_g   = sqrt(c_g) G + sqrt(1 - c_g) h_g                 (network factors)
    x_k   = sqrt(rho_g) f_g + sqrt(1 - rho_g) e_k + a m_k   (ROI k in network g)

with ``G`` a global factor, ``h_g`` and ``e_k`` independent white noise,
``rho_g = tanh(z_g)`` the subject's within-network correlation and ``m`` a
spatially smooth motion field (covariance ``exp(-distance / 20 mm)``, one
Cholesky factor shared by all subjects) whose amplitude ``a`` grows with the
subject's mean FD: motion raises short-range coupling. All series are then
passed through the same AR(1) filter (BOLD autocorrelation), which leaves the
correlations unchanged in expectation. The within-network Fisher z of a
subject is::

    z_g = z0_g + gamma_{s,g} + b_age (age - 35) + b_sex [female]
          + delta_s u_g + Delta [case]  (Delta only for the default network)

with ``u_g ~ N(0, tau^2)`` between-subject variation, ``gamma_{s,g}`` additive
and ``delta_s`` multiplicative site effects (log-normal, normalized so that
their subject-weighted mean square is 1). ``z`` is clipped to [0.02, 1.5]
before ``rho = tanh(z)``.

Calibration of the effect size
------------------------------
The planted effect is a standardized mean difference ``d`` on the outcome of
the published analysis, the mean Fisher-z FC over the 528 pairs of the 33
REST-meta-MDD DMN ROIs, computed from the time series. Its residual SD
(given age, sex, education and motion, within a site) combines ``tau``, the
finite-length sampling noise of the correlations and the motion artefact, and
the observed shift is slightly attenuated by motion. :func:`calibrate_effect`
measures both on a pilot sample with a fixed seed: the residual SD ``sigma``
from an OLS fit on 600 simulated controls, and the gain ``kappa`` of the
observed mean DMN FC per unit shift of ``z`` by common random numbers (the
same draws with and without a shift). The latent shift is then
``Delta = d sigma / kappa``, so the expected standardized difference of mean
DMN FC between cases and controls within a site is ``d``.

Modules
-------
:mod:`consortium.simulate.model`
    The signal parameters (:class:`SignalModel`), the calibration result and
    the calibrated outcome (:func:`mean_dmn_fc`).
:mod:`consortium.simulate.design`
    The REST-meta-MDD facts and the subjects drawn from them.
:mod:`consortium.simulate.site_files`
    The sites' file styles, file writers and site configs.
:mod:`consortium.simulate.grid`
    The coarse MNI grid of the voxel maps.
:mod:`consortium.simulate.simulator`
    :class:`ConsortiumSimulator` and :func:`simulate_consortium`.

This package re-exports the public names of these modules.

References
----------
.. [1] Yan C.-G. et al. (2019). Reduced default mode network functional
   connectivity in patients with recurrent major depressive disorder. PNAS
   116:9078-9083.
.. [2] Dosenbach N.U.F. et al. (2010). Prediction of individual brain maturity
   using fMRI. Science 329:1358-1361.
"""

from __future__ import annotations

from consortium.simulate.design import FACTS_FILE, draw_group, load_site_facts, summarize_design
from consortium.simulate.grid import MapGrid, map_grid
from consortium.simulate.model import (
    GLOBAL_SHARE,
    NETWORK_Z,
    Calibration,
    SignalModel,
    SimulationError,
    mean_dmn_fc,
)
from consortium.simulate.simulator import ConsortiumSimulator, simulate_consortium
from consortium.simulate.site_files import (
    DPARSF_COLUMNS,
    DPARSF_WIDTH,
    PHENOTYPE_FORMATS,
    TIMESERIES_FORMATS,
    SimulatedSite,
    SiteStyle,
    site_data_config,
    site_style,
    write_phenotypes,
    write_site_config,
    write_timeseries,
)

__all__ = [
    "DPARSF_COLUMNS",
    "DPARSF_WIDTH",
    "FACTS_FILE",
    "GLOBAL_SHARE",
    "NETWORK_Z",
    "PHENOTYPE_FORMATS",
    "TIMESERIES_FORMATS",
    "Calibration",
    "ConsortiumSimulator",
    "MapGrid",
    "SignalModel",
    "SimulatedSite",
    "SimulationError",
    "SiteStyle",
    "draw_group",
    "load_site_facts",
    "map_grid",
    "mean_dmn_fc",
    "simulate_consortium",
    "site_data_config",
    "site_style",
    "summarize_design",
    "write_phenotypes",
    "write_site_config",
    "write_timeseries",
]
