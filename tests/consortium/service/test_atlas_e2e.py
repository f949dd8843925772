"""Issue 12 acceptance: a consortium-wide custom atlas travels with the data.

Three real ABIDE sites share one atlas TSV (Harvard-Oxford without ROI 83, with
a network and a DMN column) and run the separate commands: ``confed site
compute`` / ``site submit`` at each site, ``confed coord release create``,
``confed analyze dmn|networks|edges`` and ``confed report`` at the coordinator,
which never has the TSV file. A fourth site with a different definition under
the same atlas name cannot be pooled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sites.atlas import atlas_tsv_bytes, load_atlas
from tests.helpers.bundles import abide_config_text
from tests.helpers.keys import make_site
from tests.helpers.server import confed

SITES = {"S01": ("NYU", 40), "S02": ("KKI", None), "S03": ("STANFORD", None)}
KEEP = [i for i in range(1, 112) if i != 83]


def _network(roi: int) -> str:
    return ["frontal", "default", "posterior", "deep"][min((roi - 1) // 30, 3)]


def _write_atlas(path: Path, changed: bool = False) -> Path:
    rows = [
        f"{n}\tHarvard-Oxford ROI {roi}{' (b)' if changed and n == 1 else ''}\t"
        f"{_network(roi)}\t{int(_network(roi) == 'default')}"
        for n, roi in enumerate(KEEP, 1)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("index\tlabel\tnetwork\tdmn\n" + "\n".join(rows) + "\n")
    return path


def _capped_site(abide_dir: Path, site: str, n: int, folder: Path) -> Path:
    """A site folder holding the first ``n`` subjects of an ABIDE site (symbolic links)."""
    folder.mkdir(parents=True)
    table = pd.read_csv(abide_dir / site / "participants.csv", dtype=str).head(n)
    table.to_csv(folder / "participants.csv", index=False)
    for file_id in table["FILE_ID"]:
        name = f"{file_id}_rois_ho.1D.gz"
        (folder / name).symlink_to(abide_dir / site / name)
    return folder


def _compute_and_submit(server, abide_dir, tmp_path, site_id, site, cap, atlas) -> None:
    keys = make_site(tmp_path / "sites", site_id)
    folder = abide_dir / site
    if cap:
        folder = _capped_site(abide_dir, site, cap, tmp_path / "data" / site_id)
    text = abide_config_text(site_id, folder, keys, atlas=str(atlas))
    text = text.replace(f'atlas = "{atlas}"', f'atlas = "{atlas}"\ncolumns = "1-82,84-111"')
    config = tmp_path / f"{site_id}-site.toml"
    config.write_text(text)
    bundle = tmp_path / "bundles" / site_id
    confed("site", "compute", "--config", str(config), "--out", str(bundle), "--quiet")
    token = server.add_site(site_id, keys.public_key_path)
    (tmp_path / f"{site_id}.token").write_text(token)
    out = confed(
        "site", "submit", str(bundle), "--config", str(config),
        "--url", server.url, "--token-file", str(tmp_path / f"{site_id}.token"),
    ).stdout  # fmt: skip
    assert "accepted: submission" in out


def _analyze(server, kind: str, out: Path, *extra: str) -> Path:
    confed(
        "analyze", kind, "--release", "r1", "--root", str(server.root), *server.db_args,
        "--out", str(out), "--min-per-group", "5", "--quiet", *extra,
    )  # fmt: skip
    return out


def test_custom_atlas_travels_with_the_data(server, abide_dir, tmp_path):
    atlas = _write_atlas(tmp_path / "shared" / "ho110.tsv")
    for site_id, (site, cap) in SITES.items():
        _compute_and_submit(server, abide_dir, tmp_path, site_id, site, cap, atlas)
    pinned = hashlib.sha256(atlas_tsv_bytes(load_atlas(atlas))).hexdigest()
    atlas.unlink()  # the coordinator reads the atlas from the bundles only
    server.cli("release", "create", "r1")

    dmn = _analyze(server, "dmn", tmp_path / "dmn")
    networks = _analyze(server, "networks", tmp_path / "networks", "--atlas", "ho110")
    edges = _analyze(server, "edges", tmp_path / "edges", "--atlas", "ho110", "--harmonize", "none")

    doc = json.loads((dmn / "results.json").read_text())
    assert doc["provenance"]["parameters"]["atlas"] == "ho110"
    assert doc["provenance"]["atlas_sha256"] == pinned
    assert doc["dmn"]["models"]["none"]["n"] > 40
    pairs = pd.read_parquet(networks / "network_effects.parquet")
    assert {"default", "frontal", "posterior", "deep"} <= set(pairs["net_a"])
    table = pd.read_parquet(edges / "edge_effects.parquet")
    assert len(table) == 110 * 109 // 2
    assert table.loc[0, ["roi_a", "roi_b"]].tolist() == [
        "Harvard-Oxford ROI 1", "Harvard-Oxford ROI 2"
    ]  # fmt: skip
    # Column 83 of the row (index 83) is Harvard-Oxford ROI 84: ROI 83 was dropped.
    assert "Harvard-Oxford ROI 83" not in set(table["roi_a"]) | set(table["roi_b"])
    strongest = json.loads((edges / "results.json").read_text())["edges"]["strongest"]
    assert all(r["roi_a"].startswith("Harvard-Oxford ROI") for r in strongest)

    html = tmp_path / "report.html"
    confed("report", "--analysis", str(dmn), "--analysis", str(networks),
           "--analysis", str(edges), "-o", str(html))  # fmt: skip
    assert strongest[0]["roi_a"] in html.read_text()

    # The same atlas name with another definition cannot join a release.
    other = _write_atlas(tmp_path / "other" / "ho110.tsv", changed=True)
    _compute_and_submit(server, abide_dir, tmp_path, "S04", "STANFORD", None, other)
    res = server.cli("release", "create", "r2", check=False)
    assert res.returncode == 1
    assert "atlas 'ho110' differs between sites" in res.stdout
    assert "S01" in res.stdout and "S04" in res.stdout
    with pytest.raises(AssertionError, match="unknown atlas 'ho111'"):
        _analyze(server, "edges", tmp_path / "edges2", "--atlas", "ho111")


@pytest.mark.slow
def test_demo_with_atlas_gives_the_same_numbers(server, abide_dir, tmp_path):
    """``confed demo --data --atlas my.tsv`` equals the separate commands, number for number."""
    atlas = tmp_path / "shared" / "ho111net.tsv"
    rows = [
        f"{roi}\tHarvard-Oxford ROI {roi}\t{_network(roi)}\t{int(_network(roi) == 'default')}"
        for roi in range(1, 112)
    ]
    atlas.parent.mkdir(parents=True)
    atlas.write_text("index\tlabel\tnetwork\tdmn\n" + "\n".join(rows) + "\n")
    for site in ("KKI", "STANFORD"):
        keys = make_site(tmp_path / "sites", site)
        config = tmp_path / f"{site}-site.toml"
        config.write_text(abide_config_text(site, abide_dir / site, keys, atlas=str(atlas)))
        bundle = tmp_path / "bundles" / site
        confed("site", "compute", "--config", str(config), "--out", str(bundle), "--quiet")
        token = tmp_path / f"{site}.token"
        token.write_text(server.add_site(site, keys.public_key_path))
        confed("site", "submit", str(bundle), "--config", str(config), "--url", server.url,
               "--token-file", str(token))  # fmt: skip
    server.cli("release", "create", "r1")
    separate = _analyze(server, "edges", tmp_path / "edges")

    demo = tmp_path / "demo"
    confed(
        "demo", "--data", str(abide_dir), "--atlas", str(atlas), "--only-sites",
        "KKI,STANFORD", "--min-per-group", "5", "--out", str(demo), "--quiet", "--jobs", "1",
    )  # fmt: skip
    ours = pd.read_parquet(separate / "edge_effects.parquet")
    theirs = pd.read_parquet(demo / "analysis" / "edges" / "edge_effects.parquet")
    assert ours["roi_a"].tolist() == theirs["roi_a"].tolist()
    assert ours.loc[0, "roi_a"] == "Harvard-Oxford ROI 1"
    for column in ("t", "d", "p"):
        np.testing.assert_allclose(ours[column], theirs[column], rtol=1e-6, atol=1e-9)
