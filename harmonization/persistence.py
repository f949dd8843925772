"""Saving and loading fitted ComBat models as ``.npz`` bytes, without pickle.

A payload holds the per-site / per-feature arrays of the model and one JSON
metadata entry (format, class, parameters, site labels, covariate encoding).
No subject-level data is stored, loading never unpickles, and this module
does no file I/O: the caller writes the bytes where it keeps models.
Parameters that describe where the model runs rather than what it is (the
dask ``client``) are not stored: a loaded model runs on the local scheduler
until given a client with ``set_params(client=...)``.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from ._design import _py

__all__ = ["model_to_bytes", "model_from_bytes"]

FORMAT = "confed.harmonization.ComBat"
FORMAT_VERSION = 1
ARRAYS = (
    "site_counts_", "coef_", "grand_mean_", "var_pooled_", "gamma_hat_", "delta_hat_",
    "gamma_star_", "delta_star_", "constant_features_",
)  # fmt: skip
RUNTIME_PARAMS = ("client",)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return _py(value)


def model_to_bytes(model: Any) -> bytes:
    """The fitted ``model`` (ComBat or a subclass) as ``.npz`` bytes."""
    params = model.get_params(deep=False)
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "class": type(model).__name__,
        "params": {k: _jsonable(v) for k, v in params.items() if k not in RUNTIME_PARAMS},
        "sites": model.sites_,
        "ref_index": model.ref_index_,
        "encoder": model.encoder_.to_dict(),
    }
    arrays = {name: getattr(model, name) for name in ARRAYS + tuple(model._EXTRA_ARRAYS)}
    buffer = io.BytesIO()
    np.savez(buffer, __metadata__=np.array(json.dumps(meta)), **arrays)
    return buffer.getvalue()


def model_from_bytes(cls: type, payload: bytes) -> Any:
    """A fitted ``cls`` rebuilt from :func:`model_to_bytes` output."""
    meta, arrays = _read(payload)
    if meta.get("class") != cls.__name__:
        kind = meta.get("class")
        raise ValueError(f"the payload holds a {kind} model; load it with that class")
    params = dict(meta["params"])
    unknown = sorted(set(params) - set(cls._get_param_names()))
    if unknown:
        raise ValueError(f"the saved {cls.__name__} model has unknown parameter(s) {unknown}")
    missing = sorted(set(ARRAYS + tuple(cls._EXTRA_ARRAYS)) - set(arrays))
    if missing:
        raise ValueError(f"the saved {cls.__name__} model lacks the array(s) {missing}")
    model = cls(**params)
    model.sites_ = meta["sites"]
    model.ref_index_ = meta["ref_index"]
    model.encoder_ = type(model._make_encoder()).from_dict(meta["encoder"])
    for name, value in arrays.items():
        setattr(model, name, value)
    model.n_features_in_ = model.coef_.shape[1]
    return model


def _read(payload: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        data = np.load(io.BytesIO(payload), allow_pickle=False)
    except (ValueError, OSError, TypeError) as exc:
        raise ValueError(f"not a saved ComBat model ({exc})") from exc
    with data:
        if "__metadata__" not in data.files:
            raise ValueError("not a saved ComBat model (no metadata entry)")
        meta = json.loads(str(data["__metadata__"]))
        if meta.get("format") != FORMAT:
            raise ValueError("not a saved ComBat model (unknown format)")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"saved ComBat model format version {meta.get('version')} "
                             f"is not supported (expected {FORMAT_VERSION})")
        arrays = {k: data[k] for k in data.files if k != "__metadata__"}
    return meta, arrays
