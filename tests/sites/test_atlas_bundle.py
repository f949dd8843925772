"""Atlases travel with the data: the bundle carries each atlas's definition."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sites.atlas import Atlas, AtlasError, atlas_tsv_bytes, load_atlas, read_atlas_tsv
from sites.contract import ContractError, check_atlas_table, check_manifest_files
from tests.helpers.bundles import make_bundle


def _write_tsv(path: Path, labels: list[str], networks: list[str], dmn: list[int]) -> Path:
    rows = [
        f"{i}\t{label}\t{net}\t{d}"
        for i, (label, net, d) in enumerate(zip(labels, networks, dmn, strict=True), 1)
    ]
    path.write_text("index\tlabel\tnetwork\tdmn\n" + "\n".join(rows) + "\n")
    return path


def test_bundle_carries_atlas_table_pinned_in_manifest(tmp_path):
    path = make_bundle(tmp_path, "SITE_A", 0, n_case=4, n_control=4)
    from sites.bundle import read_bundle

    bundle = read_bundle(path)
    data = (path / "atlases" / "dosenbach160.tsv").read_bytes()
    entry = bundle.manifest["connectivity"]["dosenbach160"]
    assert entry["atlas_sha256"] == hashlib.sha256(data).hexdigest()
    assert bundle.files["atlases/dosenbach160.tsv"] == entry["atlas_sha256"]
    atlas, builtin = bundle.atlas("dosenbach160"), load_atlas("dosenbach160")
    assert atlas.labels == builtin.labels and atlas.networks == builtin.networks
    np.testing.assert_array_equal(atlas.dmn, builtin.dmn)
    np.testing.assert_allclose(atlas.coords, builtin.coords)


def test_custom_atlas_named_by_stem_with_spaced_labels(tmp_path):
    labels = ["Left Frontal Pole", "Right Frontal Pole", "Left Insular Cortex", "PCC (mid)"]
    tsv = _write_tsv(tmp_path / "aal4.tsv", labels, ["a", "a", "default", "default"], [0, 0, 1, 1])
    atlas = load_atlas(tsv)
    assert atlas.name == "aal4" and atlas.labels == labels
    back = read_atlas_tsv(atlas_tsv_bytes(atlas), "aal4")
    check_atlas_table(back, n_edges=6, where="atlases/aal4.tsv")
    assert back["label"].tolist() == labels and back["dmn"].tolist() == [0, 0, 1, 1]


def test_atlas_file_stem_must_be_a_contract_name(tmp_path):
    tsv = _write_tsv(tmp_path / "my atlas.tsv", ["a", "b"], ["x", "x"], [0, 0])
    with pytest.raises(AtlasError, match="atlas name"):
        load_atlas(tsv)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.assign(index=[1, 2, 4]), "'index' must be 1..3"),
        (lambda t: t.assign(label=["a", "b\tc", "d"]), "label of ROI 2"),
        (lambda t: t.assign(label=["a", "<script>", "d"]), "label of ROI 2"),
        (lambda t: t.assign(network=["a", "b c", "d"]), "network of ROI 2"),
        (lambda t: t.assign(dmn=[0, 2, 1]), "'dmn' must hold 0 or 1"),
        (lambda t: t.assign(x=[1.0, 2.0, 3.0]), "x, y, z must come together"),
        (lambda t: t.assign(extra=[1, 2, 3]), "column 'extra' is not allowed"),
    ],
)
def test_atlas_table_contract(edit, message):
    table = pd.DataFrame(
        {"index": [1, 2, 3], "label": ["a", "b", "c"], "network": ["n", "n", "m"], "dmn": 0}
    )
    check_atlas_table(table, 3, "atlases/t.tsv")
    with pytest.raises(ContractError, match=message):
        check_atlas_table(edit(table), 3, "atlases/t.tsv")


def test_atlas_rows_must_match_edges():
    table = pd.DataFrame({"index": [1, 2, 3], "label": list("abc"), "network": "n", "dmn": 0})
    with pytest.raises(ContractError, match="3 ROIs but the connectivity has 6 edges"):
        check_atlas_table(table, 6, "atlases/t.tsv")


def test_manifest_hash_must_match_listed_atlas_file():
    digest = "a" * 64
    manifest = {
        "files": {
            "subjects.parquet": {"sha256": digest, "size": 1},
            "qc.parquet": {"sha256": digest, "size": 1},
            "connectivity_t.parquet": {"sha256": digest, "size": 1},
            "atlases/t.tsv": {"sha256": "b" * 64, "size": 1},
        },
        "connectivity": {"t": {"atlas_sha256": digest}},
    }
    with pytest.raises(ContractError, match="pins atlas_sha256"):
        check_manifest_files(manifest)
    manifest["files"]["atlases/u.tsv"] = {"sha256": digest, "size": 1}
    manifest["connectivity"]["t"]["atlas_sha256"] = "b" * 64
    with pytest.raises(ContractError, match="atlases/u.tsv.*not the atlas table"):
        check_manifest_files(manifest)


def test_builtin_ho111_has_no_networks():
    atlas = load_atlas("ho111")
    assert set(atlas.networks) == {"unassigned"} and atlas.dmn is None
    assert isinstance(atlas, Atlas) and atlas.n_rois == 111
