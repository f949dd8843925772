"""The commented ``site.toml`` that ``confed-site init`` writes.

The template is data (:func:`template_config`) with comments keyed by dotted
field (:data:`TEMPLATE_COMMENTS`), written by the one TOML writer of site files,
:func:`sites.config.to_toml`. The data manager then edits it to describe the
site's files (see ``docs/site-data-manager/README.md``).
"""

from __future__ import annotations

from typing import Any

from sites.config import DEFAULT_KEYS_DIR, KEY_FILES, to_toml

TEMPLATE_HEADER = """\
confed site configuration (see docs/site-data-manager/README.md).
Relative paths are relative to this file's folder; base_dir, if set, changes
the base of the data paths and patterns only (never of the keys)."""

#: Dotted field -> the comment written on its line.
TEMPLATE_COMMENTS = {
    "keys.private_key": "Ed25519, mode 0600: never share",
    "keys.public_key": "send this one to the coordinator",
    "keys.secret": "pseudonymization secret, mode 0600: never share",
    "phenotypes.allow": "extra columns allowed to leave the site",
    "phenotypes.columns": "source column -> canonical column",
    "phenotypes.values.dx": "source code -> label",
    "connectivity.columns": "Dosenbach 160 in DPARSF ROISignals",
    "motion.source": "phenotype | confounds | realignment | none",
    "qc.min_included": "fewest included subjects for a bundle to be written",
}


def key_paths(keys_dir: str = DEFAULT_KEYS_DIR) -> dict[str, str]:
    """``[keys]`` of a new site: the files ``init`` creates in ``keys_dir``."""
    return {field: f"{keys_dir}/{name}" for field, name in KEY_FILES.items()}


def template_config(site_id: str, keys_dir: str = DEFAULT_KEYS_DIR) -> dict[str, Any]:
    """The example configuration of a new site (a DPARSF layout, as in the guide)."""
    return {
        "site_id": site_id,
        "keys": key_paths(keys_dir),
        "phenotypes": {
            "path": "participants.tsv",
            "dx_case": "MDD",
            "dx_control": "HC",
            "allow": [],
            "columns": {"participant_id": "subject_id", "group": "dx", "age": "age", "sex": "sex"},
            "values": {"dx": {"1": "MDD", "2": "HC"}, "sex": {"1": "M", "2": "F"}},
        },
        "connectivity": [
            {
                "atlas": "dosenbach160",
                "source": "timeseries",
                "pattern": "ROISignals/ROISignals_{subject_id}.mat",
                "columns": "1409-1568",
            }
        ],
        "motion": {
            "source": "realignment",
            "definition": "jenkinson",
            "pattern": "RealignParameter/{subject_id}/rp_{subject_id}.txt",
        },
        "qc": {"max_mean_fd": 0.2, "min_volumes": 50, "min_included": 1},
    }


def render_template(site_id: str, keys_dir: str = DEFAULT_KEYS_DIR) -> str:
    """The commented TOML text of :func:`template_config`."""
    return to_toml(template_config(site_id, keys_dir), TEMPLATE_COMMENTS, TEMPLATE_HEADER)
