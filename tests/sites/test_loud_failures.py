"""Issue #12: `confed site compute` fails loudly, and the site config is easy to get right.

Real ABIDE sites (DX_GROUP 1 = ASD, 2 = TDC): a swapped diagnosis map, a
minimum of included subjects, the output-folder check, keys next to the config
whatever ``base_dir`` says, and the docs the generated ``site.toml`` links to.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sites.cli import EXIT_TOO_FEW_INCLUDED, app
from sites.template import render_template
from tests.helpers.bundles import abide_config_text
from tests.helpers.keys import make_site

REPO = Path(__file__).resolve().parents[2]
SITE = "KKI"  # 33 subjects: quick


@pytest.fixture
def site(tmp_path, abide_dir):
    files = make_site(tmp_path, "S01")
    config = tmp_path / "S01.toml"
    config.write_text(abide_config_text("S01", abide_dir / SITE, files))
    return config


def _compute(config: Path, out: Path, *extra: str):
    return CliRunner().invoke(
        app, ["compute", "--config", str(config), "--out", str(out), "--quiet", *extra]
    )


def _swap_dx(config: Path) -> None:
    text = config.read_text()
    swapped = '[phenotypes.values.dx]\n"0" = "ASD"\n"1" = "TDC"\n'
    config.write_text(text.replace('[phenotypes.values.dx]\n"1" = "ASD"\n"2" = "TDC"\n', swapped))
    assert swapped in config.read_text()


def test_swapped_dx_map_fails_with_codes_seen_and_mapped(site, tmp_path):
    _swap_dx(site)
    result = _compute(site, tmp_path / "bundle")
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "column 'DX_GROUP' (dx): codes seen '1' (" in text and "'2' (" in text
    assert "codes mapped '0' -> ASD, '1' -> TDC" in text
    assert "--accept-unmapped-codes" in text
    assert not (tmp_path / "bundle").exists()


def test_swapped_dx_map_with_override_warns_one_group(site, tmp_path):
    _swap_dx(site)
    result = _compute(site, tmp_path / "bundle", "--accept-unmapped-codes")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning: site S01: all" in text and "are TDC; none is ASD" in text
    assert "check [phenotypes.values.dx]" in text


def test_min_included(site, tmp_path):
    site.write_text(site.read_text().replace("min_included = 0", "min_included = 1000"))
    result = _compute(site, tmp_path / "bundle")
    assert result.exit_code == EXIT_TOO_FEW_INCLUDED
    text = " ".join(result.output.split())
    assert "site S01:" in text and "fewer than [qc] min_included = 1000" in text
    assert not (tmp_path / "bundle").exists()


def test_out_folder_checked_first_and_empty_accepted(site, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    result = _compute(tmp_path / "no-such.toml", full)  # no work: not even the config is read
    assert result.exit_code == 1
    assert "not empty" in result.output and "--overwrite" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _compute(site, empty)
    assert result.exit_code == 0, result.output
    assert (empty / "manifest.json").is_file()


def test_keys_relative_to_config_not_base_dir(tmp_path, abide_dir):
    files = make_site(tmp_path, "S01")  # keys in tmp_path/S01/keys
    text = abide_config_text("S01", abide_dir / SITE, files)
    for path in (files.private_key_path, files.public_key_path, files.secret_path):
        text = text.replace(str(path), f"keys/{path.name}")
    assert f'base_dir = "{abide_dir / SITE}"' in text
    config = files.root / "relative.toml"
    config.write_text(text)
    result = _compute(config, tmp_path / "bundle")
    assert result.exit_code == 0, result.output


def test_template_links_only_existing_docs():
    paths = re.findall(r"docs/[\w./-]+", render_template("S01"))
    assert paths, "the template should point to the guide"
    for path in paths:
        assert (REPO / path.rstrip(".")).exists(), path
