"""ROI time series from a preprocessed 4D BOLD image.

Coordinate atlases (Dosenbach 160) use spheres of 5 mm radius around each
centre, as DPARSF does [1]_; label-image parcellations average the voxels of
each label. Signals are extracted as they are (no extra cleaning): the image
is already preprocessed.

Sphere extraction reproduces nilearn's ``NiftiSpheresMasker`` (``allow_overlap=True``,
no smoothing or cleaning) [2]_, which stays the reference it is tested and
benchmarked against. nilearn rebuilds the sphere membership for every image
with Python-level list searches; here it is built once per grid, seeds, radius
and mask as a sparse averaging matrix (:func:`sphere_membership`), and each
image then costs one read plus one sparse product.

References
----------
.. [1] Yan C.-G. et al. (2016). DPABI: Data Processing & Analysis for
   (Resting-State) Brain Imaging. Neuroinformatics 14:339-351.
.. [2] nilearn ``nilearn.maskers.nifti_spheres_masker.apply_mask_and_get_affinity``
   (nilearn 0.14).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nilearn.image import check_niimg_3d, coord_transform, resample_img
from nilearn.maskers import NiftiLabelsMasker
from nilearn.masking import load_mask_img
from scipy import sparse

from sites.atlas import Atlas


class ExtractionError(ValueError):
    """A BOLD image or atlas image that cannot be used."""


@dataclass(frozen=True)
class SphereMembership:
    """Voxels of each sphere on one image grid, as an averaging matrix.

    Attributes
    ----------
    voxels : ndarray of shape (n_used, 3)
        Voxel indices (i, j, k) of every voxel in at least one sphere, in
        C (nilearn mask) order.
    weights : scipy.sparse.csr_matrix of shape (n_rois, n_used)
        ``1 / sphere size`` for the voxels of each sphere, 0 elsewhere.
    sizes : ndarray of shape (n_rois,)
        Number of voxels of each sphere (0 for a sphere with none).
    """

    voxels: np.ndarray
    weights: sparse.csr_matrix
    sizes: np.ndarray


def _sphere_voxels(
    seed: np.ndarray,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    radius: float,
    inside: np.ndarray | None,
) -> np.ndarray:
    """Flat (C-order) indices of the voxels nilearn assigns to one seed."""
    inv = np.linalg.inv(affine)
    centre = inv[:3, :3] @ seed + inv[:3, 3]
    # Box in voxel space that holds the sphere, the nearest voxel and every
    # voxel whose world coordinates truncate to the seed's (all within 2 mm).
    half = max(radius, 2.0) * np.linalg.norm(inv[:3, :3], axis=1) + 1.0
    lo = np.maximum(np.floor(centre - half), 0).astype(int)
    hi = np.minimum(np.ceil(centre + half), np.asarray(shape) - 1).astype(int)
    if np.any(hi < lo):
        box = np.empty((0, 3), dtype=int)
    else:
        axes = [np.arange(a, b + 1) for a, b in zip(lo, hi, strict=True)]
        box = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    flat = np.ravel_multi_index(box.T, shape) if len(box) else np.empty(0, dtype=np.intp)
    if inside is not None and len(flat):
        keep = inside[flat]
        box, flat = box[keep], flat[keep]
    world = np.asarray(coord_transform(box[:, 0], box[:, 1], box[:, 2], affine)).T.reshape(-1, 3)
    # Same summation order as scikit-learn's KD-tree reduced distance, compared to r**2.
    diff = world - seed
    d2 = diff[:, 0] * diff[:, 0] + diff[:, 1] * diff[:, 1] + diff[:, 2] * diff[:, 2]
    chosen = set(flat[d2 <= radius * radius].tolist())
    # The voxel nearest to the seed (numpy rounding, half to even) ...
    near = np.round(coord_transform(*seed, inv)).astype(int)
    if np.all(near >= 0) and np.all(near < np.asarray(shape)):
        near_flat = int(np.ravel_multi_index(tuple(near), shape))
        if inside is None or inside[near_flat]:
            chosen.add(near_flat)
    # ... and nilearn's "voxel containing the seed": the first (in mask order)
    # voxel whose world coordinates truncate to the seed's truncated coordinates.
    same = np.all(world.astype(int) == seed.astype(int), axis=1)
    if same.any():
        chosen.add(int(flat[same].min()))
    return np.asarray(sorted(chosen), dtype=np.intp)


_CACHE: dict[str, SphereMembership] = {}


def sphere_membership(
    affine: np.ndarray,
    shape: tuple[int, int, int],
    seeds: np.ndarray,
    radius: float,
    mask: np.ndarray | None = None,
) -> SphereMembership:
    """Voxels of each sphere, selected exactly as nilearn's ``NiftiSpheresMasker``.

    A voxel belongs to a seed's sphere when its centre is within ``radius`` mm
    of the seed; the voxel nearest to the seed, and the voxel nilearn takes as
    "containing" the seed, are always added. With ``mask`` only in-mask voxels
    count. Results are cached per (affine, shape, seeds, radius, mask).

    Parameters
    ----------
    affine : ndarray of shape (4, 4)
        Voxel-to-world affine of the image grid.
    shape : tuple of 3 int
        Spatial shape of the image grid.
    seeds : ndarray of shape (n_rois, 3)
        Sphere centres in world (mm) coordinates.
    radius : float
        Sphere radius in mm.
    mask : ndarray of bool of shape ``shape``, optional
        Voxels that may belong to a sphere.

    Returns
    -------
    SphereMembership
    """
    affine = np.asarray(affine, dtype=float)
    seeds = np.asarray(seeds, dtype=float).reshape(-1, 3)
    shape = tuple(int(s) for s in shape)
    key = hashlib.sha256()
    for part in (affine, np.asarray(shape), seeds, np.asarray([radius], dtype=float)):
        key.update(np.ascontiguousarray(part).tobytes())
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != shape:
            raise ValueError(f"mask shape {mask.shape} differs from the image grid {shape}")
        key.update(np.packbits(mask).tobytes())
    digest = key.hexdigest()
    if digest not in _CACHE:
        inside = None if mask is None else mask.ravel()
        rows = [_sphere_voxels(s, affine, shape, radius, inside) for s in seeds]
        sizes = np.asarray([len(r) for r in rows])
        used, cols = np.unique(np.concatenate(rows + [np.empty(0, np.intp)]), return_inverse=True)
        row_ids = np.repeat(np.arange(len(rows)), sizes)
        vals = np.repeat(1.0 / np.maximum(sizes, 1), sizes)
        weights = sparse.csr_matrix((vals, (row_ids, cols)), shape=(len(rows), len(used)))
        voxels = np.stack(np.unravel_index(used, shape), axis=1)
        if len(_CACHE) >= 8:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[digest] = SphereMembership(voxels, weights, sizes)
    return _CACHE[digest]


def _load_bold(path: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(path)
        img.get_fdata(dtype=np.float32)
    except FileNotFoundError as exc:
        raise ExtractionError(f"{path}: BOLD image not found") from exc
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib errors
        raise ExtractionError(f"{path}: cannot read NIfTI ({exc})") from exc
    if img.ndim != 4:
        raise ExtractionError(f"{path}: expected a 4D BOLD image, got shape {img.shape}")
    return img


def _read_bold(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Data (as stored, scaling applied, like nilearn reads it) and affine of a 4D BOLD."""
    try:
        img = nib.load(path)
        if len(img.shape) != 4:
            raise ExtractionError(f"{path}: expected a 4D BOLD image, got shape {img.shape}")
        data = np.asanyarray(img.dataobj)
    except ExtractionError:
        raise
    except FileNotFoundError as exc:
        raise ExtractionError(f"{path}: BOLD image not found") from exc
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib errors
        raise ExtractionError(f"{path}: cannot read NIfTI ({exc})") from exc
    return data, img.affine


