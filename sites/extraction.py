"""ROI time series from a preprocessed 4D BOLD image, with nilearn maskers.

Coordinate atlases (Dosenbach 160) use spheres of 5 mm radius around each
centre, as DPARSF does [1]_; label-image parcellations average the voxels of
each label. Signals are extracted as they are (no extra cleaning): the image
is already preprocessed.

References
----------
.. [1] Yan C.-G. et al. (2016). DPABI: Data Processing & Analysis for
   (Resting-State) Brain Imaging. Neuroinformatics 14:339-351.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
from nilearn.maskers import NiftiLabelsMasker, NiftiSpheresMasker

from sites.atlas import Atlas


class ExtractionError(ValueError):
    """A BOLD image or atlas image that cannot be used."""


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


def extract_spheres(bold: str | Path, atlas: Atlas, radius_mm: float = 5.0) -> np.ndarray:
    """Mean signal in a sphere around each atlas coordinate.

    Returns
    -------
    ndarray of shape (n_volumes, n_rois)
    """
    if atlas.coords is None:
        raise ExtractionError(f"atlas {atlas.name!r} has no coordinates for sphere extraction")
    img = _load_bold(Path(bold))
    masker = NiftiSpheresMasker(
        seeds=[tuple(c) for c in atlas.coords], radius=radius_mm, allow_overlap=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return masker.fit_transform(img).astype(np.float64)


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
