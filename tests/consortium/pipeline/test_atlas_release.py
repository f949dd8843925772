"""Analyses read the atlas from the release's bundles, never from the coordinator's disk."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from consortium.analysis.pipeline import AnalysisError, run_analysis
from consortium.dataset import Dataset, DatasetError
from sites.atlas import load_atlas
from sites.bundle import read_bundle
from tests.helpers.bundles import make_bundle


def _custom_tsv(path: Path, rename: str = "") -> Path:
    """Dosenbach 160 as a custom TSV with spelled-out labels (``rename`` changes ROI 1)."""
    base = load_atlas("dosenbach160")
    rows = [
        f"{i}\tROI {label.replace('_', ' ')}{rename if i == 1 else ''}\t{net}\t{int(d)}"
        for i, (label, net, d) in enumerate(
            zip(base.labels, base.networks, base.dmn, strict=True), 1
        )
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("index\tlabel\tnetwork\tdmn\n" + "\n".join(rows) + "\n")
    return path


def _bundles(tmp_path: Path, tsv_b: Path | None = None) -> list:
    tsv_a = _custom_tsv(tmp_path / "a" / "dos160.tsv")
    paths = [
        make_bundle(tmp_path / "bundles", site, i, n_case=12, n_control=12, atlas_name=str(tsv))
        for i, (site, tsv) in enumerate([("SITE_A", tsv_a), ("SITE_B", tsv_b or tsv_a)])
    ]
    (tmp_path / "a" / "dos160.tsv").unlink()  # the coordinator never has the file
    return [read_bundle(p) for p in paths]


@pytest.mark.slow
def test_analysis_uses_release_atlas_and_default_name(tmp_path):
    dataset = Dataset.from_bundles(_bundles(tmp_path))
    assert dataset.atlases == ["dos160"]
    atlas = dataset.atlas("dos160")
    assert atlas.labels[0] == "ROI 1 vmPFC" and atlas.dmn.sum() == 33
    out = run_analysis(
        dataset, "edges", tmp_path / "edges", harmonize="none", progress=False, min_per_group=5
    )
    edges = pd.read_parquet(out / "edge_effects.parquet")
    assert edges.loc[0, "roi_a"] == "ROI 1 vmPFC" and edges.loc[0, "network_a"] == "default"
    dmn = run_analysis(
        dataset, "dmn", tmp_path / "dmn", atlas="dos160", progress=False, min_per_group=5
    )
    assert (dmn / "results.json").is_file()
    assert dataset.resolve_atlas("/elsewhere/dos160.tsv") == "dos160"


def test_sites_with_different_definitions_are_not_pooled(tmp_path):
    other = _custom_tsv(tmp_path / "b" / "dos160.tsv", rename=" changed")
    dataset = Dataset.from_bundles(_bundles(tmp_path, other))
    hashes = dataset.atlas_hashes("dos160")
    assert hashes["SITE_A"] != hashes["SITE_B"]
    with pytest.raises(
        DatasetError, match=f"SITE_A.*{hashes['SITE_A']}.*SITE_B.*{hashes['SITE_B']}"
    ):
        dataset.atlas("dos160")
    with pytest.raises(DatasetError, match="differs between sites"):
        dataset.connectivity("dos160")


def test_several_atlases_need_a_name(tmp_path):
    dataset = Dataset.from_bundles(_bundles(tmp_path))
    dataset.resolve_atlas(None)
    dataset.__class__ = type("Two", (Dataset,), {"atlases": property(lambda s: ["a", "b"])})
    with pytest.raises(DatasetError, match=r"holds the atlases \['a', 'b'\]; name one"):
        dataset.resolve_atlas(None)
    with pytest.raises(AnalysisError, match=r"unknown atlas 'c'.*\['a', 'b'\]"):
        run_analysis(dataset, "edges", tmp_path / "x", atlas="c", progress=False)
