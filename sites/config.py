"""Site configuration: one TOML file, validated by a pydantic model.

Relative paths in the file are resolved against the directory holding the
file; ``base_dir`` (itself relative to that folder) changes the base of the
data paths and patterns only, never of the key files. See
``docs/site-data-manager/README.md`` for an annotated example.

:func:`to_toml` and :func:`write_toml` are the one TOML writer of site files:
``confed-site init`` writes its commented template with them
(:mod:`sites.template`), and the consortium's simulator its sites' configs.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from sites.atlas import BUILTIN_ATLASES
from sites.contract import NAME_PATTERN, PHENOTYPE_COLUMNS, REQUIRED_COLUMNS
from sites.formats import input_format

#: The site's ID column becomes ``subject_key``; the others are the contract's.
CANONICAL_REQUIRED = ("subject_id", *(c for c in REQUIRED_COLUMNS if c != "subject_key"))
CANONICAL_OPTIONAL = tuple(c for c in PHENOTYPE_COLUMNS if c not in REQUIRED_COLUMNS)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(ValueError):
    """A site configuration that cannot be used."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: Folder of the key files that ``init`` creates, next to the config, by default.
DEFAULT_KEYS_DIR = "keys"
#: ``[keys]`` field -> file name of the key files that ``init`` creates.
KEY_FILES = {
    "private_key": "site_ed25519.pem",
    "public_key": "site_ed25519.pub.pem",
    "secret": "pseudonym.secret",
}


class KeysConfig(_Model):
    private_key: Path = Path(DEFAULT_KEYS_DIR, KEY_FILES["private_key"])
    public_key: Path = Path(DEFAULT_KEYS_DIR, KEY_FILES["public_key"])
    secret: Path = Path(DEFAULT_KEYS_DIR, KEY_FILES["secret"])


class PhenotypeConfig(_Model):
    path: Path
    sheet: str | None = None
    columns: dict[str, str] = Field(
        description="source column -> canonical column (subject_id, dx, age, sex, ...)"
    )
    values: dict[str, dict[str, str]] = Field(default_factory=dict)
    dx_case: str
    dx_control: str
    allow: list[str] = Field(default_factory=list, description="extra columns allowed to leave")
    accept_unmapped_codes: bool = Field(
        default=False,
        description="compute even when most codes are unmapped or all fall in one group",
    )

    @field_validator("columns")
    @classmethod
    def _canonical_targets(cls, columns: dict[str, str]) -> dict[str, str]:
        known = set(CANONICAL_REQUIRED) | set(CANONICAL_OPTIONAL)
        unknown = sorted(set(columns.values()) - known)
        if unknown:
            raise ValueError(f"columns map to unknown canonical names {unknown}")
        missing = sorted(set(CANONICAL_REQUIRED) - set(columns.values()))
        if missing:
            raise ValueError(f"no source column mapped to required {missing}")
        return columns


class ConnectivityConfig(_Model):
    atlas: str = Field(
        description=f"built-in atlas ({', '.join(BUILTIN_ATLASES)}) or path of an atlas TSV"
    )
    source: str = Field(
        default="timeseries",
        description="input format (sites.formats): timeseries, bold, matrix or a registered one",
    )
    pattern: str = Field(description="file path pattern with {subject_id}")
    columns: str | None = Field(default=None, description="1-based column range, e.g. 1409-1568")
    radius_mm: float = 5.0
    labels_image: Path | None = None
    confounds: str | None = Field(default=None, description="fMRIPrep confounds pattern")
    # source = "matrix" only (sites.matrices):
    kind: Literal["fisher_z", "correlation"] | None = Field(
        default=None, description="values of precomputed matrices; guessed when unambiguous"
    )
    subject_list: Path | None = Field(
        default=None, description="subject IDs of one stacked .npy (pattern without {subject_id})"
    )
    subject_column: str | None = Field(default=None, description="ID column of a CSV list")

    @field_validator("source")
    @classmethod
    def _registered_format(cls, source: str) -> str:
        input_format(source)  # ValueError naming the registered formats
        return source

    @model_validator(mode="after")
    def _matrix_fields(self) -> ConnectivityConfig:
        given = [f for f in ("kind", "subject_list", "subject_column") if getattr(self, f)]
        if self.source != "matrix" and given:
            raise ValueError(f"{', '.join(given)} only apply to source = 'matrix'")
        if self.subject_column and not self.subject_list:
            raise ValueError("subject_column needs a subject_list")
        stacked = self.subject_list is not None
        if self.source == "matrix" and stacked == ("{subject_id}" in self.pattern):
            raise ValueError(
                "source = 'matrix': a per-subject pattern needs {subject_id}; "
                "one stacked .npy needs a subject_list and a pattern without {subject_id}"
            )
        return self


class MotionConfig(_Model):
    source: Literal["phenotype", "confounds", "realignment", "none"] = "phenotype"
    definition: Literal["jenkinson", "power"] = "jenkinson"
    pattern: str | None = Field(default=None, description="confounds or rp_*.txt pattern")

    @model_validator(mode="after")
    def _pattern_needed(self) -> MotionConfig:
        if self.source in ("confounds", "realignment") and not self.pattern:
            raise ValueError(f"motion source {self.source!r} needs a 'pattern'")
        return self


