"""Harmonization of a remote analysis' outcome across the researcher's analysed sites.

A remote request may name any registered harmonizer
(:func:`harmonization.registry.harmonizer_names`; default ``none``). It is
fitted on the analysed rows only (the whole strata cells the query selected,
within the grant's sites), on every column of the requested measure table, so
that empirical Bayes borrows strength across the network pairs as ComBat
does on edges. The diagnosis (case = 1) and the request's covariates are
preserved (numeric columns as numbers, the others as categories); the
harmonized outcome column then replaces the raw one in the model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from consortium.errors import ConfedError
from consortium.proposals.scope import ScopedData

__all__ = ["harmonize_outcome"]


def _covariates(frame: pd.DataFrame, covariates: list[str], case: str) -> pd.DataFrame:
    """Preserved covariates of the harmonizer: diagnosis and the request's covariates."""
    out = pd.DataFrame({"dx": (frame["dx"] == case).to_numpy(dtype=float)})
    for c in covariates:
        values = frame[c].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(values):
            out[c] = values.to_numpy(dtype=float)
        else:
            out[c] = pd.Categorical(values.astype(str))
    return out


def harmonize_outcome(
    frame: pd.DataFrame, req: dict, data: ScopedData, dx_labels: dict
) -> pd.DataFrame:
    """``frame`` with its outcome ``_y`` harmonized by ``req["harmonize"]`` (``none``: as is).

    Raises
    ------
    ConfedError
        422 ``bad_harmonization`` naming the harmonizer and the problem (an
        unknown name, a non-finite value naming its column, too few sites,
        a covariate collinear with site, a missing smooth term, ...).
    """
    name = req.get("harmonize") or "none"
    if name == "none":
        return frame
    from harmonization.registry import make_harmonizer

    table = data.tables[req["measure"]]
    rows = frame["_row"].to_numpy()
    X = table.to_numpy(dtype=np.float64)[rows]
    bad = ~np.isfinite(X).all(axis=0)
    if bad.any():
        column = table.columns[int(np.flatnonzero(bad)[0])]
        raise ConfedError(
            "bad_harmonization",
            f"harmonize {name}: column {column!r} of {req['measure']} has missing values "
            "in the analysed rows",
            422,
        )
    covariates = _covariates(frame, req["covariates"], dx_labels["case"])
    try:
        harmonized = make_harmonizer(name).fit_transform(X, frame["site"].to_numpy(), covariates)
    except ValueError as exc:
        raise ConfedError("bad_harmonization", f"harmonize {name}: {exc}", 422) from exc
    column = list(table.columns).index(req["outcome"])
    return frame.assign(_y=np.asarray(harmonized)[:, column])
