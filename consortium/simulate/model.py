"""Parameters of the simulated signal, the calibration result and the calibrated outcome.

Part of :mod:`consortium.simulate` (whose docstring describes the signal model):
:class:`SignalModel`, :class:`Calibration`, the outcome the effect is planted on
(:func:`mean_dmn_fc`) and :class:`SimulationError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Within-network Fisher z at age 35 (male control, reference site).
NETWORK_Z = {
    "default": 0.45,
    "visual": 0.55,
    "somatomotor": 0.50,
    "dorsal_attention": 0.42,
    "ventral_attention": 0.38,
    "frontoparietal": 0.36,
    "subcortical": 0.30,
}
# Share of each network factor explained by the global factor (between-network coupling).
GLOBAL_SHARE = {
    "default": 0.10,
    "visual": 0.20,
    "somatomotor": 0.25,
    "dorsal_attention": 0.25,
    "ventral_attention": 0.20,
    "frontoparietal": 0.15,
    "subcortical": 0.10,
}


class SimulationError(ValueError):
    """Invalid simulator options."""


@dataclass(frozen=True)
class SignalModel:
    """Parameters of the simulated BOLD signal (see the module docstring).

    Parameters
    ----------
    effect_size : float
        Planted standardized difference ``d`` (case minus control) of mean DMN
        Fisher-z FC, within site, given the covariates.
    n_volumes : int
        Volumes per time series.
    network_z : dict
        Within-network Fisher z of a 35-year-old male control.
    global_share : dict
        Share of each network factor explained by the global factor.
    tau : float
        Between-subject SD of within-network z.
    age_slope, female_shift : float
        Change of within-network z per year of age and for women.
    motion_gain : float
        Amplitude of the motion field per mm of mean FD.
    motion_length_mm : float
        Spatial length scale of the motion field.
    ar1 : float
        AR(1) coefficient of the BOLD noise.
    site_additive_sd, site_multiplicative_sd : float
        SD of the additive site shift of within-network z, and of the log of
        the multiplicative site factor of the between-subject variation.
    map_effect_size : float
        Planted standardized difference of ALFF near DMN ROIs.
    """

    effect_size: float = -0.2
    n_volumes: int = 150
    network_z: dict[str, float] = field(default_factory=lambda: dict(NETWORK_Z))
    global_share: dict[str, float] = field(default_factory=lambda: dict(GLOBAL_SHARE))
    tau: float = 0.08
    age_slope: float = -0.002
    female_shift: float = 0.015
    motion_gain: float = 3.0
    motion_length_mm: float = 20.0
    ar1: float = 0.4
    site_additive_sd: float = 0.05
    site_multiplicative_sd: float = 0.25
    map_effect_size: float = -0.3


@dataclass(frozen=True)
class Calibration:
    """Result of :func:`calibrate_effect`.

    Attributes
    ----------
    sigma : float
        Residual SD of mean DMN FC given the covariates (pilot controls).
    kappa : float
        Observed change of mean DMN FC per unit latent shift of DMN z.
    shift : float
        Latent shift ``Delta = d sigma / kappa`` planted in cases.
    """

    sigma: float
    kappa: float
    shift: float


def mean_dmn_fc(series: np.ndarray, dmn: np.ndarray) -> np.ndarray:
    """Mean Fisher-z FC over the DMN ROI pairs, per subject.

    Parameters
    ----------
    series : ndarray of shape (n_subjects, n_volumes, n_rois)
    dmn : boolean ndarray of shape (n_rois,)
    """
    x = series[:, :, dmn].astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    corr = np.einsum("ntk,ntl->nkl", x, x)
    iu = np.triu_indices(int(dmn.sum()), k=1)
    return np.arctanh(np.clip(corr[:, iu[0], iu[1]], -0.9999999, 0.9999999)).mean(axis=1)
