"""The simulated REST-meta-MDD subjects shared by the inference benchmarks.

``ConsortiumSimulator`` draws the 1,642 subjects of the 17 sites from the published
per-site facts; Dx and sex are coded as the analyses code them
(:mod:`consortium.analysis.encodings`: Dx +1 case / -1 control, sex 1 male / 2 female).
"""

from __future__ import annotations

import pandas as pd

from consortium.analysis.encodings import encode_dx, encode_sex
from consortium.simulate import ConsortiumSimulator


def design(seed: int) -> pd.DataFrame:
    """Columns ``Dx, age, sex, edu, motion`` and ``site`` (codes 0..16)."""
    d = ConsortiumSimulator(seed=seed).simulate_design()
    return pd.DataFrame({
        "Dx": encode_dx(d["dx"] == "MDD"), "age": d["age"].astype(float),
        "sex": encode_sex(d["sex"]), "edu": d["education_years"].astype(float),
        "motion": d["mean_fd"].astype(float), "site": pd.factorize(d["site_id"], sort=True)[0],
    })  # fmt: skip
