"""The analysis kinds behind one registry.

A kind is a name, a one-line description and a ``run`` callable
``run(data: ReleaseData, params: AnalysisParams, progress: Steps) -> KindResult``
(:mod:`consortium.analysis.kinds.base`). The built-in kinds are registered
here by module path and imported only when first used, so importing this
module (the CLI does, to list the kinds) stays cheap.

Adding a kind::

    from consortium.analysis.registry import register_kind
    register_kind("roi", run, description="mixed model per ROI", uses_atlas=True)

after which ``confed analyze roi``, ``POST /api/v1/analyses {"kind": "roi"}`` and
the report (its ``report_section`` hook, or the report's generic section) know it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["KindEntry", "get_kind", "kind_names", "register_kind", "unregister_kind"]


@dataclass(frozen=True)
class KindEntry:
    """A registered kind.

    Attributes
    ----------
    name, description : str
        The CLI command and the API's ``kind``; its one-line help.
    target : callable or str
        ``run`` itself, or ``"module:function"`` imported on first use.
    uses_atlas : bool
        The kind reads connectivity of an atlas (resolved before the run).
    uses_maps : bool
        The kind reads voxel maps (``metric`` resolved before the run).
    report_section : callable, str or None
        The report's hook for this kind's results: ``hook(analysis) -> sections``
        (:mod:`consortium.report.sections`), or ``"module:function"`` imported on
        first use; None: the report's generic section.
    """

    name: str
    description: str
    target: Callable[..., Any] | str
    uses_atlas: bool = False
    uses_maps: bool = False
    report_section: Callable[..., Any] | str | None = None

    @property
    def run(self) -> Callable[..., Any]:
        """The kind's ``run`` (imported on first use)."""
        if callable(self.target):
            return self.target
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


_KINDS: dict[str, KindEntry] = {}


def register_kind(
    name: str,
    run: Callable[..., Any] | str,
    *,
    description: str,
    uses_atlas: bool = False,
    uses_maps: bool = False,
    report_section: Callable[..., Any] | str | None = None,
) -> KindEntry:
    """Register a kind (``ValueError`` on an invalid or duplicate name)."""
    from sites.naming import NAME_RE

    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.startswith("-"):
        raise ValueError(f"an analysis kind needs a simple name, got {name!r}")
    if name in _KINDS:
        raise ValueError(f"analysis kind {name!r} is already registered")
    entry = KindEntry(name, description, run, uses_atlas, uses_maps, report_section)
    _KINDS[name] = entry
    return entry


def unregister_kind(name: str) -> None:
    """Remove a kind (tests registering a toy kind)."""
    get_kind(name)
    del _KINDS[name]


def kind_names() -> tuple[str, ...]:
    """Registered kinds, in registration order."""
    return tuple(_KINDS)


def get_kind(name: str) -> KindEntry:
    """The entry of ``name`` (``KeyError`` naming the registered kinds)."""
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"unknown analysis kind {name!r}; choose from {kind_names()}") from None


register_kind(
    "dmn",
    "consortium.analysis.kinds.dmn:run",
    report_section="consortium.report.kinds:dmn_sections",
    description="REST-meta-MDD mixed model on mean DMN FC (with and without harmonization), "
    "site meta-analysis and forest plot.",
    uses_atlas=True,
)
register_kind(
    "networks",
    "consortium.analysis.kinds.networks:run",
    report_section="consortium.report.kinds:networks_sections",
    description="The mixed model on every within- and between-network mean FC.",
    uses_atlas=True,
)
register_kind(
    "edges",
    "consortium.analysis.kinds.edges:run",
    report_section="consortium.report.kinds:edges_sections",
    description="Mass mixed model over every edge: t/d matrices, FDR, optional permutations.",
    uses_atlas=True,
)
register_kind(
    "voxels",
    "consortium.analysis.kinds.voxels:run",
    report_section="consortium.report.kinds:voxels_sections",
    description="Mass mixed model over voxels: t, d and FDR-thresholded NIfTI maps.",
    uses_maps=True,
)
