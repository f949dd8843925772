"""The remote-analysis interval plot: rows from aggregate results, escaped labels."""

from __future__ import annotations

import math

from consortium.portal.plots import Z_95, interval_plot, result_intervals


def test_meta_result_rows_are_site_intervals_then_pooled():
    result = {
        "pooled": {"estimate": -0.3, "ci": [-0.5, -0.1]},
        "sites": {"S01": {"g": -0.2, "vi": 0.04}, "S02": {"g": -0.4, "vi": 0.01}},
    }
    title, rows = result_intervals(result)
    assert "Hedges' g" in title
    assert [r.label for r in rows] == ["S01", "S02", "pooled"]
    assert rows[0].low == -0.2 - Z_95 * math.sqrt(0.04)
    assert rows[0].high == -0.2 + Z_95 * math.sqrt(0.04)
    assert rows[-1].pooled and (rows[-1].low, rows[-1].high) == (-0.5, -0.1)


def test_mixed_result_rows_skip_the_intercept():
    result = {"coefficients": [
        {"term": "Intercept", "estimate": 1.0, "se": 0.1},
        {"term": "dx", "estimate": -0.05, "se": 0.02},
    ]}
    _, rows = result_intervals(result)
    assert [r.label for r in rows] == ["dx"]
    assert rows[0].low == -0.05 - Z_95 * 0.02


def test_svg_escapes_labels_and_skips_non_finite_rows():
    result = {"coefficients": [
        {"term": "<script>alert(1)</script>", "estimate": 0.1, "se": 0.05},
        {"term": "bad", "estimate": float("nan"), "se": 0.05},
    ]}
    svg = str(interval_plot(*result_intervals(result)))
    assert svg.startswith("<svg") and 'role="img"' in svg
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert ">bad<" not in svg
    assert str(interval_plot("empty", [])) == ""
