"""`confed demo --data` with relative paths, run from another folder (issue #12)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consortium.cli.main import app


@pytest.mark.slow
def test_relative_data_and_out_from_another_cwd(
    abide_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    data = os.path.relpath(abide_dir, cwd)
    assert not Path(data).is_absolute() and data.startswith("..")
    args = [
        "demo",
        "--data",
        data,
        "--out",
        "demo-out",
        "--only-sites",
        "NYU,STANFORD",
        "--max-subjects",
        "6",
        "--min-per-group",
        "3",
        "--no-voxels",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((cwd / "demo-out" / "summary.json").read_text())
    assert summary["mode"] == "real data" and summary["sites"] == 2
    assert summary["subjects_in_site_files"] == 24
