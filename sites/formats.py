"""Input formats of the site agent: how one subject's connectivity input is read.

A ``[[connectivity]]`` table of ``site.toml`` names its input with ``source``.
The name is checked here when the config is validated (:mod:`sites.config`:
an unknown name is refused with the registered ones), and the agent
(:mod:`sites.agent`) reads each subject's file with the format's reader, then
runs the same quality control and connectivity on every format.

Built-in formats:

``timeseries``
    ROI time series files, one per subject (:mod:`sites.timeseries`).
``bold``
    4D BOLD images; ROI signals extracted with a label image (``labels_image``)
    or with spheres around the atlas coordinates (``radius_mm``)
    (:mod:`sites.extraction`).
``matrix``
    Precomputed connectivity matrices (:mod:`sites.matrices`). It has no time
    series reader: the agent reads matrices itself (one file per subject or a
    stacked file, kind detection), and the volume and coverage rules cannot run.

Adding a format: write a reader ``reader(path, entry, atlas, site) -> ndarray``
returning the subject's (volumes x ROIs) time series, with ROI columns in the
atlas order, and call ``register_input_format("name", reader)`` in a module
that is imported before the config is loaded. A file that cannot be read
raises ``ValueError`` naming the file; the agent reports it with the subject.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from sites.atlas import Atlas
    from sites.config import ConnectivityConfig, SiteConfig

#: QC codes of the rules run on connectivity computed from time series.
SERIES_RULES = (
    "missing_timeseries",
    "too_few_volumes",
    "non_finite",
    "zero_variance_roi",
    "non_finite_connectivity",
)
#: Precomputed matrices have no volumes and no ROI signals: only these rules run.
MATRIX_RULES = ("missing_timeseries", "non_finite_connectivity")

#: ``reader(path, entry, atlas, site)``: the subject's file, its ``[[connectivity]]``
#: table, the atlas and the site config (``site.resolve`` for other paths).
SeriesReader = Callable[[Path, "ConnectivityConfig", "Atlas", "SiteConfig"], "np.ndarray"]

_NAME = re.compile(r"[a-z][a-z0-9_-]*")


@dataclass(frozen=True)
class InputFormat:
    """One registered input format.

    Attributes
    ----------
    name : str
        The ``source`` value of ``[[connectivity]]``.
    reader : callable or None
        Reads a subject's time series; None for precomputed matrices.
    rules : tuple of str
        QC codes of the connectivity rules that run on this input.
    """

    name: str
    reader: SeriesReader | None
    rules: tuple[str, ...] = SERIES_RULES

    @property
    def precomputed(self) -> bool:
        """Whether the input is a connectivity matrix rather than time series."""
        return self.reader is None


_FORMATS: dict[str, InputFormat] = {}


def register_input_format(
    name: str, reader: SeriesReader, *, rules: tuple[str, ...] = SERIES_RULES
) -> InputFormat:
    """Register a time series input format under ``name`` (the config's ``source``).

    Raises
    ------
    ValueError
        When ``name`` is not lower-case letters, digits, ``_`` and ``-``, or is
        already registered.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"input format name {name!r}: use lower-case letters, digits, _ and -")
    if name in _FORMATS:
        raise ValueError(f"input format {name!r} is already registered")
    unknown = sorted(set(rules) - set(SERIES_RULES))
    if unknown:
        raise ValueError(f"input format {name!r}: unknown QC rules {unknown}")
    _FORMATS[name] = InputFormat(name, reader, tuple(rules))
    return _FORMATS[name]


def unregister_input_format(name: str) -> None:
    """Remove a registered format (tests, plug-ins being unloaded)."""
    input_format(name)
    del _FORMATS[name]


def input_format(name: str) -> InputFormat:
    """The format registered as ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return _FORMATS[name]
    except KeyError:
        known = ", ".join(input_formats())
        raise ValueError(f"unknown input format {name!r}; registered: {known}") from None


def input_formats() -> tuple[str, ...]:
    """Names of the registered formats, sorted."""
    return tuple(sorted(_FORMATS))


# Built-in readers import their modules when first used: checking a config's
# ``source`` must not load nilearn.
def _read_timeseries(
    path: Path, entry: ConnectivityConfig, atlas: Atlas, site: SiteConfig
) -> np.ndarray:
    from sites.timeseries import read_timeseries

    return read_timeseries(path, entry.columns, atlas.n_rois)


def _read_bold(path: Path, entry: ConnectivityConfig, atlas: Atlas, site: SiteConfig) -> np.ndarray:
    from sites.extraction import extract_labels, extract_spheres

    if entry.labels_image is not None:
        return extract_labels(path, site.resolve(entry.labels_image), atlas)
    return extract_spheres(path, atlas, entry.radius_mm)


register_input_format("timeseries", _read_timeseries)
register_input_format("bold", _read_bold)
_FORMATS["matrix"] = InputFormat("matrix", None, MATRIX_RULES)  # read by sites.matrices
