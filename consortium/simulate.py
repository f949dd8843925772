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

References
----------
.. [1] Yan C.-G. et al. (2019). Reduced default mode network functional
   connectivity in patients with recurrent major depressive disorder. PNAS
   116:9078-9083.
.. [2] Dosenbach N.U.F. et al. (2010). Prediction of individual brain maturity
   using fMRI. Science 329:1358-1361.
"""

from __future__ import annotations

import gzip
import io
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io
from scipy import ndimage, signal

from sites.atlas import Atlas, load_atlas
from sites.config import write_toml

FACTS_FILE = "restmeta_sites.csv"
TIMESERIES_FORMATS = ("1D", "mat", "tsv", "1D.gz")
PHENOTYPE_FORMATS = ("csv", "tsv", "xlsx")
DPARSF_COLUMNS = (1409, 1568)  # 1-based, inclusive: Dosenbach 160 in ROISignals
DPARSF_WIDTH = 1568

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


_CALIBRATIONS: dict[tuple, tuple[float, float]] = {}


class SimulationError(ValueError):
    """Invalid simulator options."""


# ---------------------------------------------------------------- design facts


def summarize_design(path: str | Path) -> pd.DataFrame:
    """Summarize a subject-level REST-meta-MDD design into per-site, per-group facts.

    Parameters
    ----------
    path : str or Path
        CSV with columns ``SubID, Site, Dx, Age, Sex, Edu, Motion`` (``Dx``:
        1 MDD, -1 control; ``Sex``: 1 male, 2 female), as
        ``design_848MDD_794NC.csv`` from the authors' public scripts.

    Returns
    -------
    DataFrame
        One row per site and group (``MDD``, ``HC``): ``n``, ``age_mean``,
        ``age_sd``, ``age_min``, ``age_max``, ``female_prop``, ``edu_mean``,
        ``edu_sd``, ``edu_min``, ``edu_max``, ``motion_mean``, ``motion_sd``.
    """
    design = pd.read_csv(path)
    missing = {"Site", "Dx", "Age", "Sex", "Edu", "Motion"} - set(design.columns)
    if missing:
        raise SimulationError(f"{path}: design lacks column(s) {sorted(missing)}")
    design["group"] = design["Dx"].map({1: "MDD", -1: "HC"})
    if design["group"].isna().any():
        raise SimulationError(f"{path}: column Dx must be 1 (MDD) or -1 (control)")
    rows = []
    for (site, group), sub in design.groupby(["Site", "group"], sort=True):
        rows.append(
            {
                "site": int(site),
                "group": group,
                "n": len(sub),
                "age_mean": sub["Age"].mean(),
                "age_sd": sub["Age"].std(),
                "age_min": sub["Age"].min(),
                "age_max": sub["Age"].max(),
                "female_prop": (sub["Sex"] == 2).mean(),
                "edu_mean": sub["Edu"].mean(),
                "edu_sd": sub["Edu"].std(),
                "edu_min": sub["Edu"].min(),
                "edu_max": sub["Edu"].max(),
                "motion_mean": sub["Motion"].mean(),
                "motion_sd": sub["Motion"].std(),
            }
        )
    facts = pd.DataFrame(rows)
    facts["group"] = pd.Categorical(facts["group"], ["MDD", "HC"])
    return facts.sort_values(["site", "group"]).reset_index(drop=True).astype({"group": str})


def load_site_facts() -> pd.DataFrame:
    """The per-site, per-group facts of the REST-meta-MDD design shipped with confed."""
    source = resources.files("consortium") / "data" / FACTS_FILE
    with resources.as_file(source) as path:
        return pd.read_csv(path, comment="#")


# ---------------------------------------------------------------- parameters


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


@dataclass(frozen=True)
class SiteStyle:
    """How one site stores its files (formats, column names, codes)."""

    phenotype_format: str
    timeseries_format: str
    columns: dict[str, str]
    dx_codes: dict[str, object]
    sex_codes: dict[str, object]
    id_prefix: str


_STYLES = (
    # DPARSF-like spreadsheet codes: Dx 1 / -1, Sex 1 = male / 2 = female.
    dict(
        columns={
            "subject_id": "ID",
            "dx": "Dx",
            "age": "Age",
            "sex": "Sex",
            "education_years": "Edu",
            "mean_fd": "MeanFD_Jenkinson",
        },
        dx_codes={"MDD": 1, "HC": -1},
        sex_codes={"M": 1, "F": 2},
        id_prefix="",
    ),
    # BIDS participants.tsv.
    dict(
        columns={
            "subject_id": "participant_id",
            "dx": "diagnosis",
            "age": "age",
            "sex": "sex",
            "education_years": "education",
            "mean_fd": "fd_mean",
        },
        dx_codes={"MDD": "patient", "HC": "control"},
        sex_codes={"M": "male", "F": "female"},
        id_prefix="sub-",
    ),
    # A clinical research database export.
    dict(
        columns={
            "subject_id": "subj",
            "dx": "group",
            "age": "age_years",
            "sex": "gender",
            "education_years": "years_of_schooling",
            "mean_fd": "motion_fd",
        },
        dx_codes={"MDD": 2, "HC": 1},
        sex_codes={"M": "m", "F": "f"},
        id_prefix="P",
    ),
)


def site_style(index: int) -> SiteStyle:
    """The file style of the ``index``-th simulated site (cycles through formats)."""
    base = _STYLES[index % len(_STYLES)]
    return SiteStyle(
        phenotype_format=PHENOTYPE_FORMATS[index % len(PHENOTYPE_FORMATS)],
        timeseries_format=TIMESERIES_FORMATS[index % len(TIMESERIES_FORMATS)],
        **base,
    )


# ---------------------------------------------------------------- the simulator


@dataclass
class SimulatedSite:
    """A simulated site's files and the truth behind them."""

    site_id: str
    directory: Path
    style: SiteStyle
    phenotype_file: Path
    timeseries_dir: Path
    maps_dir: Path
    mask_file: Path
    data_config: dict
    subjects: pd.DataFrame


