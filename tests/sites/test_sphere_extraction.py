"""Fast sphere extraction against nilearn's NiftiSpheresMasker on small synthetic images."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
from nilearn.maskers import NiftiSpheresMasker

from sites.atlas import Atlas
from sites.extraction import ExtractionError, extract_spheres

SHAPE = (14, 16, 12)


def _affine(kind: str) -> np.ndarray:
    if kind == "mni3":
        affine = np.diag([3.0, 3.0, 3.0, 1.0])
        affine[:3, 3] = [-20, -25, -15]
        return affine
    theta = 0.3  # oblique, anisotropic, non-integer origin
    rot = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.0, 2.5, 3.5])
    affine[:3, 3] = [-10.3, -20.7, -15.2]
    return affine


def _seeds(affine: np.ndarray) -> np.ndarray:
    voxels = np.array(
        [
            [5, 6, 5],  # exactly on a voxel centre
            [6, 6, 5],  # neighbour of the first: overlapping spheres
            [5.5, 6.5, 5],  # half-voxel ties for the nearest voxel
            [0, 8, 6],  # on the edge: sphere partly outside the image
            [-0.8, 8, 6],  # centre outside the image, sphere partly inside
            [9.3, 3.7, 8.1],
            [2.2, 12.9, 3.4],  # partly outside the mask
        ]
    )
    return voxels @ affine[:3, :3].T + affine[:3, 3]


def _atlas(seeds: np.ndarray) -> Atlas:
    n = len(seeds)
    return Atlas("test", [f"r{i}" for i in range(n)], ["none"] * n, np.asarray(seeds))


def _nilearn(bold, seeds, radius, mask=None) -> np.ndarray:
    masker = NiftiSpheresMasker(
        [tuple(c) for c in seeds], radius=radius, allow_overlap=True, mask_img=mask
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return masker.fit_transform(bold)


def _mask(affine: np.ndarray, path) -> str:
    mask = np.ones(SHAPE, dtype=np.uint8)
    mask[:, :, :4] = 0  # a brain edge cutting through some spheres
    mask[5, 6, 5] = 0  # the voxel at a seed's centre is outside the mask
    nib.save(nib.Nifti1Image(mask, affine), path)
    return str(path)


@pytest.mark.parametrize("kind", ["mni3", "oblique"])
@pytest.mark.parametrize("radius", [5.0, 3.0])
@pytest.mark.parametrize("masked", [False, True])
def test_spheres_equal_nilearn(tmp_path, kind, radius, masked):
    affine = _affine(kind)
    data = np.random.default_rng(0).normal(100, 5, size=(*SHAPE, 9))
    bold = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), bold)  # float64: differences are rounding only
    mask = _mask(affine, tmp_path / "mask.nii.gz") if masked else None
    seeds = _seeds(affine)
    expected = _nilearn(str(bold), seeds, radius, mask)
    got = extract_spheres(bold, _atlas(seeds), radius, mask)
    assert got.shape == (9, len(seeds))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    # Independent check of one sphere: voxel centres within the radius (mni3 grid).
    if kind == "mni3" and not masked:
        ijk = np.indices(SHAPE).reshape(3, -1).T
        world = ijk @ affine[:3, :3].T + affine[:3, 3]
        inside = np.linalg.norm(world - seeds[5], axis=1) <= radius
        manual = data.reshape(-1, 9)[inside].mean(axis=0)
        np.testing.assert_allclose(got[:, 5], manual, atol=1e-10)


def test_float32_and_scaled_int16_and_nan(tmp_path):
    affine = _affine("mni3")
    seeds = _seeds(affine)
    rng = np.random.default_rng(1)
    data = rng.normal(1000, 50, size=(*SHAPE, 6))
    f32 = tmp_path / "f32.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), f32)
    scaled_img = nib.Nifti1Image(np.round(data * 10).astype(np.int16), affine)
    scaled_img.header.set_slope_inter(0.1, 0.0)
    scaled = tmp_path / "scaled.nii.gz"
    nib.save(scaled_img, scaled)
    with_nan = data.copy()
    with_nan[5, 6, 5, 2] = np.nan  # nilearn sets non-finite values to 0 when NaN is present
    nan_path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(with_nan, affine), nan_path)
    for path in (f32, scaled, nan_path):
        got = extract_spheres(path, _atlas(seeds), 5.0)
        np.testing.assert_allclose(got, _nilearn(str(path), seeds, 5.0), rtol=1e-5, atol=1e-5)
    assert np.isfinite(extract_spheres(nan_path, _atlas(seeds), 5.0)).all()


def test_empty_sphere_is_named(tmp_path):
    affine = _affine("mni3")
    bold = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((*SHAPE, 3), dtype=np.float32), affine), bold)
    seeds = np.vstack([_seeds(affine)[:1], [[500.0, 500.0, 500.0]]])
    with pytest.raises(ValueError, match="empty"):
        _nilearn(str(bold), seeds, 5.0)
    with pytest.raises(ExtractionError, match=r"bold\.nii\.gz: spheres of ROI\(s\) \[2\]"):
        extract_spheres(bold, _atlas(seeds), 5.0)


def test_small_radius_keeps_nilearn_nearest_and_seed_voxels(tmp_path):
    # 1 mm grid, radius below the voxel spacing: the spheres hold no voxel centre,
    # only the voxel nearest to the seed and the one whose world coordinates
    # truncate to the seed's (nilearn's "voxel containing the seed").
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-5, -5, -5]
    data = np.random.default_rng(2).normal(size=(*SHAPE, 5))
    bold = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), bold)
    seeds = np.array([[-0.6, 2.3, 3.6], [1.2, -3.7, 0.45], [2.0, 2.0, 2.0]])
    expected = _nilearn(str(bold), seeds, 0.5)
    got = extract_spheres(bold, _atlas(seeds), 0.5)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    # First seed: nearest voxel (-1, 2, 4) and truncated (0, 2, 3), in world mm.
    manual = (data[4, 7, 9] + data[5, 7, 8]) / 2
    np.testing.assert_allclose(got[:, 0], manual, atol=1e-10)
