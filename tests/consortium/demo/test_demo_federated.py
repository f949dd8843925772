"""`confed demo --mode federated`: sites keep their bundles; their agents answer the analyses."""

from __future__ import annotations

import json

from consortium.demo import format_summary, run_demo


def test_federated_demo_runs_dmn_and_edges_without_a_release(tmp_path):
    out = tmp_path / "out"
    result = run_demo(out, n_sites=3, subjects_scale=0.3, seed=7, min_per_group=3,
                      voxels=False, progress=False, federated=True)  # fmt: skip
    summary = result.summary
    assert summary["mode"] == "simulated, federated"
    assert "release" not in summary  # nothing was submitted
    assert not list((out / "coordinator").rglob("*.tar"))
    assert set(summary["analyses"]) == {"dmn", "edges"}
    for kind in ("dmn", "edges"):
        doc = json.loads((out / "analysis" / kind / "results.json").read_text())
        assert doc["provenance"]["parameters"]["mode"] == "federated"
        assert len(doc["design"]["sites"]) == 3 and not doc["design"]["sites_excluded"]
    assert summary["analysed"]["n"] == summary["analysed"]["n_case"] + summary["analysed"][
        "n_control"] > 0  # fmt: skip
    for site in (p for p in (out / "sites").iterdir() if p.is_dir()):
        log = site / "federated" / "log.jsonl"
        events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
        assert events.count("message.sent") == 4, (site.name, events)  # dmn 3 + edges 1
    text = format_summary(summary)
    assert text.startswith("mode: federated") and "QC exclusions: at the sites" in text
    assert result.report.exists()
