"""``voxels``: the mass-univariate model over the voxels of a map, streamed in chunks.

t, d and FDR-thresholded maps as NIfTI. Without harmonization the maps are
read and fitted one chunk of voxels at a time; with a harmonizer the dask
engine makes two passes over the maps (its fit, then the harmonized chunks
straight into the mass model), so memory stays at one chunk of voxels.
"""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from consortium.analysis.data import ReleaseData, check_finite, harmonize_lazy
from consortium.analysis.figures import voxel_figure
from consortium.analysis.fitting import fdr, mass_fit
from consortium.analysis.params import FDR_ALPHA, AnalysisParams
from consortium.analysis.progress import Steps
from consortium.analysis.results import KindResult, VoxelsSection

__all__ = ["run"]

_FDR_MAP = f"t_map_fdr{int(FDR_ALPHA * 100):02d}.nii.gz"


def _fit(data: ReleaseData, params: AnalysisParams, progress: Steps, maps: Any) -> pd.DataFrame:
    chunk = params.chunk_voxels
    metric = params.metric
    maps = maps[data.design.rows]
    n_voxels = maps.shape[1]
    if params.harmonize != "none":
        maps = maps.astype(np.float64).rechunk({0: -1, 1: chunk})
        with progress(f"{params.harmonize} on {n_voxels} voxels"):
            source = harmonize_lazy(
                maps, data, params.harmonize, f"map {metric!r}", params.ref_site
            )
        with progress(f"mass mixed model ({n_voxels} voxels)"):
            return mass_fit(source, data.design, params.random_slope, chunk_size=chunk)
    starts = list(range(0, n_voxels, chunk))
    fits = []
    with progress(f"mass mixed model ({n_voxels} voxels)", total=len(starts)) as advance:
        for start in starts:
            block = np.asarray(maps[:, start : start + chunk].compute())
            check_finite(block, data, f"map {metric!r}")
            fits.append(mass_fit(block, data.design, params.random_slope))
            advance()
    return pd.concat(fits, ignore_index=True)


def run(data: ReleaseData, params: AnalysisParams, progress: Steps) -> KindResult:
    """Voxel-wise effects, NIfTI maps and the glass-brain figure."""
    mask_img, maps = data.dataset.maps(params.metric, chunk_voxels=params.chunk_voxels)
    fit = _fit(data, params, progress, maps)
    fit["q"] = fdr(fit["p"].to_numpy())
    fit.insert(0, "voxel", np.arange(len(fit)))
    out = data.out
    fit.to_parquet(out / "voxel_effects.parquet", index=False)
    mask = np.asarray(mask_img.dataobj) != 0

    def to_img(values: np.ndarray) -> Any:
        volume = np.zeros(mask.shape, dtype=np.float32)
        volume[mask] = values
        return nib.Nifti1Image(volume, mask_img.affine)

    t = fit["t"].to_numpy()
    significant = fit["q"].to_numpy() < FDR_ALPHA
    threshold = float(np.abs(t[significant]).min()) if significant.any() else None
    to_img(t).to_filename(out / "t_map.nii.gz")
    to_img(fit["d"].to_numpy()).to_filename(out / "d_map.nii.gz")
    to_img(np.where(significant, t, 0.0)).to_filename(out / _FDR_MAP)
    mask_img.to_filename(out / "mask.nii.gz")
    with progress("voxel map figure"):
        voxel_figure(to_img(t), threshold, out)
    peak = int(np.argmax(np.abs(t)))
    peak_mm = nib.affines.apply_affine(mask_img.affine, np.argwhere(mask)[peak])
    section = VoxelsSection(
        metric=params.metric,
        n_voxels=int(len(fit)),
        n_fdr=int(significant.sum()),
        fdr_threshold_abs_t=threshold,
        peak_t=float(t[peak]),
        peak_d=float(fit["d"].iloc[peak]),
        peak_mni=[float(v) for v in peak_mm],
        maps={"t": "t_map.nii.gz", "d": "d_map.nii.gz", "t_fdr": _FDR_MAP, "mask": "mask.nii.gz"},
    )
    return KindResult(sections={"voxels": section}, figures={"voxel_map": {"png": "voxel_map.png"}})
