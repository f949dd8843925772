"""The analysis form, generated from :class:`consortium.analysis.params.AnalysisParams`.

One form field per model field, in model order: booleans as checkboxes, integers
as number inputs, lists as comma-separated text, fields with a registry of names
(kind, harmonizer, contrast) as selects. Adding a field to the model adds it here.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consortium.analysis.params import AnalysisParams


def _kinds() -> list[str]:
    from consortium.analysis.registry import kind_names

    return list(kind_names())


def _harmonizers() -> list[str]:
    from harmonization.registry import harmonizer_names

    return list(harmonizer_names())


def _contrasts() -> list[str]:
    from consortium.analysis.contrasts import CONTRAST_NAMES

    return list(CONTRAST_NAMES)


CHOICES: dict[str, Callable[[], list[str]]] = {
    "kind": _kinds,
    "harmonize": _harmonizers,
    "contrast": _contrasts,
}


@dataclass
class FormField:
    name: str
    widget: str  # select / checkbox / number / text / list
    label: str
    help: str
    default: Any
    required: bool
    choices: list[str]


def _base(annotation: Any) -> tuple[Any, bool]:
    """(type without None, whether None is allowed)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return annotation, False


def form_fields() -> list[FormField]:
    out = []
    for name, info in AnalysisParams.model_fields.items():
        kind, optional = _base(info.annotation)
        default = info.get_default(call_default_factory=True)
        if name in CHOICES:
            widget, choices = "select", CHOICES[name]()
        elif kind is bool:
            widget, choices = "checkbox", []
        elif kind is int:
            widget, choices = "number", []
        elif typing.get_origin(kind) is list:
            widget, choices = "list", []
            default = ", ".join(default or [])
        else:
            widget, choices = "text", []
        out.append(FormField(name, widget, name.replace("_", " "), info.description or "",
                             "" if default is None else default,
                             info.is_required(), choices))
    return out


def params_from_form(form: Any) -> dict[str, Any]:
    """Form values -> keyword arguments of ``AnalysisParams`` (empty optional: default)."""
    values: dict[str, Any] = {}
    for f in form_fields():
        raw = form.get(f.name)
        if f.widget == "checkbox":
            values[f.name] = raw == "on"
        elif raw is None or str(raw).strip() == "":
            continue
        elif f.widget == "list":
            values[f.name] = [v.strip() for v in str(raw).split(",") if v.strip()]
        else:
            values[f.name] = str(raw).strip()
    return values
