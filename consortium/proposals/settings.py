"""Configuration of proposal review, site consent and disclosure control.

Kept in ``<root>/proposals.json`` (optional; defaults below) next to the
coordinator's own ``coordinator.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from consortium.errors import ConfedError
from consortium.settings_file import OptionalSettingsFile

PROPOSAL_SETTINGS_FILE = "proposals.json"

DUA_VERSION = "1.0"
DUA_TEXT = """confed data-use agreement, version 1.0

1. The data are used only for the aims and analysis plan of the approved proposal.
2. No attempt is made to re-identify any participant or to link these data with
   other data sets by subject; pseudonyms are specific to this proposal.
3. The data are not passed to anyone not named on the proposal, and are deleted
   when the grant ends (expiry or closure).
4. Publications acknowledge the contributing sites and the consortium, and are
   sent to the steering committee before submission.
5. Any suspected breach is reported to the steering committee at once.
"""


@dataclass
class ProposalSettings(OptionalSettingsFile):
    """Rules the coordinator enforces for proposals.

    Parameters
    ----------
    quorum : int
        Votes needed before a decision is taken.
    majority : float
        A decision (approve, reject or revise) is taken when strictly more than
        this fraction of the votes cast in the round agree on it.
    coi_same_institution : bool
        Also treat members of the proposer's institution as conflicted (they may
        not vote), besides the proposer themself.
    consent_window_days : int
        Days after approval during which a requested site may opt out.
    min_cell_size : int
        Smallest group or subgroup any remote result may describe: every strata cell
        of a released result, and every group that differencing of a researcher's
        released results could isolate.
    age_bands : list of float
        Band edges of the default strata (``age`` only) of a grant whose activation
        does not set strata: bands ``[0, 12)``, ``[12, 18)``, ... , ``[65, 120]``.
    """

    quorum: int = 2
    majority: float = 0.5
    coi_same_institution: bool = True
    consent_window_days: int = 14
    min_cell_size: int = 10
    age_bands: list[float] = field(default_factory=lambda: [0, 12, 18, 30, 45, 65, 120])

    FILE: ClassVar[str] = PROPOSAL_SETTINGS_FILE

    def __post_init__(self) -> None:
        if self.quorum < 1:
            raise ConfedError("bad_settings", f"quorum must be >= 1, got {self.quorum}")
        if not 0 <= self.majority < 1:
            raise ConfedError("bad_settings", f"majority must be in [0, 1), got {self.majority}")
        if self.consent_window_days < 0:
            raise ConfedError("bad_settings", "consent_window_days must be >= 0")
        if self.min_cell_size < 1:
            raise ConfedError("bad_settings", "min_cell_size must be >= 1")
        bands = self.age_bands
        if len(bands) < 2 or any(b <= a for a, b in zip(bands, bands[1:], strict=False)):
            raise ConfedError("bad_settings", f"age_bands must increase, got {bands}")
