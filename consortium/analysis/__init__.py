"""Consortium analyses: mixed-effects mega-analysis, meta-analysis, mass-univariate maps."""

from consortium.analysis.dmn import CONTRASTS, DmnResult, dmn_model
from consortium.analysis.effects import (
    cohens_d_ci,
    d_from_t,
    edges_to_matrix,
    matrix_to_edges,
    network_block_summary,
)
from consortium.analysis.mass import MassMixedResult, mass_mixed_model
from consortium.analysis.meta import (
    RandomEffectsResult,
    hedges_g_from_t,
    leave_one_out,
    random_effects,
    site_effects,
)
from consortium.analysis.mixed import MixedModelResult, mixed_model
from consortium.analysis.multiple import (
    PermutationResult,
    fdr_bh,
    max_stat_permutation,
    maxstat_permutation,
)

__all__ = [
    "CONTRASTS",
    "DmnResult",
    "MassMixedResult",
    "MixedModelResult",
    "PermutationResult",
    "RandomEffectsResult",
    "cohens_d_ci",
    "d_from_t",
    "dmn_model",
    "edges_to_matrix",
    "fdr_bh",
    "hedges_g_from_t",
    "leave_one_out",
    "mass_mixed_model",
    "matrix_to_edges",
    "max_stat_permutation",
    "maxstat_permutation",
    "mixed_model",
    "network_block_summary",
    "random_effects",
    "site_effects",
]
