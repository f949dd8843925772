"""The consortium simulator: design, latent truth, time series, calibration, files.

Part of :mod:`consortium.simulate` (whose docstring describes the signal model
and the calibration): :class:`ConsortiumSimulator` and the one-call
:func:`simulate_consortium`.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage, signal

from consortium.simulate.design import draw_group, load_site_facts
from consortium.simulate.grid import MapGrid, map_grid
from consortium.simulate.model import Calibration, SignalModel, SimulationError, mean_dmn_fc
from consortium.simulate.site_files import (
    SimulatedSite,
    SiteStyle,
    site_data_config,
    site_style,
    write_phenotypes,
    write_timeseries,
)
from sites.atlas import Atlas, load_atlas

_CALIBRATIONS: dict[tuple, tuple[float, float]] = {}


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
                frames.append(draw_group(rng, row, n, site_id))
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
                draw_group(rng, row, int(k), "P")
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
                write_timeseries(
                    tmp / "timeseries",
                    file_id,
                    gain * 10 * ts + offsets,
                    style.timeseries_format,
                    self.atlas_,
                )
        self._write_maps(tmp / "maps", design, effects.loc[site_id], grid, rng)
        phenotype = tmp / f"participants.{style.phenotype_format}"
        write_phenotypes(phenotype, design, style)

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
