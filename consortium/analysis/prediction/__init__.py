"""Site-aware prediction: cross-validated classification with in-fold harmonization.

A classifier trained on pooled multi-site data is only useful if it works at a
site it has not seen. :func:`cross_validate` therefore evaluates it with whole
sites held out (leave-one-site-out by default) and reports the optimistic
random K-fold figure beside it, so the gap is visible [1]_, [2]_.

Leakage is avoided at every step that learns from data:

- The harmonizer (any entry of :mod:`harmonization.registry`; ComBat [3]_ by
  default) is fitted inside each training fold only, with age, sex and
  diagnosis as covariates (diagnosis keeps the group difference in the
  training data). Test subjects are harmonized without their labels: a
  held-out site's location/scale effects are estimated from its own features
  with the diagnosis covariate fixed at the training fold's case fraction, a
  constant, so the test labels never enter (see :class:`FoldHarmonizer`).
- Scaling and the classifier's hyperparameter (``C``) are chosen by nested
  cross-validation with site-grouped folds inside the training set; the
  inner folds refit the harmonizer too.
- The permutation test shuffles labels within each site, keeping each site's
  case fraction, and repeats the whole procedure.

Modules: :mod:`.features` (the feature matrix of a release), :mod:`.abide`
(the ABIDE PCP folder reader), :mod:`.harmonize` (in-fold harmonization),
:mod:`.models` (classifiers), :mod:`.config`, :mod:`.crossval` and
:mod:`.output` (``prediction.json`` and plots).

References
----------
.. [1] Abraham A. et al. (2017). Deriving reproducible biomarkers from
   multi-site resting-state data: an autism-based example. NeuroImage
   147:736-745.
.. [2] Yan C.-G. et al. (2019). Reduced default mode network functional
   connectivity in patients with recurrent major depressive disorder. PNAS
   116:9078-9083.
.. [3] Fortin J.-P. et al. (2018). Harmonization of cortical thickness
   measurements across scanners and sites. NeuroImage 167:104-120.
"""

from __future__ import annotations

from .abide import features_from_abide
from .config import PredictionConfig
from .crossval import cross_validate
from .features import (
    FEATURE_KINDS,
    Features,
    PredictionError,
    features_from_dataset,
    standardize_subjects,
)
from .harmonize import FoldHarmonizer
from .models import ModelSpec, RowSpaceProjection, make_model
from .output import RESULT_FORMAT, plot_site_scores, run_prediction

__all__ = [
    "FEATURE_KINDS",
    "RESULT_FORMAT",
    "Features",
    "FoldHarmonizer",
    "ModelSpec",
    "PredictionConfig",
    "PredictionError",
    "RowSpaceProjection",
    "cross_validate",
    "features_from_abide",
    "features_from_dataset",
    "make_model",
    "plot_site_scores",
    "run_prediction",
    "standardize_subjects",
]
