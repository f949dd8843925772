"""Consortium analyses: mixed-effects mega-analysis, meta-analysis, mass-univariate maps.

The names below are imported on first use (PEP 562), so that importing a light
submodule (``consortium.analysis.registry``, ``.params``) does not load numpy,
scipy and statsmodels: the CLI lists the kinds from the registry at start-up.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CONTRASTS": "consortium.analysis.contrasts",
    "DmnResult": "consortium.analysis.dmn",
    "dmn_model": "consortium.analysis.dmn",
    "bootstrap_d_ci": "consortium.analysis.d_bootstrap",
    "bootstrap_t": "consortium.analysis.d_bootstrap",
    "cohens_d_ci": "consortium.analysis.effects",
    "d_from_t": "consortium.analysis.effects",
    "jackknife_d_ci": "consortium.analysis.effects",
    "leave_one_site_out_d": "consortium.analysis.effects",
    "edges_to_matrix": "consortium.analysis.effects",
    "matrix_to_edges": "consortium.analysis.effects",
    "network_block_summary": "consortium.analysis.effects",
    "MassMixedResult": "consortium.analysis.mass",
    "mass_mixed_model": "consortium.analysis.mass",
    "RandomEffectsResult": "consortium.analysis.meta",
    "hedges_g_from_t": "consortium.analysis.meta",
    "leave_one_out": "consortium.analysis.meta",
    "random_effects": "consortium.analysis.meta",
    "site_effects": "consortium.analysis.meta",
    "MixedModelResult": "consortium.analysis.mixed",
    "mixed_model": "consortium.analysis.mixed",
    "PermutationResult": "consortium.analysis.multiple",
    "fdr_bh": "consortium.analysis.multiple",
    "max_stat_permutation": "consortium.analysis.multiple",
    "maxstat_permutation": "consortium.analysis.multiple",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'consortium.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
