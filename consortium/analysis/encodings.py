"""Shared numeric encodings of the phenotype: sex, diagnosis, default covariates.

One definition used by the DMN model, the design of every analysis kind and
(for its successor to adopt) prediction. The codes of the phenotype itself
(``sex`` in ``M``/``F``, ``dx`` as the release's two labels) are the site
contract's (:data:`sites.contract.PHENOTYPE_COLUMNS`); the numbers are the
published REST-meta-MDD coding (Yan et al. 2019): male 1, female 2; case +1,
control -1 (so the Dx coefficient is half the adjusted group difference).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["DEFAULT_COVARIATES", "DX_CODES", "SEX_CODES", "encode_dx", "encode_sex"]

DEFAULT_COVARIATES: tuple[str, ...] = ("age", "sex", "education_years", "mean_fd")
SEX_CODES: dict[str, float] = {"M": 1.0, "F": 2.0}  # the published coding (1 male, 2 female)
DX_CODES: dict[str, float] = {"case": 1.0, "control": -1.0}


def encode_sex(values: pd.Series, sites: pd.Series | None = None) -> np.ndarray:
    """Sex as :data:`SEX_CODES` floats (missing stays NaN).

    Raises
    ------
    ValueError
        Naming the site (when ``sites`` is given) and the first value that is
        neither ``M`` nor ``F``.
    """
    sex = values.astype("string")
    bad = sex.notna() & ~sex.isin(list(SEX_CODES))
    if bad.any():
        i = bad.to_numpy().nonzero()[0][0]
        where = f"site {sites.iloc[i]!r}: " if sites is not None else ""
        raise ValueError(
            f"{where}sex must be one of {sorted(SEX_CODES)}, found {sex.iloc[i]!r}"
        )
    return sex.map(SEX_CODES).astype(float).to_numpy()


def encode_dx(is_case: np.ndarray) -> np.ndarray:
    """Diagnosis as :data:`DX_CODES` floats: +1 where ``is_case``, -1 elsewhere."""
    return np.where(np.asarray(is_case, dtype=bool), DX_CODES["case"], DX_CODES["control"])
