"""Dataset: joining site bundles, lazy maps, and clear errors for bundles that do not fit."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consortium.dataset import Dataset, DatasetError
from sites.atlas import load_atlas
from sites.bundle import read_bundle, write_bundle
from sites.connectivity import network_summaries
from tests.helpers.bundles import AFFINE, build_abide_bundle, make_bundle, map_mask


def test_views_are_aligned_with_subjects(dataset, synthetic_bundles):
    bundles = sorted(synthetic_bundles, key=lambda b: b.site_id)
    n = sum(len(b.subjects) for b in bundles)
    assert dataset.sites == ["SITE_A", "SITE_B", "SITE_C"]
    assert len(dataset.subjects) == n == dataset.n_subjects
    assert dataset.subjects["site"].tolist() == sum(
        ([b.site_id] * len(b.subjects) for b in bundles), []
    )
    edges = dataset.connectivity("dosenbach160")
    assert edges.shape == (n, 12720) and edges.dtype == np.float32
    expected = np.concatenate([b.connectivity("dosenbach160") for b in bundles])
    np.testing.assert_array_equal(edges, expected)
    # Network means recomputed independently from the joined edges.
    summaries = dataset.network_summaries("dosenbach160")
    atlas = load_atlas("dosenbach160")
    rows, cols = np.triu_indices(160, k=1)
    dmn = atlas.dmn[rows] & atlas.dmn[cols]
    assert dmn.sum() == 528
    np.testing.assert_allclose(summaries["dmn_restmeta"], edges[:, dmn].mean(axis=1), rtol=1e-5)
    assert dataset.dx_labels == {"case": "MDD", "control": "HC"}
    assert dataset.qc["site"].nunique() == 3
    assert int((~dataset.qc["included"]).sum()) == 6
    assert dataset.release_name == "test-release" and dataset.release_hash == "f" * 64
    assert set(dataset.bundle_hashes) == set(dataset.sites)


class _CountingBundle:
    """Forwards to a bundle and counts reads of its subject-level map data."""

    def __init__(self, bundle):
        self._bundle = bundle
        self.map_reads = 0
        self.column_reads: list[tuple[int, int]] = []

    def __getattr__(self, name):
        return getattr(self._bundle, name)

    def maps(self, metric):
        self.map_reads += 1
        return self._bundle.maps(metric)

    def map_columns(self, metric, start, stop):
        self.column_reads.append((start, stop))
        return self._bundle.map_columns(metric, start, stop)


def test_maps_are_lazy_and_match_the_bundles(synthetic_bundles):
    counting = [_CountingBundle(b) for b in synthetic_bundles]
    dataset = Dataset.from_bundles(counting)
    mask, data = dataset.maps("alff", chunk_voxels=50)
    assert data.shape == (dataset.n_subjects, int(np.count_nonzero(mask.get_fdata())))
    assert data.chunks[1] == (50, 50, 50)
    # Checking the masks reads no subject data.
    assert [(b.map_reads, b.column_reads) for b in counting] == [(0, [])] * len(counting)
    values = data.compute()
    # At compute time each site's map is read chunk by chunk, never whole.
    for b in counting:
        assert b.map_reads == 0
        assert sorted(b.column_reads) == [(0, 50), (50, 100), (100, 150)]
    bundles = sorted(synthetic_bundles, key=lambda b: b.site_id)
    np.testing.assert_array_equal(values, np.concatenate([b.maps("alff")[1] for b in bundles]))


def test_different_dx_labels_name_the_site(tmp_path, synthetic_bundles):
    other = read_bundle(make_bundle(tmp_path, "SITE_X", 5, dx_labels={"case": "ASD",
                                                                        "control": "TDC"}))
    with pytest.raises(DatasetError, match="SITE_X.*dx_labels"):
        Dataset.from_bundles([*synthetic_bundles, other])


def test_different_masks_name_the_site(tmp_path, synthetic_bundles):
    other = read_bundle(make_bundle(tmp_path, "SITE_X", 5, mask=map_mask(shrink=2)))
    dataset = Dataset.from_bundles([*synthetic_bundles[:1], other])
    with pytest.raises(DatasetError, match="SITE_X.*mask of map 'alff' differs"):
        dataset.maps("alff")
    shifted = nib.Nifti1Image(map_mask().get_fdata().astype(np.uint8), AFFINE + np.eye(4) * 0)
    shifted.affine[0, 3] += 4
    moved = read_bundle(make_bundle(tmp_path / "moved", "SITE_Y", 6, mask=shifted))
    with pytest.raises(DatasetError, match="SITE_Y.*different grid"):
        Dataset.from_bundles([*synthetic_bundles[:1], moved]).maps("alff")


def test_missing_atlas_and_edge_count_name_the_site(tmp_path, synthetic_bundles):
    ho = read_bundle(make_bundle(tmp_path, "SITE_H", 7, atlas_name="ho111"))
    with pytest.raises(DatasetError, match="SITE_H.*dosenbach160"):
        Dataset.from_bundles([*synthetic_bundles, ho]).connectivity("dosenbach160")
    # Same atlas name, wrong number of edges.
    atlas = load_atlas("dosenbach160")
    keys = [hashlib.sha256(f"short{i}".encode()).hexdigest() for i in range(4)]
    subjects = pd.DataFrame({"subject_key": keys, "dx": ["MDD", "HC"] * 2, "age": 30.0,
                             "sex": "F", "mean_fd": 0.1})
    qc = pd.DataFrame({"subject_key": keys, "included": True, "reason_codes": ""})
    edges = np.zeros((4, atlas.n_edges), dtype=np.float32)
    path = write_bundle(
        tmp_path / "short", site_id="SITE_S", subjects=subjects, qc=qc,
        connectivity={"dosenbach160": edges[:, :100]},
        networks={"dosenbach160": network_summaries(edges, atlas)},
        metadata={"dx_labels": {"case": "MDD", "control": "HC"}},
        private_key=Ed25519PrivateKey.generate(),
    )
    dataset = Dataset.from_bundles([*synthetic_bundles, read_bundle(path)])
    with pytest.raises(DatasetError, match="SITE_S.*100 edges"):
        dataset.connectivity("dosenbach160")
    with pytest.raises(DatasetError, match="SITE_S.*no map 'alff'"):
        dataset.maps("alff")


def test_duplicate_site_is_refused(synthetic_bundles):
    with pytest.raises(DatasetError, match="SITE_A.*more than one bundle"):
        Dataset.from_bundles([synthetic_bundles[0], synthetic_bundles[0]])
    with pytest.raises(DatasetError, match="at least one bundle"):
        Dataset.from_bundles([])


def test_abide_bundles(abide_dir, tmp_path):
    paths = [build_abide_bundle(abide_dir, site, tmp_path / site, max_subjects=24)
             for site in ("NYU", "USM")]
    dataset = Dataset.from_bundles([read_bundle(p) for p in paths])
    assert dataset.dx_labels == {"case": "ASD", "control": "TDC"}
    assert len(dataset.sites) == 2
    edges = dataset.connectivity("ho111")
    assert edges.shape == (len(dataset.subjects), 111 * 110 // 2)
    assert set(dataset.subjects["dx"]) <= {"ASD", "TDC"}
    assert set(dataset.subjects["sex"]) <= {"M", "F"}
    assert len(dataset.qc) >= len(dataset.subjects)
