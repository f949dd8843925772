"""The parameters of one analysis run: one pydantic model for the API, CLI and pipeline.

:class:`AnalysisParams` validates every field against its one definition: the
kind against the kind registry (:mod:`consortium.analysis.registry`), the
harmonizer against :func:`harmonization.registry.harmonizer_names`, the
contrast against :data:`consortium.analysis.contrasts.CONTRAST_NAMES`, atlas and
metric names by the site contract's name rule. The API's analysis request is
this model plus a release name; ``confed analyze <kind>`` builds it from its
options; :func:`consortium.analysis.pipeline.run_analysis` records it (as JSON,
with ``fdr_alpha``) in the provenance of ``results.json``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from consortium.analysis.contrasts import CONTRAST_NAMES
from consortium.analysis.encodings import DEFAULT_COVARIATES

__all__ = ["FDR_ALPHA", "AnalysisParams", "format_validation_error"]

FDR_ALPHA = 0.05


class AnalysisParams(BaseModel):
    """What to run and how; field order is the order recorded in the provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(description="registered analysis kind (dmn, networks, edges, voxels, ...)")
    harmonize: str = Field("combat", description="registered harmonizer (none, combat, ...)")
    contrast: str = Field("all", description=f"one of {', '.join(CONTRAST_NAMES)}")
    atlas: str | None = Field(None, description="atlas name (default: the release's only atlas)")
    covariates: list[str] = Field(
        default_factory=lambda: list(DEFAULT_COVARIATES),
        description="canonical phenotype columns adjusted for",
    )
    min_per_group: int = Field(10, ge=1, description="sites with fewer in a group are excluded")
    permutations: int = Field(0, ge=0, le=100_000, description="max-t permutations (edges)")
    seed: int = Field(0, description="seed of the permutations")
    metric: str | None = Field(None, description="voxel map (voxels only)")
    random_slope: bool = Field(True, description="site random slope of diagnosis (mass models)")
    chunk_voxels: int = Field(5000, ge=1, description="voxels per streamed chunk (voxels)")
    ref_site: str | None = Field(None, description="reference site (harmonize=combat-ref)")
    mode: Literal["pooled", "federated"] = Field(
        "pooled",
        description="pooled: subject rows of a release; federated: the sites' aggregates "
        "only (consortium.federated.analysis)",
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        from consortium.analysis.registry import kind_names

        if value not in kind_names():
            raise ValueError(f"unknown analysis kind {value!r}; choose from {kind_names()}")
        return value

    @field_validator("harmonize")
    @classmethod
    def _known_harmonizer(cls, value: str) -> str:
        from harmonization.registry import harmonizer_names

        if value not in harmonizer_names():
            raise ValueError(f"unknown harmonization {value!r}; choose from {harmonizer_names()}")
        return value

    @field_validator("contrast")
    @classmethod
    def _known_contrast(cls, value: str) -> str:
        if value not in CONTRAST_NAMES:
            raise ValueError(f"unknown contrast {value!r}; choose from {CONTRAST_NAMES}")
        return value

    @field_validator("atlas", "metric", "ref_site")
    @classmethod
    def _contract_name(cls, value: str | None, info: Any) -> str | None:
        from sites.contract import check_name

        return None if value is None else check_name(value, f"{info.field_name} name")

    @field_validator("covariates")
    @classmethod
    def _covariate_names(cls, value: list[str]) -> list[str]:
        from sites.contract import check_name

        return [check_name(name, "covariate name") for name in value]

    def provenance(self) -> dict[str, Any]:
        """The parameters as recorded in ``results.json`` (with ``fdr_alpha``)."""
        return {**self.model_dump(mode="json"), "fdr_alpha": FDR_ALPHA}


def format_validation_error(exc: ValidationError) -> str:
    """One line per invalid field: ``field: message`` (no pydantic boilerplate)."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "parameters"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "; ".join(lines)
