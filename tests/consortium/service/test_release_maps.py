"""Voxel maps of a release are read chunk by chunk, with the release's exclusions applied."""

from __future__ import annotations

import numpy as np

from consortium.coordinator import Coordinator
from consortium.ingest import ingest_archive
from consortium.registry import add_site
from consortium.releases import create_release, open_release
from sites.bundle import read_bundle
from tests.helpers.archives import tar_dir
from tests.helpers.bundles import synthetic_bundle
from tests.helpers.keys import make_keys
from tests.helpers.server import init_coordinator


def test_release_maps_chunked_with_exclusions(tmp_path):
    root = tmp_path / "coord"
    init_coordinator(root)
    coord = Coordinator.open(root)
    bundles = {}
    for i, site in enumerate(("S01", "S02")):
        private, public = make_keys(tmp_path / "keys", site)
        with coord.db.session() as s:
            add_site(s, site, site, public.read_text(), "test")
        bundles[site] = read_bundle(
            synthetic_bundle(tmp_path / "b" / site, site, private, seed=i, map_voxels=130)
        )
        ingest_archive(coord, tar_dir(bundles[site].path, tmp_path / f"{site}.tar"), site, "t")
    dropped = bundles["S02"].subjects["subject_key"].iloc[3]
    with coord.db.session() as s:
        create_release(s, "r1", "test", exclude_subjects=[dropped])
    coord.close()

    dataset = open_release(root, "r1")
    mask, data = dataset.maps("alff", chunk_voxels=50)
    assert data.chunks[1] == (50, 50, 30)
    keep = bundles["S02"].subjects["subject_key"] != dropped
    expected = np.concatenate(
        [bundles["S01"].maps("alff")[1], bundles["S02"].maps("alff")[1][keep.to_numpy()]]
    )
    np.testing.assert_array_equal(data.compute(), expected)
    assert dropped not in set(dataset.subjects["subject_key"])
    assert int(np.count_nonzero(np.asarray(mask.dataobj))) == 130