class QCConfig(_Model):
    """Exclusion rules; the age window and FD limit must lie inside the contract's ranges."""

    max_mean_fd: float = 0.2
    min_volumes: int = 50
    min_included: int = Field(
        default=1,
        ge=0,
        description="fewest included subjects to write a bundle (0: write even an empty "
        "one, for its QC tables; the coordinator refuses a bundle without subjects)",
    )
    age_min: float = 5.0
    age_max: float = 100.0

    @model_validator(mode="after")
    def _inside_contract(self) -> QCConfig:
        low, high = PHENOTYPE_COLUMNS["age"].plausible
        if not low <= self.age_min <= self.age_max <= high:
            raise ValueError(
                f"need {low:g} <= age_min <= age_max <= {high:g} (the contract's plausible "
                f"age range), got [{self.age_min:g}, {self.age_max:g}]"
            )
        fd_low, fd_high = PHENOTYPE_COLUMNS["mean_fd"].plausible
        if not fd_low < self.max_mean_fd <= fd_high:
            raise ValueError(f"max_mean_fd must lie in ({fd_low:g}, {fd_high:g}] mm")
        return self


class MapConfig(_Model):
    metric: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    pattern: str
    mask: Path | None = None
    coverage: float = Field(default=0.9, gt=0, le=1)
    method: str = "mean_regression_sd"


class SiteConfig(_Model):
    site_id: str = Field(pattern=NAME_PATTERN)
    base_dir: Path = Path(".")
    keys: KeysConfig = Field(default_factory=KeysConfig)
    phenotypes: PhenotypeConfig
    connectivity: list[ConnectivityConfig] = Field(min_length=1)
    motion: MotionConfig = Field(default_factory=MotionConfig)
    qc: QCConfig = Field(default_factory=QCConfig)
    maps: list[MapConfig] = Field(default_factory=list)
    # [coordinator] (url, token_file) is read by sites.client for `confed site submit`.
    coordinator: dict[str, Any] | None = None
    _config_dir: Path = PrivateAttr(default_factory=Path.cwd)

    def resolve(self, path: Path | str) -> Path:
        """A data path or pattern: relative ones are relative to ``base_dir``."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def resolve_key(self, path: Path | str) -> Path:
        """A key path: relative ones are relative to the config file's folder."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else self._config_dir / path


def load_config(path: str | Path) -> SiteConfig:
    """Read and validate a site TOML file; errors name the file and field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from exc
    folder = path.parent.resolve()
    base = Path(data.pop("base_dir", ".")).expanduser()
    data["base_dir"] = base if base.is_absolute() else (folder / base).resolve()
    try:
        config = SiteConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
    config._config_dir = folder
    return config


def to_toml(
    data: Mapping[str, Any],
    comments: Mapping[str, str] | None = None,
    header: str = "",
) -> str:
    """Serialize nested mappings of strings, numbers and lists (and lists of tables) as TOML.

    Parameters
    ----------
    data : mapping
        Keys to scalars, lists, tables (mappings) or lists of tables.
    comments : mapping, optional
        Dotted key (``"keys.secret"``, ``"phenotypes.columns"``; no index for
        a list of tables: ``"connectivity.columns"``) -> a comment written at
        the end of that key's or table's line.
    header : str
        Text written first, each line as a ``#`` comment.

    Returns
    -------
    str
        TOML text that :mod:`tomllib` reads back as ``data``.
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += _table_lines(data, (), comments or {})
    return "\n".join(lines).lstrip("\n") + "\n"


def write_toml(
    path: str | Path,
    data: Mapping[str, Any],
    comments: Mapping[str, str] | None = None,
    header: str = "",
) -> Path:
    """Write :func:`to_toml` text to ``path`` atomically (a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_toml(data, comments, header))
    tmp.replace(path)
    return path


def _table_lines(
    data: Mapping[str, Any], path: tuple[str, ...], comments: Mapping[str, str]
) -> list[str]:
    """Lines of one table: its scalars first, then its sub-tables and lists of tables."""
    lines = [
        _commented(f"{_toml_key(k)} = {_toml_value(v)}", comments.get(".".join((*path, k))))
        for k, v in data.items()
        if not isinstance(v, Mapping) and not _is_table_list(v)
    ]
    for key, value in data.items():
        inner = (*path, key)
        name = ".".join(_toml_key(part) for part in inner)
        note = comments.get(".".join(inner))
        if isinstance(value, Mapping):
            body = _table_lines(value, inner, comments)
            if note or not value or any(
                not isinstance(v, Mapping) and not _is_table_list(v) for v in value.values()
            ):  # a header only for tables with keys of their own (or a comment)
                lines += ["", _commented(f"[{name}]", note)]
            lines += body
        elif _is_table_list(value):
            for item in value:
                lines += ["", _commented(f"[[{name}]]", note)]
                lines += _table_lines(item, inner, comments)
    return lines


def _commented(line: str, comment: str | None) -> str:
    return f"{line}  # {comment}" if comment else line


def _is_table_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _toml_key(key: str) -> str:
    bare = _BARE_KEY.fullmatch(key) and not key.isdigit()  # quote codes: "1" = "MDD"
    return key if bare else _toml_value(str(key))


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # JSON's string escapes are TOML's; TOML also forbids a raw DEL in basic strings
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
