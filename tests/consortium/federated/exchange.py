"""In-process message exchange for the pure-function federated tests.

Each site computes its message with :mod:`sites.federated.compute`; the message goes
through JSON (as on the wire) and the leakage validator before the coordinator's
combining functions see it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from sites.federated.compute import COMPUTE
from sites.federated.messages import validate_message

DX_CODES = {"MDD": 1, "HC": -1}
SEX_CODES = {"M": 1, "F": 2}
COVARIATES = ["age", "sex", "education_years", "mean_fd"]


def design(slope: bool) -> dict[str, Any]:
    """The REST-meta-MDD design of the tests, with or without the random Dx slope."""
    return {
        "dx": "dx",
        "fixed": ["dx", *COVARIATES],
        "random_slopes": ["dx"] if slope else [],
        "codes": {"dx": DX_CODES, "sex": SEX_CODES},
    }


def pooled_frame(pheno: pd.DataFrame) -> pd.DataFrame:
    """The phenotypes coded as the pooled fit takes them."""
    return pheno.assign(dx=pheno.dx.map(DX_CODES).astype(float),
                        sex=pheno.sex.map(SEX_CODES).astype(float))


def exchange(
    kind: str,
    params: Mapping[str, Any],
    pheno: pd.DataFrame,
    Y: np.ndarray,
    min_cell: int = 1,
    seen: list | None = None,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Every site's validated message for one task, and any data kept at the sites."""
    messages, kept = [], {}
    for site in sorted(pheno.site.unique()):
        rows = (pheno.site == site).to_numpy()
        task = {"id": f"t-{kind}-{site}", "kind": kind, "params": dict(params)}
        out = COMPUTE[kind](task, site, pheno[rows].reset_index(drop=True), Y[rows], min_cell)
        if isinstance(out, tuple):
            out, kept[site] = out
        wire = json.loads(json.dumps(out))
        validate_message(wire, params.get("dims"))
        if seen is not None:
            seen.append(wire)
        messages.append(wire)
    return messages, kept
