"""Report sections: what one page section is, and where each comes from.

A :class:`Section` is an anchor ``id``, a navigation label, a title and a
Jinja template (a file under ``templates/`` or an inline ``source``) with its
context; every template is rendered with autoescaping.

The page is the common sections (summary, sample, QC) of the main analysis,
then the sections of every analysis that ran, in input order, then the
cross-cutting ones (harmonization diagnostics, covariate sensitivity,
prediction, provenance). An analysis' sections come from its kind's
``report_section`` hook in the kind registry (:mod:`consortium.analysis.registry`);
a kind without a hook gets a generic section listing its results. Only
sections that ran are on the page and in the navigation.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Analysis", "Section", "SectionHook", "generic_sections", "hook_for"]

#: Keys of ``results.json`` that are not a kind's own result sections.
COMMON_KEYS = ("schema", "kind", "contrast", "groups", "design", "sample", "qc", "figures",
               "provenance", "harmonization_diagnostics", "sensitivity")


@dataclass
class Analysis:
    """One loaded results directory: its parsed JSON and figures as data URIs."""

    path: Path
    kind: str
    results: dict[str, Any]
    images: dict[str, str] = field(default_factory=dict)

    @property
    def parameters(self) -> dict[str, Any]:
        return dict((self.results.get("provenance") or {}).get("parameters") or {})

    @property
    def harmonizer(self) -> str | None:
        """Registered name of the harmonizer this analysis used (as recorded)."""
        value = self.parameters.get("harmonize")
        return str(value) if value is not None else None


@dataclass(frozen=True)
class Section:
    """One section of the page.

    Attributes
    ----------
    id : str
        Anchor (``report.html#id``); made unique by the renderer.
    nav : str
        Short label in the navigation bar.
    title : str
        Heading.
    template : str, optional
        Template file under ``consortium/report/templates/``.
    source : str, optional
        An inline Jinja template instead (for sections of registered kinds).
    context : mapping
        Variables of the template.
    """

    id: str
    nav: str
    title: str
    template: str | None = None
    source: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.template is None) == (self.source is None):
            raise ValueError(f"section {self.id!r}: give exactly one of template and source")


#: ``hook(analysis) -> sections`` of one analysis kind.
SectionHook = Callable[[Analysis], Sequence[Section]]


def generic_sections(analysis: Analysis) -> list[Section]:
    """A section listing the result sections of a kind without a report hook."""
    parts = {k: v for k, v in analysis.results.items() if k not in COMMON_KEYS}
    return [
        Section(
            id=analysis.kind,
            nav=analysis.kind,
            title=f"Analysis: {analysis.kind}",
            template="sections/generic.html.j2",
            context={"analysis": analysis, "parts": parts},
        )
    ]


def _resolve(hook: Callable[..., Any] | str) -> SectionHook:
    if callable(hook):
        return hook
    module, sep, name = str(hook).partition(":")
    if not sep:
        raise ValueError(f"report hook {hook!r} is not 'module:function'")
    return getattr(importlib.import_module(module), name)


def hook_for(kind: str) -> SectionHook:
    """The ``report_section`` hook of ``kind`` in the kind registry.

    A kind without a hook, or not registered in this process (results from
    another installation), gets :func:`generic_sections`.
    """
    from consortium.analysis.registry import get_kind

    try:
        hook = get_kind(kind).report_section
    except KeyError:
        return generic_sections
    return generic_sections if hook is None else _resolve(hook)
