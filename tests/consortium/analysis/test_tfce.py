"""TFCE (consortium.analysis.tfce) against nilearn's implementation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter, generate_binary_structure

from consortium.analysis.tfce import TfceNull, mask_neighbors, tfce, tfce_test, to_nifti

SHAPE = (14, 16, 12)


def _nilearn_tfce():
    from nilearn.mass_univariate import _utils

    fn = getattr(_utils, "calculate_tfce", None) or getattr(_utils, "_calculate_tfce", None)
    if fn is None:
        pytest.skip("this nilearn has no TFCE function in mass_univariate._utils")
    return fn


def _mask() -> np.ndarray:
    grid = np.indices(SHAPE) - (np.array(SHAPE) / 2 - 0.5)[:, None, None, None]
    radii = np.array([6.5, 7.5, 5.5])[:, None, None, None]
    return ((grid / radii) ** 2).sum(axis=0) < 1


def _smooth_map(rng, mask, scale=3.0) -> np.ndarray:
    volume = gaussian_filter(rng.normal(size=SHAPE), 1.2)
    volume *= scale / volume[mask].std()
    volume[~mask] = 0.0
    return volume


@pytest.mark.parametrize("connectivity, rank", [(26, 3), (18, 2), (6, 1)])
@pytest.mark.parametrize("two_sided", [True, False])
def test_transform_equals_nilearn(connectivity, rank, two_sided):
    calculate_tfce = _nilearn_tfce()
    rng = np.random.default_rng(connectivity + two_sided)
    mask = _mask()
    neighbors = mask_neighbors(mask, connectivity)
    for _ in range(3):
        volume = _smooth_map(rng, mask)
        ref = calculate_tfce(
            volume[..., None], generate_binary_structure(3, rank), two_sided_test=two_sided
        )[..., 0]
        ours = tfce(volume[mask], neighbors, two_sided=two_sided)
        np.testing.assert_allclose(ours, ref[mask], rtol=1e-6, atol=1e-6 * np.abs(ref).max())
        assert np.abs(ref[~mask]).max() == 0


def test_transform_parameters_equal_nilearn():
    calculate_tfce = _nilearn_tfce()
    rng = np.random.default_rng(7)
    mask = _mask()
    volume = _smooth_map(rng, mask, scale=4.0)
    ref = calculate_tfce(volume[..., None], generate_binary_structure(3, 3), E=1.0, H=1.5, dh=0.1)
    ours = tfce(volume[mask], mask_neighbors(mask), E=1.0, H=1.5, dh=0.1)
    np.testing.assert_allclose(ours, ref[..., 0][mask], rtol=1e-6, atol=1e-9)


def test_transform_properties():
    mask = np.ones((3, 3, 3), dtype=bool)
    neighbors = mask_neighbors(mask)
    assert neighbors.shape == (27, 26) and (neighbors[13] >= 0).all()
    assert (mask_neighbors(mask, 6) >= 0).sum() == 2 * 54  # 3 axes x 9 lines x 2 pairs, both ways
    values = np.zeros(27)
    values[0], values[26] = 2.0, -2.0  # opposite corners: two isolated clusters
    out = tfce(values, neighbors)
    h = np.linspace(0, 2.0, 101)[1:]
    assert out[0] == pytest.approx((h**2).sum()) and out[26] == pytest.approx(-(h**2).sum())
    assert np.count_nonzero(out) == 2
    assert not tfce(np.zeros(27), neighbors).any()
    stack = np.stack([values, -values])
    np.testing.assert_array_equal(tfce(stack, neighbors), np.stack([out, -out]))
    np.testing.assert_array_equal(TfceNull(neighbors)(stack), np.abs(out).max() * np.ones(2))
    with pytest.raises(ValueError, match="connectivity must be"):
        mask_neighbors(mask, 8)
    with pytest.raises(ValueError, match="values for a mask"):
        tfce(np.zeros(5), neighbors)


def test_tfce_test_fwe_and_nifti():
    rng = np.random.default_rng(11)
    mask = _mask()
    n_vox = int(mask.sum())
    n_sites, per_site = 3, 16
    site = np.repeat(np.arange(n_sites), per_site)
    dx = np.tile([0.0, 1.0], n_sites * per_site // 2)
    data = pd.DataFrame({"dx": dx, "site": site})
    noise = np.stack([gaussian_filter(rng.normal(size=SHAPE), 1.0)[mask] for _ in dx])
    noise /= noise.std()
    blob = np.zeros(SHAPE)
    blob[4:9, 5:10, 4:8] = 1.0
    Y = noise + 0.9 * dx[:, None] * blob[mask] + rng.normal(0, 0.3, n_sites)[site][:, None]
    img = nib.Nifti1Image(mask.astype(np.uint8), np.diag([3.0, 3.0, 3.0, 1.0]))
    res = tfce_test(Y, data, ["dx"], "site", "dx", img, n_permutations=49, seed=1)
    assert res.tfce.shape == (n_vox,) and res.null_max.shape == (49,)
    inside = blob[mask] > 0
    assert res.p_fwe[inside].min() == pytest.approx(1 / 50)
    assert np.median(res.p_fwe[~inside]) > 0.05
    expected = (1 + (res.null_max[None] >= np.abs(res.tfce)[:, None]).sum(1)) / 50
    np.testing.assert_array_equal(res.p_fwe, expected)
    out = to_nifti(res.p_fwe, img, fill=1.0)
    assert out.shape == SHAPE and np.allclose(out.affine, img.affine)
    np.testing.assert_allclose(out.get_fdata()[mask], res.p_fwe, rtol=1e-6)
    assert (out.get_fdata()[~mask] == 1.0).all()
    with pytest.raises(ValueError, match="columns but the mask has"):
        tfce_test(Y[:, :10], data, ["dx"], "site", "dx", img, n_permutations=5)
