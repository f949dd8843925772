"""``voxels``: the mass-univariate model over the voxels of a map, streamed in chunks.

t, d and FDR-thresholded maps as NIfTI. Without harmonization the maps are
read and fitted one chunk of voxels at a time; with a harmonizer the dask
engine makes two passes over the maps (its fit, then the harmonized chunks
straight into the mass model), so memory stays at one chunk of voxels.

With ``tfce`` (and ``permutations``): threshold-free cluster enhancement on the
release's mask (E = 0.5, H = 2, dh = max/100, 26-connectivity, both tails) with
FWE p per voxel from Freedman-Lane permutations or whole-site sign flips
(:func:`consortium.analysis.tfce.tfce_test`), written as ``tfce_map.nii.gz`` and
``tfce_p_fwe.nii.gz`` (section ``tfce``). The permutations hold the residuals of
all mask voxels in memory (subjects x voxels).
"""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from consortium.analysis.data import ReleaseData, check_finite, harmonize_lazy
from consortium.analysis.figures import tfce_figure, voxel_figure
from consortium.analysis.fitting import fdr, mass_fit
from consortium.analysis.inference import (
    model_options,
    permutation_summary,
    run_engine,
    tail_p_values,
)
from consortium.analysis.params import FDR_ALPHA, FWE_ALPHA, AnalysisParams
from consortium.analysis.progress import Steps
from consortium.analysis.results import KindResult, TfceSection, VoxelsSection
from consortium.analysis.tfce import tfce_test, to_nifti

__all__ = ["TFCE_CONNECTIVITY", "TFCE_DH", "TFCE_E", "TFCE_H", "run"]

# Smith & Nichols (2009) standard parameters; dh "auto" = max / 100
TFCE_E, TFCE_H, TFCE_DH, TFCE_CONNECTIVITY = 0.5, 2.0, "auto", 26

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
    result = KindResult(
        sections={"voxels": section}, figures={"voxel_map": {"png": "voxel_map.png"}}
    )
    if params.tfce:
        _tfce(data, params, progress, maps, mask_img, result)
    return result


def _tfce_input(data: ReleaseData, params: AnalysisParams, maps: Any) -> np.ndarray:
    """Subjects x mask voxels in memory (harmonized when asked), checked finite."""
    maps = maps[data.design.rows]
    if params.harmonize != "none":
        maps = maps.astype(np.float64).rechunk({0: -1, 1: params.chunk_voxels})
        maps = harmonize_lazy(maps, data, params.harmonize, f"map {params.metric!r}",
                              params.ref_site)  # fmt: skip
    Y = np.asarray(maps.compute(), dtype=np.float64)
    check_finite(Y, data, f"map {params.metric!r}")
    return Y


def _tfce(
    data: ReleaseData,
    params: AnalysisParams,
    progress: Steps,
    maps: Any,
    mask_img: Any,
    result: KindResult,
) -> None:
    """TFCE with FWE p maps: NIfTI files, the ``tfce`` section and its figure."""
    with progress("voxel maps for TFCE"):
        Y = _tfce_input(data, params, maps)
    # the tail approximation, when asked, is fitted to the max-TFCE null below
    options = model_options(
        data.design, params.random_slope, params.permutations, params.seed, tail=False
    )
    with progress(f"TFCE, {params.permutations} Freedman-Lane permutations") as advance:
        res = run_engine(
            tfce_test, Y, mask=mask_img, connectivity=TFCE_CONNECTIVITY, E=TFCE_E, H=TFCE_H,
            dh=TFCE_DH, client=data.client, progress=advance, **options,
        )  # fmt: skip
    out = data.out
    significant = res.p_fwe < FWE_ALPHA
    to_nifti(res.tfce, mask_img).to_filename(out / "tfce_map.nii.gz")
    to_nifti(res.p_fwe, mask_img, fill=1.0).to_filename(out / "tfce_p_fwe.nii.gz")
    maps = {"tfce": "tfce_map.nii.gz", "p_fwe": "tfce_p_fwe.nii.gz"}
    tail, p_tail = None, None
    if params.tail_approximation:
        tail, p_tail = tail_p_values(res.null_max, np.abs(res.tfce), res.p_fwe)
        to_nifti(p_tail, mask_img, fill=1.0).to_filename(out / "tfce_p_fwe_tail.nii.gz")
        maps["p_fwe_tail"] = "tfce_p_fwe_tail.nii.gz"
    corrected = to_nifti(np.where(significant, res.tfce, 0.0), mask_img)
    with progress("TFCE figure"):
        tfce_figure(corrected, int(significant.sum()), out)
    result.sections["tfce"] = TfceSection(
        E=TFCE_E, H=TFCE_H, dh="max/100", connectivity=TFCE_CONNECTIVITY,
        n_voxels=int(res.p_fwe.size), n_fwe=int(significant.sum()),
        n_fwe_positive=int((significant & (res.t > 0)).sum()),
        n_fwe_negative=int((significant & (res.t < 0)).sum()),
        max_abs_tfce=float(np.abs(res.tfce).max()), min_p_fwe=float(res.p_fwe.min()),
        maps=maps, permutation=permutation_summary(res.permutation, tail, p_tail),
    )  # fmt: skip
    result.figures["tfce_map"] = {"png": "tfce_map.png"}
