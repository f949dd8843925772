"""One reader for coordinator.json, proposals.json and portal.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.errors import ConfedError
from consortium.portal.settings import PORTAL_SETTINGS_FILE, PortalSettings
from consortium.proposals.settings import PROPOSAL_SETTINGS_FILE, ProposalSettings
from consortium.settings import SETTINGS_FILE, Settings


@pytest.mark.parametrize(
    ("cls", "name"),
    [(PortalSettings, PORTAL_SETTINGS_FILE), (ProposalSettings, PROPOSAL_SETTINGS_FILE),
     (Settings, SETTINGS_FILE)],
)
@pytest.mark.parametrize(
    ("text", "message"),
    [("{", "is not valid JSON"), ("[1]", "must hold a JSON object"),
     ('{"colour": 1}', r"unknown keys \['colour'\]")],
)
def test_bad_file_is_refused_naming_it(tmp_path: Path, cls, name: str, text: str,
                                       message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfedError, match=message) as err:
        cls.load(tmp_path)
    assert err.value.code == "bad_settings" and name in err.value.message


def test_saved_settings_load_back(tmp_path: Path) -> None:
    PortalSettings(page_size=7).save(tmp_path)
    ProposalSettings(quorum=3).save(tmp_path)
    Settings(root=tmp_path, token_days=9).save()
    assert PortalSettings.load(tmp_path).page_size == 7
    assert ProposalSettings.load(tmp_path).quorum == 3
    assert Settings.load(tmp_path).token_days == 9
    assert (tmp_path / SETTINGS_FILE).stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_optional_files_give_defaults(tmp_path: Path) -> None:
    assert PortalSettings.load(tmp_path) == PortalSettings()
    assert ProposalSettings.load(tmp_path) == ProposalSettings()
