"""Consortium analyses: mixed-effects mega-analysis, meta-analysis, mass-univariate maps."""

from consortium.analysis.mass import MassMixedResult, mass_mixed_model
from consortium.analysis.meta import RandomEffectsResult, random_effects
from consortium.analysis.mixed import MixedModelResult, mixed_model

__all__ = [
    "MassMixedResult",
    "MixedModelResult",
    "RandomEffectsResult",
    "mass_mixed_model",
    "mixed_model",
    "random_effects",
]
