"""The coarse MNI grid the simulated voxel maps live on.

Part of :mod:`consortium.simulate`: :func:`map_grid` resamples the MNI152 brain
mask and grey-matter template that nilearn ships to ``voxel_size`` mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import nibabel as nib
import numpy as np


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
