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

import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from consortium.analysis.contrasts import CONTRAST_NAMES
from consortium.analysis.encodings import DEFAULT_COVARIATES

__all__ = [
    "FDR_ALPHA",
    "FWE_ALPHA",
    "TAIL_MIN_PERMUTATIONS",
    "AnalysisParams",
    "format_validation_error",
]

FDR_ALPHA = 0.05
FWE_ALPHA = 0.05  # level of the counts of family-wise corrected results (n_fwe, ...)
# the tail fit uses the null maxima above their 0.9 quantile; it needs at least 10
TAIL_MIN_PERMUTATIONS = 100


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
    permutations: int = Field(
        0, ge=0, le=100_000,
        description="Freedman-Lane permutations (whole-site sign flips with the site slope "
        "and >= 10 sites, else within sites; edges: max-|t|, network blocks, NBS; voxels: "
        "TFCE)",
    )  # fmt: skip
    seed: int = Field(0, description="seed of the permutations")
    nbs_threshold: float | None = Field(
        None, description="NBS primary threshold on |t| (edges; needs permutations)"
    )
    tfce: bool = Field(False, description="TFCE-corrected maps (voxels; needs permutations)")
    tail_approximation: bool = Field(
        False,
        description="generalized Pareto tail approximation of the FWE p (needs at least "
        f"{TAIL_MIN_PERMUTATIONS} permutations)",
    )
    scheduler: str | None = Field(
        None,
        description="dask.distributed scheduler address for the permutations (default: "
        "dask's local scheduler); not recorded, results do not depend on it",
    )
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

    @field_validator("nbs_threshold")
    @classmethod
    def _positive_threshold(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"the NBS threshold must be a positive t value, got {value}")
        return value

    @field_validator("scheduler")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("the scheduler address is empty")
        return value

    @model_validator(mode="after")
    def _permutation_options(self) -> AnalysisParams:
        problems = []
        if self.nbs_threshold is not None and self.kind != "edges":
            problems.append(f"nbs_threshold applies to kind 'edges', not {self.kind!r}")
        if self.tfce and self.kind != "voxels":
            problems.append(f"tfce applies to kind 'voxels', not {self.kind!r}")
        asked = [name for name, on in (("nbs_threshold", self.nbs_threshold is not None),
                                       ("tfce", self.tfce)) if on]  # fmt: skip
        if asked and self.permutations < 1:
            problems.append(f"{' and '.join(asked)} need permutations >= 1")
        if self.tail_approximation and self.permutations < TAIL_MIN_PERMUTATIONS:
            problems.append(
                f"tail_approximation needs permutations >= {TAIL_MIN_PERMUTATIONS} "
                f"(got {self.permutations})"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def provenance(self) -> dict[str, Any]:
        """The parameters as recorded in ``results.json`` (with ``fdr_alpha``).

        ``scheduler`` is left out: where the permutations ran does not change them
        (the same seed gives the same results bit for bit on any scheduler).
        """
        return {**self.model_dump(mode="json", exclude={"scheduler"}), "fdr_alpha": FDR_ALPHA}


def format_validation_error(exc: ValidationError) -> str:
    """One line per invalid field: ``field: message`` (no pydantic boilerplate)."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "parameters"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "; ".join(lines)
