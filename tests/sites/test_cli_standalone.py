"""``confed-site`` stands alone: it imports nothing from ``consortium``.

The hospital's process runs the site agent only. Every check runs in a fresh
interpreter (``sys.modules`` of this test process holds whatever other tests
imported): the ``confed-site`` command line from ``--help`` to a computed,
validated and exported bundle, and the installed console script itself.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

from typer.testing import CliRunner

from sites.cli import UPLOAD_COMMANDS, app
from sites.config import load_config
from sites.template import TEMPLATE_COMMENTS, template_config
from tests.helpers import site_folders as synthetic
from tests.helpers.keys import make_site

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "confed-site"

PROBE = """
import json, sys
from typer.testing import CliRunner
from sites.cli import app
outputs = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
    outputs.append(result.output)
print(json.dumps({"consortium": sorted(m for m in sys.modules if m.split(".")[0] == "consortium"),
                  "outputs": outputs}))
"""


def _run_site_cli(*runs: list[str]) -> dict:
    """Run ``confed-site`` commands in a fresh interpreter; its modules and outputs."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(runs)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_help_imports_nothing_from_consortium():
    seen = _run_site_cli(["--help"], ["submit", "--help"], ["proposals", "--help"])
    assert seen["consortium"] == []
    assert "compute" in seen["outputs"][0] and "verify-receipts" in seen["outputs"][0]
    assert "--token-file" in seen["outputs"][1]  # the real command, imported on demand


def test_compute_validate_export_import_nothing_from_consortium(tmp_path):
    keys = make_site(tmp_path, "S01")
    synthetic.dparsf_site(keys, n=4)
    bundle, tar = tmp_path / "bundle", tmp_path / "bundle.tar"
    seen = _run_site_cli(
        ["compute", "--config", str(keys.config_path), "--out", str(bundle), "--quiet"],
        ["validate", str(bundle)],
        ["export", str(bundle), "-o", str(tar)],
    )
    assert seen["consortium"] == []
    assert "valid" in seen["outputs"][1]
    assert tar.is_file()


def test_installed_script_imports_nothing_from_consortium():
    assert SCRIPT.is_file(), f"{SCRIPT} missing: run `pip install -e .` (pyproject scripts)"
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    result = subprocess.run(
        [str(SCRIPT), "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Site agent" in result.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "sites.cli" in imported  # the profile did list the imports
    assert [m for m in imported if m.split(".")[0] == "consortium"] == []


def test_init_writes_the_commented_template(tmp_path):
    out = tmp_path / "site" / "site.toml"
    out.parent.mkdir()
    result = CliRunner().invoke(app, ["init", "--site-id", "S07", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert tomllib.loads(text) == template_config("S07")
    for comment in TEMPLATE_COMMENTS.values():
        assert f"# {comment}" in text
    assert load_config(out).site_id == "S07"
    for key in ("site_ed25519.pem", "pseudonym.secret"):
        assert stat.S_IMODE((out.parent / "keys" / key).stat().st_mode) == 0o600


def test_confed_site_still_mounted_under_confed(tmp_path):
    from consortium.cli.main import app as confed

    out = tmp_path / "site.toml"
    result = CliRunner().invoke(confed, ["site", "init", "--site-id", "S08", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert load_config(out).site_id == "S08"
    listing = CliRunner().invoke(confed, ["site", "--help"])
    assert all(name in listing.output for name in UPLOAD_COMMANDS)


def test_lazy_short_help_is_the_docstring_first_line():
    for name, lazy in UPLOAD_COMMANDS.items():
        command = lazy.load(name)
        doc = inspect.getdoc(getattr(importlib.import_module(lazy.module), lazy.attribute))
        assert lazy.short_help == doc.splitlines()[0], name
        assert command.name == name
