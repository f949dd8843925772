"""Forest plot files."""

from __future__ import annotations

import numpy as np

from consortium.analysis import random_effects
from consortium.analysis.forest import forest_plot, save_forest_plot


def test_forest_plot_writes_png_and_svg(tmp_path, bcg):
    yi, vi = bcg
    pooled = random_effects(yi, vi)
    fig = forest_plot(yi, vi, [f"trial {i + 1}" for i in range(len(yi))], result=pooled)
    written = save_forest_plot(fig, tmp_path / "forest")
    assert [p.name for p in written] == ["forest.png", "forest.svg"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in written[1].read_text()[:500]
    assert not list(tmp_path.glob("*.part"))
    assert np.isfinite(pooled.estimate)
