"""Voxelwise metric maps (ALFF, fALFF, ReHo, DC, VMHC...): group mask and standardization.

Each subject has one 3D NIfTI map per metric, all in a common space. The
group mask is given by the site or built from coverage: voxels that are
finite and non-zero in at least ``coverage`` (default 90 %) of the subjects,
as DPABI's group masks are. In-mask values are standardized over the site's
own subjects with :func:`harmonization.standardize.standardize` (default
``mean_regression_sd``, Yan et al. 2013 [1]_).

References
----------
.. [1] Yan C.-G. et al. (2013). Standardizing the intrinsic brain: towards
   robust measurement of inter-individual variation in 1000 functional
   connectomes. NeuroImage 80:246-262.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from harmonization.standardize import standardize


class MapError(ValueError):
    """A voxel map or mask that cannot be used; the message names the file."""


def load_map(path: str | Path) -> nib.Nifti1Image:
    path = Path(path)
    try:
        img = nib.load(path)
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except FileNotFoundError as exc:
        raise MapError(f"{path}: map not found") from exc
    except Exception as exc:  # nibabel/gzip errors
        raise MapError(f"{path}: cannot read NIfTI ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise MapError(f"{path}: expected a 3D map, got shape {data.shape}")
    return nib.Nifti1Image(data, img.affine)


def check_grid(img: nib.Nifti1Image, reference: nib.Nifti1Image, source: str, ref: str) -> None:
    """Raise :class:`MapError` when two images differ in shape or affine."""
    if img.shape[:3] != reference.shape[:3]:
        raise MapError(f"{source}: shape {img.shape[:3]} differs from {ref} {reference.shape[:3]}")
    if not np.allclose(img.affine, reference.affine, atol=1e-3):
        raise MapError(f"{source}: affine differs from {ref}")


def coverage_mask(images: list[nib.Nifti1Image], coverage: float = 0.9) -> nib.Nifti1Image:
    """Voxels finite and non-zero in at least ``coverage`` of the subjects."""
    count = np.zeros(images[0].shape, dtype=np.int32)
    for img in images:
        data = np.asarray(img.dataobj)
        count += np.isfinite(data) & (data != 0)
    mask = count >= int(np.ceil(coverage * len(images)))
    return nib.Nifti1Image(mask.astype(np.uint8), images[0].affine)


def standardized_maps(
    paths: list[Path],
    mask_path: Path | None = None,
    coverage: float = 0.9,
    method: str = "mean_regression_sd",
) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Load subjects' maps, build or check the mask, standardize in-mask values.

    Parameters
    ----------
    paths : list of Path
        One 3D map per subject, in subject order.
    mask_path : Path, optional
        Group mask; when absent it is built with :func:`coverage_mask`.
    coverage : float
        Fraction of subjects that must cover a voxel (built mask only).
    method : str
        :func:`harmonization.standardize.standardize` method.

    Returns
    -------
    mask : Nifti1Image
        uint8 group mask.
    values : ndarray of shape (n_subjects, n_mask_voxels), float32
        Standardized in-mask values.
    """
    if not paths:
        raise MapError("no subject maps to standardize")
    images = [load_map(p) for p in paths]
    reference, ref_name = images[0], str(paths[0])
    if mask_path is not None:
        mask_img = load_map(mask_path)
        reference, ref_name = mask_img, f"mask {mask_path}"
    for img, path in zip(images, paths, strict=True):
        check_grid(img, reference, str(path), ref_name)
    if mask_path is None:
        mask_img = coverage_mask(images, coverage)
    mask = np.asarray(mask_img.dataobj) != 0
    if not mask.any():
        raise MapError(f"group mask {mask_path or '(from coverage)'} is empty")
    values = np.stack([np.asarray(img.dataobj)[mask] for img in images])
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise MapError(f"{paths[int(np.flatnonzero(bad)[0])]}: non-finite values inside the mask")
    try:
        out = standardize(values, method=method)
    except ValueError as exc:
        raise MapError(f"standardization ({method}) failed: {exc}") from exc
    mask_out = nib.Nifti1Image(mask.astype(np.uint8), mask_img.affine)
    return mask_out, out.astype(np.float32)
