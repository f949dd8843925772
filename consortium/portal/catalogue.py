"""What a researcher may request: releases, and per release its sites, measures, columns.

Read from the release manifests by :func:`consortium.proposals.lifecycle.release_catalog`
(names only, never data), so a proposal is chosen from what exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from consortium.proposals.lifecycle import KEY_COLUMNS, release_catalog
from consortium.proposals.settings import ProposalSettings
from consortium.releases import get_release, list_releases
from consortium.store import ObjectStore


@dataclass
class Catalogue:
    """Names a proposal may request from one release (measures and columns: all sites)."""

    releases: list[str]
    release: str | None = None
    sites: list[str] = field(default_factory=list)
    measures: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    strata: str = ""


def catalogue(session: Session, store: ObjectStore, settings: ProposalSettings,
              release: str | None) -> Catalogue:
    """The catalogue of ``release`` (default: the newest release)."""
    names = [r.name for r in sorted(list_releases(session), key=lambda r: r.created_at,
                                    reverse=True)]
    chosen = release if release in names else (names[0] if names else None)
    out = Catalogue(releases=names, release=chosen)
    if chosen is None:
        return out
    per_site = release_catalog(session, store, get_release(session, chosen))
    out.sites = sorted(per_site)
    measures = set.union(*(v["measures"] for v in per_site.values())) if per_site else set()
    columns = set.union(*(v["columns"] for v in per_site.values())) if per_site else set()
    out.measures = sorted(measures)
    out.columns = sorted(columns - set(KEY_COLUMNS))
    bands = settings.age_bands
    out.strata = (f"site and diagnosis always; age in bands {bands} unless the committee "
                  "fixes other strata at activation")
    return out
