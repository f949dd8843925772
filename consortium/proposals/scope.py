"""The data a grant reaches: the pinned release, cut to its sites, columns and measures."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from consortium.errors import ConfedError
from consortium.proposals.grants import pseudonym


@dataclass(frozen=True)
class GrantView:
    """Plain values of a grant, read in one transaction and used outside it."""

    proposal_code: str
    title: str
    release_name: str
    release_hash: str
    sites: list[str]
    columns: list[str]
    measures: list[str]
    pseudonym_key: str = field(repr=False)
    recipient: dict[str, str] = field(default_factory=dict)
    expires_at: str = ""
    strata: dict[str, list] = field(default_factory=dict)  # the grant's effective strata


@dataclass
class ScopedData:
    subjects: pd.DataFrame  # subject (re-keyed), site, granted columns
    tables: dict[str, pd.DataFrame]  # "networks:<atlas>" -> subjects x network pairs
    arrays: dict[str, np.ndarray]  # "connectivity:<atlas>" / "map:<metric>" -> subjects x k
    mask_images: dict[str, object]  # "map:<metric>" -> nibabel mask image
    dx_labels: dict[str, str] = field(default_factory=dict)
    # the release's subject keys, rows as ``subjects``: never leave the coordinator
    subject_keys: list[str] = field(default_factory=list, repr=False)
    # atlas name -> sites.atlas.Atlas of each granted connectivity, from the release
    atlases: dict[str, object] = field(default_factory=dict)


def load_scoped(root, db_url: str | None, view: GrantView) -> ScopedData:
    """Open the release (re-verifying every bundle) and cut it to the grant."""
    from consortium.releases import open_release

    ds = open_release(root, view.release_name, db_url)
    if ds.release_hash != view.release_hash:
        raise ConfedError(
            "release_changed",
            f"release {view.release_name} hash {ds.release_hash} differs from the grant's "
            f"{view.release_hash}",
            500,
        )
    keep = ds.subjects["site"].isin(view.sites).to_numpy()
    rows = ds.subjects.loc[keep]
    subjects = rows[["site", *view.columns]].reset_index(drop=True)
    subjects.insert(0, "subject", [pseudonym(view.pseudonym_key, k) for k in rows["subject_key"]])
    tables, arrays, masks, atlases = {}, {}, {}, {}
    for measure in view.measures:
        kind, name = measure.split(":", 1)
        if kind == "networks":
            tables[measure] = ds.network_summaries(name).loc[keep].reset_index(drop=True)
        elif kind == "connectivity":
            arrays[measure] = np.asarray(ds.connectivity(name))[keep]
            atlases[name] = ds.atlas(name)
        elif kind == "map":
            mask, values = ds.maps(name)
            arrays[measure] = np.asarray(values[np.flatnonzero(keep)])
            masks[measure] = mask
        else:
            raise ConfedError("unknown_measure", f"measure {measure!r} is not known", 422)
    keys = [str(k) for k in rows["subject_key"]]
    return ScopedData(subjects, tables, arrays, masks, dict(ds.dx_labels), keys, atlases)
