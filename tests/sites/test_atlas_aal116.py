"""The built-in ``aal116`` atlas: AAL labels in ROI_MNI_V4 order, no networks, no DMN.

Reference positions are those of the AAL distribution's ``ROI_MNI_V4`` list
(Tzourio-Mazoyer et al. 2002), as in the sources named in :mod:`sites.atlas`.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd
import pytest

from sites.agent import compute
from sites.atlas import (
    BUILTIN_ATLASES,
    UNASSIGNED,
    AtlasError,
    atlas_from_table,
    atlas_tsv_bytes,
    load_atlas,
    read_atlas_tsv,
)
from sites.bundle import read_bundle
from sites.config import load_config
from sites.contract import check_atlas_table
from sites.pseudonym import load_secret, subject_key
from tests.helpers import site_folders as synthetic
from tests.helpers.keys import make_site

#: (1-based position, label, AAL grey level) checked against the ROI_MNI_V4 list.
SPOT_CHECKS = [
    (1, "Precentral_L", 2001),
    (2, "Precentral_R", 2002),
    (3, "Frontal_Sup_L", 2101),
    (25, "Frontal_Med_Orb_L", 2611),
    (26, "Frontal_Med_Orb_R", 2612),
    (37, "Hippocampus_L", 4101),
    (67, "Precuneus_L", 6301),
    (91, "Cerebelum_Crus1_L", 9001),
    (109, "Vermis_1_2", 9100),
    (116, "Vermis_10", 9170),
]


def _packaged_table() -> pd.DataFrame:
    source = resources.files("sites") / "data" / "aal116.tsv"
    with resources.as_file(source) as path:
        return pd.read_csv(path, sep="\t", comment="#")


def test_aal116_is_a_builtin_with_real_labels():
    assert "aal116" in BUILTIN_ATLASES
    atlas = load_atlas("aal116")
    assert atlas.name == "aal116" and atlas.n_rois == 116 and atlas.n_edges == 6670
    assert len(set(atlas.labels)) == 116
    for position, label, _ in SPOT_CHECKS:
        assert atlas.labels[position - 1] == label
    assert atlas.networks == [UNASSIGNED] * 116
    assert atlas.dmn is None and atlas.coords is None
    with pytest.raises(AtlasError, match=r"not a built-in \(dosenbach160, ho111, aal116\)"):
        load_atlas("aal117")


def test_packaged_table_follows_the_aal_grey_levels():
    table = _packaged_table()
    assert list(table.columns) == ["index", "label", "network", "aal_code"]
    assert table["index"].tolist() == list(range(1, 117))
    codes = table["aal_code"].to_numpy()
    assert (np.diff(codes) > 0).all()  # ROI_MNI_V4 order is ascending grey level
    for position, label, code in SPOT_CHECKS:
        row = table.iloc[position - 1]
        assert (row["label"], row["aal_code"]) == (label, code)
    # The 108 cerebral and cerebellar hemisphere regions come as left/right pairs.
    labels = table["label"].tolist()
    for left, right in zip(labels[0:108:2], labels[1:108:2], strict=True):
        assert left.endswith("_L") and right == left[:-2] + "_R"
        assert codes[labels.index(right)] == codes[labels.index(left)] + 1
    assert all(label.startswith("Vermis_") for label in labels[108:])


def test_aal116_round_trips_through_the_bundle_table():
    atlas = load_atlas("aal116")
    data = atlas_tsv_bytes(atlas)
    table = read_atlas_tsv(data, "aal116")
    check_atlas_table(table, atlas.n_edges, "atlases/aal116.tsv")
    again = atlas_from_table("aal116", table)
    assert again.labels == atlas.labels and again.networks == atlas.networks
    assert again.dmn is None and again.coords is None
    assert atlas_tsv_bytes(again) == data


def test_site_with_aal116_time_series_computes_like_ho111(tmp_path):
    keys = make_site(tmp_path, "S01")
    table = synthetic.phenotype_table(4)
    table.to_csv(keys.root / "participants.tsv", sep="\t", index=False)
    (keys.root / "ts").mkdir()
    rng = np.random.default_rng(3)
    series = {}
    for sid in table["participant_id"]:
        series[sid] = rng.normal(size=(40, 116)) + 0.3 * rng.normal(size=(40, 1))
        np.savetxt(keys.root / "ts" / f"{sid}_rois_aal.1D", series[sid])
    block = '[[connectivity]]\natlas = "aal116"\npattern = "ts/{subject_id}_rois_aal.1D"\n'
    keys.config_path.write_text(synthetic.config_text(keys, block))
    bundle = read_bundle(compute(load_config(keys.config_path), tmp_path / "out", progress=False))

    fc = bundle.connectivity("aal116")
    assert fc.shape == (4, 6670)
    secret = load_secret(keys.secret_path)
    sid_of = {subject_key(secret, "S01", sid): sid for sid in series}
    for row, key in zip(fc, bundle.subjects["subject_key"], strict=True):
        r = np.corrcoef(series[sid_of[key]], rowvar=False)
        np.testing.assert_allclose(row, np.arctanh(r[np.triu_indices(116, k=1)]), atol=1e-5)
    assert bundle.atlas("aal116").labels == load_atlas("aal116").labels
    nets = bundle.network_summaries("aal116")
    assert [c for c in nets.columns if c != "subject_key"] == ["unassigned__unassigned"]
    np.testing.assert_allclose(nets["unassigned__unassigned"], fc.mean(axis=1), rtol=1e-5)