class ConsortiumSimulator:
    """Simulate the derived data of a multi-site resting-state consortium.

    Parameters
    ----------
    n_sites : int or None
        Number of sites, taken from the REST-meta-MDD design in order of size
        (largest first). ``None``: all 17.
    subjects_scale : float
        Multiplies every site's group sizes (at least 3 subjects per group).
    model : SignalModel
        Signal parameters, including the planted effect size.
    seed : int
        Seed of every random draw; the same seed gives the same files.
    atlas : str or Atlas
        ROI atlas (Dosenbach 160 with its DMN).
    voxel_size : int
        Grid spacing (mm) of the voxel maps.
    facts : DataFrame or None
        Per-site, per-group facts (default: :func:`load_site_facts`).

    Attributes
    ----------
    design_ : DataFrame
        After :meth:`simulate_design`: one row per subject with ``site_id``,
        ``subject_id``, ``dx``, ``age``, ``sex``, ``education_years``,
        ``mean_fd`` and the latent DMN z.
    calibration_ : Calibration
        After :meth:`calibrate`.
    """

    def __init__(
        self,
        n_sites: int | None = None,
        subjects_scale: float = 1.0,
        model: SignalModel | None = None,
        seed: int = 0,
        atlas: str | Atlas = "dosenbach160",
        voxel_size: int = 8,
        facts: pd.DataFrame | None = None,
    ) -> None:
        self.n_sites = n_sites
        self.subjects_scale = subjects_scale
        self.model = model if model is not None else SignalModel()
        self.seed = seed
        self.atlas = atlas
        self.voxel_size = voxel_size
        self.facts = facts

    # -- configuration helpers

    @cached_property
    def atlas_(self) -> Atlas:
        atlas = load_atlas(self.atlas) if isinstance(self.atlas, str) else self.atlas
        if atlas.coords is None or atlas.dmn is None:
            raise SimulationError(f"atlas {atlas.name!r} needs ROI coordinates and a DMN")
        return atlas

    @cached_property
    def networks_(self) -> list[str]:
        return sorted(set(self.atlas_.networks))

    @cached_property
    def _net_index(self) -> np.ndarray:
        return np.array([self.networks_.index(n) for n in self.atlas_.networks])

    @cached_property
    def _motion_factor(self) -> np.ndarray:
        coords = self.atlas_.coords
        dist = np.linalg.norm(coords[:, None, :] - coords[None, :, :], axis=-1)
        kernel = np.exp(-dist / self.model.motion_length_mm)
        return np.linalg.cholesky(kernel + 1e-8 * np.eye(len(kernel)))

    def _site_facts(self) -> pd.DataFrame:
        facts = self.facts if self.facts is not None else load_site_facts()
        sizes = facts.groupby("site")["n"].sum().sort_values(ascending=False, kind="stable")
        n_sites = len(sizes) if self.n_sites is None else self.n_sites
        if not 1 <= n_sites <= len(sizes):
            raise SimulationError(f"n_sites must be between 1 and {len(sizes)}, got {n_sites}")
        if self.subjects_scale <= 0:
            raise SimulationError(f"subjects_scale must be > 0, got {self.subjects_scale}")
        keep = sorted(sizes.index[:n_sites])
        return facts[facts["site"].isin(keep)].reset_index(drop=True)

    def _rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, *keys]))

    # -- design and latent truth

    def simulate_design(self) -> pd.DataFrame:
        """Draw subjects' phenotypes and latent within-network z for every site."""
        facts = self._site_facts()
        frames = []
        for site in sorted(facts["site"].unique()):
            rng = self._rng(1, int(site))
            site_id = f"S{int(site):02d}"
            for _, row in facts[facts["site"] == site].iterrows():
                n = max(3, int(round(row["n"] * self.subjects_scale)))
                frames.append(_draw_group(rng, row, n, site_id))
        design = pd.concat(frames, ignore_index=True)
        design["subject_id"] = [
            f"{s}{i:04d}"
            for s, i in zip(
                design["site_id"], design.groupby("site_id").cumcount() + 1, strict=True
            )
        ]
        self.design_ = design
        return design

    def site_effects(self) -> pd.DataFrame:
        """Additive (per network) and multiplicative site effects of every site."""
        rows = []
        for site_id in sorted(self.design_["site_id"].unique()):
            rng = self._rng(2, int(site_id[1:]))
            s = self.model.site_multiplicative_sd
            row = {"site_id": site_id, "multiplicative": float(np.exp(rng.normal(0, s) - s**2))}
            for net in self.networks_:
                row[f"additive_{net}"] = float(rng.normal(0, self.model.site_additive_sd))
            row["scanner_gain"] = float(np.exp(rng.normal(0, 0.3)))
            rows.append(row)
        effects = pd.DataFrame(rows).set_index("site_id")
        # Normalize so the subject-weighted mean of delta^2 is 1: the pooled residual SD,
        # and with it the planted d, is then the calibrated one for every draw of sites.
        weights = self.design_["site_id"].value_counts().reindex(effects.index)
        mean_square = np.average(effects["multiplicative"] ** 2, weights=weights)
        effects["multiplicative"] /= np.sqrt(mean_square)
        return effects

    def latent_z(
        self,
        design: pd.DataFrame,
        rng: np.random.Generator,
        site_effects: pd.DataFrame | None,
        shift: float,
    ) -> np.ndarray:
        """Subjects x networks within-network Fisher z (see the module docstring)."""
        m = self.model
        n = len(design)
        base = np.array([m.network_z[net] for net in self.networks_])
        z = np.tile(base, (n, 1))
        z += m.age_slope * (design["age"].to_numpy()[:, None] - 35.0)
        z += m.female_shift * (design["sex"].to_numpy() == "F")[:, None]
        u = rng.normal(0.0, m.tau, size=(n, len(base)))
        if site_effects is not None:
            eff = site_effects.loc[design["site_id"]]
            add = eff[[f"additive_{net}" for net in self.networks_]].to_numpy()
            z += add + u * eff["multiplicative"].to_numpy()[:, None]
        else:
            z += u
        dmn = self.networks_.index("default")
        z[:, dmn] += shift * (design["dx"].to_numpy() == "MDD")
        return z

    # -- time series

    def timeseries(
        self, z: np.ndarray, mean_fd: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Draw subjects x volumes x ROIs time series for latent z and motion."""
        m = self.model
        n, t = len(z), m.n_volumes
        n_net = len(self.networks_)
        share = np.array([m.global_share[net] for net in self.networks_])
        glob = rng.standard_normal((n, t, 1), dtype=np.float32)
        own = rng.standard_normal((n, t, n_net), dtype=np.float32)
        factors = np.sqrt(share) * glob + np.sqrt(1 - share) * own
        rho = np.tanh(np.clip(z, 0.02, 1.5))[:, self._net_index].astype(np.float32)[:, None, :]
        unique = rng.standard_normal((n, t, self.atlas_.n_rois), dtype=np.float32)
        x = np.sqrt(rho) * factors[:, :, self._net_index] + np.sqrt(1 - rho) * unique
        motion = rng.standard_normal((n, t, self.atlas_.n_rois), dtype=np.float32)
        motion = motion @ self._motion_factor.T.astype(np.float32)
        x += (m.motion_gain * mean_fd).astype(np.float32)[:, None, None] * motion
        return signal.lfilter([1.0], [1.0, -m.ar1], x, axis=1).astype(np.float32)

    # -- calibration

    def calibrate(self, n_pilot: int = 600, probe: float = 0.1) -> Calibration:
        """Calibrate the latent DMN shift so that mean DMN FC differs by ``d`` SDs.

        Uses a pilot of ``n_pilot`` controls drawn from the pooled design (no
        site effects) with a fixed seed, independent of ``seed``. The result
        depends only on the signal model, the atlas and the facts, and is cached
        per process for the shipped facts.
        """
        key = (repr(replace(self.model, effect_size=0.0)), self.atlas_.name, n_pilot, probe)
        if self.facts is None and key in _CALIBRATIONS:
            sigma, kappa = _CALIBRATIONS[key]
        else:
            sigma, kappa = self._pilot(n_pilot, probe)
            if self.facts is None:
                _CALIBRATIONS[key] = (sigma, kappa)
        self.calibration_ = Calibration(
            sigma=sigma, kappa=kappa, shift=self.model.effect_size * sigma / kappa
        )
        return self.calibration_

    def _pilot(self, n_pilot: int, probe: float) -> tuple[float, float]:
        facts = load_site_facts() if self.facts is None else self.facts
        pooled = facts[facts["group"] == "HC"].copy()
        rng = np.random.default_rng(np.random.SeedSequence([20190415, 1]))
        weights = pooled["n"] / pooled["n"].sum()
        counts = rng.multinomial(n_pilot, weights.to_numpy())
        pilot = pd.concat(
            [
                _draw_group(rng, row, int(k), "P")
                for (_, row), k in zip(pooled.iterrows(), counts, strict=True)
                if k > 0
            ],
            ignore_index=True,
        )
        pilot["dx"] = "MDD"  # every pilot subject gets the probe shift in the second draw
        state = np.random.SeedSequence([20190415, 2])
        outcome = []
        for shift in (0.0, probe):
            draw = np.random.default_rng(state)
            z = self.latent_z(pilot, draw, None, shift)
            series = self.timeseries(z, pilot["mean_fd"].to_numpy(), draw)
            outcome.append(mean_dmn_fc(series, self.atlas_.dmn))
        kappa = float(np.mean(outcome[1] - outcome[0]) / probe)
        covars = np.column_stack(
            [
                np.ones(len(pilot)),
                pilot["age"],
                pilot["sex"] == "F",
                pilot["education_years"],
                pilot["mean_fd"],
            ]
        ).astype(float)
        beta, *_ = np.linalg.lstsq(covars, outcome[0], rcond=None)
        resid = outcome[0] - covars @ beta
        sigma = float(np.sqrt(resid @ resid / (len(pilot) - covars.shape[1])))
        return sigma, kappa

    # -- writing files

    def write(self, out_dir: str | Path, progress=None, n_jobs: int = 1) -> list[SimulatedSite]:
        """Write every site's files under ``out_dir/<site_id>/``.

        Parameters
        ----------
        out_dir : str or Path
            Created if needed; must not already hold a site folder.
        progress : callable or None
            Called as ``progress(site_id, n_subjects)`` after each site.
        n_jobs : int
            Sites written at once in worker processes. Every site draws from its
            own seeded generator, so the files do not depend on ``n_jobs``.

        Returns
        -------
        list of SimulatedSite
        """
        out_dir = Path(out_dir)
        if not hasattr(self, "design_"):
            self.simulate_design()
        if not hasattr(self, "calibration_"):
            self.calibrate()
        self.site_effects_ = self.site_effects()
        site_ids = sorted(self.design_["site_id"].unique())
        for site_id in site_ids:
            if (out_dir / site_id).exists():
                raise SimulationError(f"{out_dir / site_id} already exists; choose an empty folder")
        out_dir.mkdir(parents=True, exist_ok=True)
        jobs = [(index, site_id, out_dir / site_id) for index, site_id in enumerate(site_ids)]
        sites: dict[str, SimulatedSite] = {}
        if n_jobs > 1:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(max_workers=n_jobs) as pool:
                futures = [pool.submit(self._write_site, *job) for job in jobs]
                for future in as_completed(futures):
                    site = future.result()
                    sites[site.site_id] = site
                    if progress is not None:
                        progress(site.site_id, len(site.subjects))
        else:
            for job in jobs:
                site = self._write_site(*job)
                sites[site.site_id] = site
                if progress is not None:
                    progress(site.site_id, len(site.subjects))
        ordered = [sites[site_id] for site_id in site_ids]
        truth = pd.concat([s.subjects for s in ordered], ignore_index=True)
        truth.to_csv(out_dir / "simulation_truth.csv", index=False)
        return ordered

    def _write_site(self, index: int, site_id: str, site_dir: Path) -> SimulatedSite:
        design = self.design_[self.design_["site_id"] == site_id].reset_index(drop=True)
        effects, grid = self.site_effects_, map_grid(self.voxel_size)
        style = site_style(index)
        rng = self._rng(3, int(site_id[1:]))
        z = self.latent_z(design, rng, effects, self.calibration_.shift)
        design = design.assign(
            z_default=z[:, self.networks_.index("default")],
            file_id=[style.id_prefix + s for s in design["subject_id"]],
        )
        ts_dir, maps_dir = site_dir / "timeseries", site_dir / "maps"
        tmp = site_dir.with_name(site_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self._write_site_files(tmp, site_id, design, z, style, effects, grid, rng)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        tmp.rename(site_dir)
        data_config = site_data_config(style)
        return SimulatedSite(
            site_id=site_id,
            directory=site_dir,
            style=style,
            phenotype_file=site_dir / f"participants.{style.phenotype_format}",
            timeseries_dir=ts_dir,
            maps_dir=maps_dir,
            mask_file=maps_dir / "mask.nii.gz",
            data_config=data_config,
            subjects=design,
        )

    def _write_site_files(
        self,
        tmp: Path,
        site_id: str,
        design: pd.DataFrame,
        z: np.ndarray,
        style: SiteStyle,
        effects: pd.DataFrame,
        grid: MapGrid,
        rng: np.random.Generator,
    ) -> None:
        for folder in (tmp / "timeseries", tmp / "maps"):
            folder.mkdir(parents=True, exist_ok=True)
        gain = effects.loc[site_id, "scanner_gain"]
        for start in range(0, len(design), 64):
            chunk = design.iloc[start : start + 64]
            series = self.timeseries(z[start : start + 64], chunk["mean_fd"].to_numpy(), rng)
            offsets = rng.uniform(200, 800, size=(1, self.atlas_.n_rois))
            for file_id, ts in zip(chunk["file_id"], series, strict=True):
                _write_timeseries(
                    tmp / "timeseries",
                    file_id,
                    gain * 10 * ts + offsets,
                    style.timeseries_format,
                    self.atlas_,
                )
        self._write_maps(tmp / "maps", design, effects.loc[site_id], grid, rng)
        phenotype = tmp / f"participants.{style.phenotype_format}"
        _write_phenotypes(phenotype, design, style)

    def _write_maps(
        self,
        folder: Path,
        design: pd.DataFrame,
        effects: pd.Series,
        grid: MapGrid,
        rng: np.random.Generator,
    ) -> None:
        n = len(design)
        noise = rng.standard_normal((n, *grid.shape)).astype(np.float32)
        noise = ndimage.gaussian_filter(noise, sigma=(0, 1, 1, 1))
        noise /= noise[:, grid.mask].std()
        site_field = ndimage.gaussian_filter(
            self._rng(4, int(design["site_id"].iloc[0][1:])).standard_normal(grid.shape), 2
        )
        site_field *= 0.3 / site_field[grid.mask].std()
        dmn_region = grid.near(self.atlas_.coords[self.atlas_.dmn], radius_mm=12)
        maps = grid.baseline[None] + site_field[None] + 0.3 * noise
        maps -= 0.003 * (design["age"].to_numpy() - 35)[:, None, None, None]
        case = (design["dx"].to_numpy() == "MDD")[:, None, None, None]
        maps += self.model.map_effect_size * 0.3 * case * dmn_region[None]
        maps *= effects["scanner_gain"]
        maps[:, ~grid.mask] = 0
        for file_id, volume in zip(design["file_id"], maps, strict=True):
            nib.save(
                nib.Nifti1Image(volume.astype(np.float32), grid.affine),
                folder / f"{file_id}_alff.nii.gz",
            )
        nib.save(nib.Nifti1Image(grid.mask.astype(np.uint8), grid.affine), folder / "mask.nii.gz")


def site_data_config(style: SiteStyle) -> dict:
    """The data sections of a simulated site's ``site.toml`` (see ``sites.config``).

    Paths are relative to the site folder, where the config lives.
    """
    pattern = {
        "1D": "timeseries/{subject_id}_rois_dosenbach160.1D",
        "1D.gz": "timeseries/{subject_id}_rois_dosenbach160.1D.gz",
        "mat": "timeseries/ROISignals_{subject_id}.mat",
        "tsv": "timeseries/{subject_id}_task-rest_atlas-Dosenbach160_timeseries.tsv",
    }[style.timeseries_format]
    connectivity = {"atlas": "dosenbach160", "source": "timeseries", "pattern": pattern}
    if style.timeseries_format == "mat":
        connectivity["columns"] = f"{DPARSF_COLUMNS[0]}-{DPARSF_COLUMNS[1]}"
    return {
        "phenotypes": {
            "path": f"participants.{style.phenotype_format}",
            "dx_case": "MDD",
            "dx_control": "HC",
            "columns": {source: canon for canon, source in style.columns.items()},
            "values": {
                "dx": {str(code): label for label, code in style.dx_codes.items()},
                "sex": {str(code): label for label, code in style.sex_codes.items()},
            },
        },
        "connectivity": [connectivity],
        "motion": {"source": "phenotype", "definition": "jenkinson"},
        "qc": {"max_mean_fd": 0.2, "min_volumes": 50},
        "maps": [
            {
                "metric": "alff",
                "pattern": "maps/{subject_id}_alff.nii.gz",
                "mask": "maps/mask.nii.gz",
            }
        ],
    }


def write_site_config(site: SimulatedSite, path: str | Path | None = None) -> Path:
    """Write (or complete) the site's ``site.toml`` with its data sections.

    When ``path`` exists (made by ``confed site init``), its ``site_id`` and
    ``[keys]`` are kept and the data sections replaced, as a site's data
    manager edits the template; otherwise default key paths are used.
    """
    import tomllib

    path = Path(path) if path is not None else site.directory / "site.toml"
    head: dict = {"site_id": site.site_id}
    if path.exists():
        current = tomllib.loads(path.read_text())
        head = {"site_id": current.get("site_id", site.site_id), "keys": current.get("keys", {})}
    header = "written by consortium.simulate for a simulated site"
    return write_toml(path, {**head, **site.data_config}, header=header)


# ---------------------------------------------------------------- helpers


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


def _draw_group(rng: np.random.Generator, row: pd.Series, n: int, site_id: str) -> pd.DataFrame:
    age = np.clip(
        rng.normal(row["age_mean"], max(row["age_sd"], 1.0), n), row["age_min"], row["age_max"]
    )
    edu = np.clip(
        np.round(rng.normal(row["edu_mean"], max(row["edu_sd"], 0.5), n)),
        row["edu_min"],
        row["edu_max"],
    )
    mean, sd = row["motion_mean"], row["motion_sd"]
    s2 = np.log1p((sd / mean) ** 2)
    fd = rng.lognormal(np.log(mean) - s2 / 2, np.sqrt(s2), n)
    female = rng.random(n) < row["female_prop"]
    return pd.DataFrame(
        {
            "site_id": site_id,
            "dx": row["group"],
            "age": np.round(age, 1),
            "sex": np.where(female, "F", "M"),
            "education_years": edu,
            "mean_fd": np.round(fd, 5),
        }
    )


def _write_timeseries(folder: Path, file_id: str, ts: np.ndarray, fmt: str, atlas: Atlas) -> None:
    if fmt == "mat":
        # Single precision keeps the demo small; the other atlases' columns are zero.
        wide = np.zeros((ts.shape[0], DPARSF_WIDTH), dtype=np.float32)
        wide[:, DPARSF_COLUMNS[0] - 1 : DPARSF_COLUMNS[1]] = ts
        scipy.io.savemat(
            folder / f"ROISignals_{file_id}.mat", {"ROISignals": wide}, do_compression=True
        )
        return
    if fmt == "tsv":
        header, comments = "\t".join(atlas.labels), ""
        path = folder / f"{file_id}_task-rest_atlas-Dosenbach160_timeseries.tsv"
    else:
        header, comments = "\t".join(f"#{i}" for i in range(2, atlas.n_rois + 1)), "#1\t"
        path = folder / f"{file_id}_rois_dosenbach160.{fmt}"
    buffer = io.BytesIO()
    np.savetxt(buffer, ts, fmt="%.4f", delimiter="\t", header=header, comments=comments)
    if fmt.endswith(".gz"):
        path.write_bytes(gzip.compress(buffer.getvalue(), compresslevel=3, mtime=0))
    else:
        path.write_bytes(buffer.getvalue())


def _write_phenotypes(path: Path, design: pd.DataFrame, style: SiteStyle) -> None:
    table = pd.DataFrame(
        {
            style.columns["subject_id"]: design["file_id"],
            style.columns["dx"]: design["dx"].map(style.dx_codes),
            style.columns["age"]: design["age"],
            style.columns["sex"]: design["sex"].map(style.sex_codes),
            style.columns["education_years"]: design["education_years"],
            style.columns["mean_fd"]: design["mean_fd"],
        }
    )
    if style.phenotype_format == "xlsx":
        table.to_excel(path, index=False, sheet_name="participants")
    else:
        table.to_csv(path, index=False, sep="\t" if style.phenotype_format == "tsv" else ",")


@dataclass(frozen=True)
class MapGrid:
    """A coarse MNI grid: brain mask, affine and a grey-matter baseline map."""

    mask: np.ndarray
    affine: np.ndarray
    baseline: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.mask.shape

    def near(self, coords_mm: np.ndarray, radius_mm: float) -> np.ndarray:
        """Boolean volume of in-mask voxels within ``radius_mm`` of any coordinate."""
        ijk = np.indices(self.shape).reshape(3, -1).T
        xyz = nib.affines.apply_affine(self.affine, ijk)
        dist = np.min(np.linalg.norm(xyz[:, None, :] - coords_mm[None], axis=-1), axis=1)
        return (dist <= radius_mm).reshape(self.shape) & self.mask


@lru_cache(maxsize=4)
def map_grid(voxel_size: int = 8) -> MapGrid:
    """The MNI152 brain mask and grey-matter template shipped with nilearn, at ``voxel_size``."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_gm_template

    mask_img = load_mni152_brain_mask(resolution=voxel_size)
    gm = load_mni152_gm_template(resolution=voxel_size).get_fdata()
    mask = mask_img.get_fdata() > 0
    return MapGrid(mask=mask, affine=mask_img.affine, baseline=(1.0 + 2.0 * gm) * mask)


def simulate_consortium(
    out_dir: str | Path,
    n_sites: int | None = None,
    subjects_scale: float = 1.0,
    effect_size: float = -0.2,
    seed: int = 0,
    n_volumes: int = 150,
    progress=None,
) -> tuple[ConsortiumSimulator, list[SimulatedSite]]:
    """Simulate a consortium and write every site's files (see :class:`ConsortiumSimulator`)."""
    model = replace(SignalModel(), effect_size=effect_size, n_volumes=n_volumes)
    sim = ConsortiumSimulator(
        n_sites=n_sites, subjects_scale=subjects_scale, model=model, seed=seed
    )
    sim.simulate_design()
    sim.calibrate()
    return sim, sim.write(out_dir, progress=progress)


__all__: Sequence[str] = (
    "Calibration",
    "ConsortiumSimulator",
    "SignalModel",
    "SimulatedSite",
    "SimulationError",
    "load_site_facts",
    "map_grid",
    "mean_dmn_fc",
    "simulate_consortium",
    "summarize_design",
    "write_site_config",
)
