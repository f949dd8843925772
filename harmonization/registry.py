"""Harmonizers behind one registry: a name and options give an unfitted estimator.

Every harmonizer is a scikit-learn estimator with ``fit(X, sites,
covariates=None)``, ``transform(X, sites, covariates=None)`` and
``fit_transform``. Built-in entries, in registration order:

``none``
    :class:`harmonization.identity.IdentityHarmonizer` (X as float64).
``combat``
    :class:`harmonization.combat.ComBat`: location/scale with empirical Bayes.
``combat-gam``
    :class:`harmonization.gam.GAMComBat`: penalized spline effects of the
    ``smooth`` columns (default ``("age",)``).
``combat-ref``
    :class:`harmonization.combat.ComBat` with a reference site (``ref_site``
    required): that site is left unchanged, the others are mapped onto it.

Importing this module is cheap: every factory imports its engine when called.

Adding a harmonizer::

    register_harmonizer("demean", lambda: Demean(), description="site means removed")
    make_harmonizer("demean").fit_transform(X, sites)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "harmonizer_names",
    "harmonizer_description",
    "make_harmonizer",
    "register_harmonizer",
    "unregister_harmonizer",
]


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Any]
    description: str


_REGISTRY: dict[str, _Entry] = {}


def harmonizer_names() -> tuple[str, ...]:
    """Registered harmonizer names, in registration order."""
    return tuple(_REGISTRY)


def harmonizer_description(name: str) -> str:
    """One-line description given at registration."""
    return _entry(name).description


def register_harmonizer(name: str, factory: Callable[..., Any], *, description: str) -> None:
    """Register ``factory(**options) -> estimator`` under ``name``.

    Raises
    ------
    ValueError
        If ``name`` is empty or already registered.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a harmonizer name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"harmonizer {name!r} is already registered")
    if not callable(factory):
        raise ValueError(f"the factory of harmonizer {name!r} is not callable")
    _REGISTRY[name] = _Entry(factory, str(description))


def unregister_harmonizer(name: str) -> None:
    """Remove ``name`` from the registry (unknown name: ValueError)."""
    _entry(name)
    del _REGISTRY[name]


def make_harmonizer(name: str, **options: Any) -> Any:
    """An unfitted estimator for the harmonizer ``name`` with ``options``.

    Raises
    ------
    ValueError
        Unknown name, an option the harmonizer does not take, or a required
        option missing (``ref_site`` of ``combat-ref``).
    """
    entry = _entry(name)
    _check_options(name, entry.factory, options)
    return entry.factory(**options)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown harmonizer {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _check_options(name: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: let it decide
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    named = [k for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = [k for k in options if k not in named]
    if unknown:
        hint = " (use 'combat-ref' for a reference site)" if unknown[0] == "ref_site" else ""
        raise ValueError(
            f"harmonizer {name!r} has no option {unknown[0]!r}{hint}; "
            f"its options: {', '.join(named) or 'none'}"
        )
    missing = [k for k in named if params[k].default is inspect.Parameter.empty]
    missing = [k for k in missing if options.get(k) is None]
    if missing:
        raise ValueError(f"harmonizer {name!r} needs the option {missing[0]!r}")


# ---------------------------------------------------------------------------
# built-in entries (engines imported lazily)
# ---------------------------------------------------------------------------


def _none(engine: str = "numpy", chunk: int | None = None, client: Any = None) -> Any:
    from .identity import IdentityHarmonizer

    return IdentityHarmonizer(engine=engine, chunk=chunk, client=client)


def _combat(
    eb: bool = True,
    parametric: bool = True,
    mean_only: bool = False,
    new_sites: str = "estimate",
    engine: str = "numpy",
    chunk: int | None = None,
    client: Any = None,
) -> Any:
    from .combat import ComBat

    return ComBat(
        eb=eb, parametric=parametric, mean_only=mean_only, new_sites=new_sites,
        engine=engine, chunk=chunk, client=client,
    )  # fmt: skip


def _combat_gam(
    smooth: Sequence[str] = ("age",),
    eb: bool = True,
    parametric: bool = True,
    mean_only: bool = False,
    new_sites: str = "estimate",
    df: int = 10,
    n_lambdas: int = 60,
    engine: str = "numpy",
    chunk: int | None = None,
    client: Any = None,
) -> Any:
    from .gam import GAMComBat

    terms = (smooth,) if isinstance(smooth, str) else tuple(smooth)
    return GAMComBat(
        smooth_terms=terms, df=df, n_lambdas=n_lambdas, eb=eb, parametric=parametric,
        mean_only=mean_only, new_sites=new_sites, engine=engine, chunk=chunk, client=client,
    )  # fmt: skip


def _combat_ref(*, ref_site: Any, **options: Any) -> Any:
    return _combat(**options).set_params(ref_site=ref_site)


def _requiring(name: str, factory: Callable[..., Any]) -> inspect.Signature:
    """Signature of ``factory`` with the required keyword ``name`` in front, all keyword-only."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [p.replace(kind=keyword) for p in inspect.signature(factory).parameters.values()]
    return inspect.Signature([inspect.Parameter(name, keyword, annotation="Any"), *params])


# combat-ref takes the options of combat plus the required ``ref_site`` (checked by
# ``_check_options`` through this signature).
_combat_ref.__signature__ = _requiring("ref_site", _combat)  # type: ignore[attr-defined]


register_harmonizer("none", _none, description="no harmonization")
register_harmonizer(
    "combat", _combat, description="ComBat: site location/scale with empirical Bayes"
)
register_harmonizer(
    "combat-gam", _combat_gam, description="ComBat with smooth (spline) covariate effects"
)
register_harmonizer(
    "combat-ref", _combat_ref, description="ComBat mapping every site onto a reference site"
)
