"""Analysis jobs through the coordinator API (in-process app, real SQLite root)."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from consortium.api import create_app
from consortium.cli.main import app as cli
from consortium.settings import Settings
from sites.bundle import export_bundle
from tests.helpers.server import init_coordinator


@pytest.fixture
def coordinator(tmp_path, synthetic_bundles):
    """A coordinator root holding release r1 of the three synthetic bundles."""
    root = tmp_path / "coord"
    admin = {"Authorization": f"Bearer {init_coordinator(root)}"}
    client = TestClient(create_app(Settings.load(root)))
    for bundle in synthetic_bundles:
        r = client.post("/api/v1/sites", headers=admin, json={
            "id": bundle.site_id, "name": bundle.site_id,
            "public_key_pem": bundle.signer["public_key_pem"]})
        assert r.status_code == 201, r.text
        site = {"Authorization": f"Bearer {r.json()['token']}",
                "Content-Type": "application/x-tar"}
        tar = export_bundle(bundle.path, tmp_path / f"{bundle.site_id}.tar")
        r = client.post("/api/v1/submissions", headers=site, content=tar.read_bytes())
        assert r.status_code in (200, 201), r.text
    r = client.post("/api/v1/releases", headers=admin, json={"name": "r1"})
    assert r.status_code == 201, r.text
    r = client.post("/api/v1/tokens", headers=admin, json={"role": "researcher"})
    assert r.status_code == 201, r.text
    researcher = {"Authorization": f"Bearer {r.json()['token']}"}
    return client, admin, researcher, root


def _wait(client, headers, job_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/api/v1/analyses/{job_id}", headers=headers).json()
        if state["status"] in ("done", "failed"):
            return state
        time.sleep(0.2)
    raise AssertionError(f"analysis job {job_id} not finished in {timeout} s")


def test_analysis_job_runs_on_a_release(coordinator, dataset):
    client, admin, researcher, root = coordinator
    r = client.post("/api/v1/analyses", headers=admin,
                    json={"release": "r1", "kind": "networks", "harmonize": "none"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("queued", "running", "done")
    state = _wait(client, admin, job["id"])
    assert state["status"] == "done", state["error"]
    results = state["results"]
    assert results["kind"] == "networks"
    assert results["provenance"]["release_name"] == "r1"
    assert len(results["provenance"]["release_hash"]) == 64
    assert results["design"]["n"] == len(dataset.subjects)
    assert (root / "analyses" / job["id"] / "results" / "network_effects.parquet").is_file()
    listed = client.get("/api/v1/analyses", headers=admin).json()
    assert [j["id"] for j in listed] == [job["id"]]
    page = client.get(f"/api/v1/analyses/{job['id']}/report", headers=admin)
    assert page.status_code == 200 and 'id="network-matrix"' in page.text


def test_analysis_job_errors(coordinator):
    client, admin, researcher, _ = coordinator
    r = client.post("/api/v1/analyses", headers=researcher,
                    json={"release": "r1", "kind": "dmn"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = client.post("/api/v1/analyses", headers=admin, json={"release": "nope", "kind": "dmn"})
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
    r = client.post("/api/v1/analyses", headers=admin, json={"release": "r1", "kind": "roi"})
    assert r.status_code == 422
    assert client.get("/api/v1/analyses/not-a-job", headers=admin).status_code == 404
    # A job that fails records why: the synthetic release has no 'ho111' atlas.
    r = client.post("/api/v1/analyses", headers=admin,
                    json={"release": "r1", "kind": "edges", "atlas": "ho111",
                          "harmonize": "none"})
    state = _wait(client, admin, r.json()["id"])
    assert state["status"] == "failed" and "ho111" in state["error"]
    report = client.get(f"/api/v1/analyses/{state['id']}/report", headers=admin)
    assert report.status_code == 409


def test_cli_analyze_a_release(coordinator, tmp_path):
    _, _, _, root = coordinator
    out = tmp_path / "dmn"
    result = CliRunner().invoke(cli, ["analyze", "dmn", "--release", "r1", "--root", str(root),
                                      "--harmonize", "none", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = (out / "results.json").read_text()
    assert '"release_name": "r1"' in doc
    result = CliRunner().invoke(cli, ["analyze", "dmn", "--release", "r9", "--root", str(root),
                                      "--quiet", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "r9" in result.output


def test_job_interrupted_by_a_restart_reads_as_failed(coordinator):
    client, admin, _, root = coordinator
    job_id = "0" * 32
    folder = root / "analyses" / job_id
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({
        "id": job_id, "status": "running", "submitted_by": "admin",
        "submitted_at": "2026-01-01T00:00:00+00:00", "finished_at": None, "error": None,
        "request": {"release": "r1", "kind": "dmn"}}))
    state = client.get(f"/api/v1/analyses/{job_id}", headers=admin).json()
    assert state["status"] == "failed" and "server stopped" in state["error"]