def _mask_on_grid(mask_img: str | Path, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask on the BOLD grid, resampled (nearest) and checked as nilearn does."""
    try:
        img = check_niimg_3d(str(mask_img))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = resample_img(
                img, target_affine=affine, target_shape=shape, interpolation="nearest"
            )
        mask, _ = load_mask_img(img)
    except Exception as exc:
        raise ExtractionError(f"{mask_img}: cannot use as a mask ({exc})") from exc
    return mask


def extract_spheres(
    bold: str | Path, atlas: Atlas, radius_mm: float = 5.0, mask_img: str | Path | None = None
) -> np.ndarray:
    """Mean signal in a sphere around each atlas coordinate.

    Gives the numbers of ``NiftiSpheresMasker(seeds, radius=radius_mm,
    mask_img=mask_img, allow_overlap=True).fit_transform(bold)``: spheres may
    overlap; with a mask only in-mask voxels count. As in nilearn, non-finite
    values become 0 when a mask is given, and without one when the image holds
    any NaN. Means are computed in float64 (nilearn keeps the image's dtype,
    so float32 images agree to float32 rounding; for unscaled integer images
    nilearn 0.14 even truncates the means to integers, which is not copied).

    Parameters
    ----------
    bold : str or Path
        Preprocessed 4D BOLD NIfTI.
    atlas : Atlas
        Atlas with ``coords`` (mm, world space of the image).
    radius_mm : float, default=5.0
        Sphere radius.
    mask_img : str or Path, optional
        Binary mask; resampled (nearest) to the BOLD grid when needed.

    Returns
    -------
    ndarray of shape (n_volumes, n_rois)
    """
    if atlas.coords is None:
        raise ExtractionError(f"atlas {atlas.name!r} has no coordinates for sphere extraction")
    path = Path(bold)
    data, affine = _read_bold(path)
    shape = data.shape[:3]
    mask = None if mask_img is None else _mask_on_grid(mask_img, affine, shape)
    members = sphere_membership(affine, shape, atlas.coords, radius_mm, mask)
    empty = np.flatnonzero(members.sizes == 0)
    if empty.size:
        where = "mask" if mask is not None else "image field of view"
        raise ExtractionError(
            f"{path}: spheres of ROI(s) {(empty + 1).tolist()} of atlas {atlas.name!r} "
            f"contain no voxel of the {where}"
        )
    signals = np.asarray(data[tuple(members.voxels.T)], dtype=np.float64)
    if mask is not None or np.isnan(np.sum(data)):
        signals[~np.isfinite(signals)] = 0.0
    return np.asarray((members.weights @ signals).T)


def extract_labels(bold: str | Path, labels_image: str | Path, atlas: Atlas) -> np.ndarray:
    """Mean signal of each label (1..n_rois) of a parcellation image.

    The label image must be on the BOLD image's grid (same shape and affine);
    labels with no voxel give a constant zero column that quality control
    reports as missing coverage.
    """
    img = _load_bold(Path(bold))
    labels_path = Path(labels_image)
    try:
        labels = nib.load(labels_path)
    except Exception as exc:
        raise ExtractionError(f"{labels_path}: cannot read label image ({exc})") from exc
    if labels.shape[:3] != img.shape[:3] or not np.allclose(labels.affine, img.affine, atol=1e-3):
        raise ExtractionError(
            f"{labels_path}: label image grid {labels.shape[:3]} does not match BOLD {bold} "
            f"{img.shape[:3]} (shape or affine differ)"
        )
    present = np.unique(np.asarray(labels.dataobj).astype(int))
    present = present[(present > 0) & (present <= atlas.n_rois)]
    out = np.zeros((img.shape[3], atlas.n_rois))
    if present.size:
        masker = NiftiLabelsMasker(labels_img=labels, strategy="mean")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            signals = masker.fit_transform(img)
        # region_ids_ maps output column -> label value ("background" excluded).
        for column, label in masker.region_ids_.items():
            if column != "background" and 0 < int(label) <= atlas.n_rois:
                out[:, int(label) - 1] = signals[:, int(column)]
    return out
