"""The consortium analyses of a release: design -> kind -> typed result -> results directory.

A thin orchestrator over the kind registry (:mod:`consortium.analysis.registry`):
the parameters are validated by :class:`~consortium.analysis.params.AnalysisParams`,
the design is built once (:mod:`consortium.analysis.design`), the kind's ``run``
writes its tables and figures and returns typed sections
(:mod:`consortium.analysis.results`), and ``results.json`` is written by the one
serialiser. The built-in kinds (``dmn``, ``networks``, ``edges``, ``voxels``) are
described in their modules under :mod:`consortium.analysis.kinds`.

Diagnosis is coded +1 (case) / -1 (control) as in the published scripts
(:mod:`consortium.analysis.encodings`), so the Dx coefficient is half the adjusted
group difference; t, d and p do not depend on the coding.

Everything written is a function of the release, the parameters and the seed:
``results.json`` carries no wall-clock time (timings go to ``timing.json``) so
two runs can be compared byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from consortium.analysis.data import ReleaseData, default_metric, resolve_atlas
from consortium.analysis.design import Design, build_design, qc_table
from consortium.analysis.errors import AnalysisError
from consortium.analysis.params import AnalysisParams, format_validation_error
from consortium.analysis.progress import ProgressCallback, Steps
from consortium.analysis.registry import get_kind
from consortium.analysis.results import (
    AnalysisResult,
    DesignSummary,
    KindResult,
    QcSummary,
    to_json,
)
from consortium.dataset import Dataset
from consortium.provenance import check_out_dir, software_versions, staged_output

__all__ = ["AnalysisError", "build_design", "make_params", "model_formula", "run", "run_analysis"]


def make_params(kind: str, **options: Any) -> AnalysisParams:
    """:class:`AnalysisParams` from keyword options (``AnalysisError`` naming bad fields)."""
    try:
        return AnalysisParams(kind=kind, **options)
    except ValidationError as exc:
        raise AnalysisError(format_validation_error(exc)) from None


def _resolve(dataset: Dataset, params: AnalysisParams) -> AnalysisParams:
    """Fill the atlas or metric the kind reads (the release's default when not given)."""
    entry = get_kind(params.kind)
    if entry.uses_atlas:
        params = params.model_copy(update={"atlas": resolve_atlas(dataset, params.atlas)})
    if entry.uses_maps and params.metric is None:
        params = params.model_copy(update={"metric": default_metric(dataset)})
    return params


def _atlas_hash(dataset: Dataset, atlas: str | None) -> str | None:
    """SHA-256 of the atlas definition the analysis used (all sites share it), if any."""
    if atlas is None or atlas not in dataset.atlases:
        return None
    return next(iter(dataset.atlas_hashes(atlas).values()), None)


def _provenance(dataset: Dataset, params: AnalysisParams) -> dict[str, Any]:
    return {
        "release_name": dataset.release_name,
        "release_hash": dataset.release_hash,
        "bundle_hashes": dataset.bundle_hashes,
        "atlas_sha256": _atlas_hash(dataset, params.atlas),
        "software": software_versions(),
        "parameters": params.provenance(),
        "seed": params.seed,
    }


def model_formula(fixed: list[str], slope: bool) -> str:
    """The model as ``results.json`` records it (``design.model``)."""
    model = " + ".join(fixed) + " + (1|site)" + (" + (0 + dx|site)" if slope else "")
    return f"y ~ {model}, ML"


def _design_summary(design: Design, params: AnalysisParams) -> DesignSummary:
    slope = params.kind == "dmn" or params.random_slope
    return DesignSummary(
        n=len(design.data),
        n_case=design.n_case,
        n_control=design.n_control,
        sites=design.sites,
        sites_excluded=design.sites_excluded,
        fixed=design.fixed,
        covariates=design.covariates,
        covariates_dropped=design.covariates_dropped,
        subjects_excluded_missing_covariate=design.missing_covariate_exclusions,
        dx_coding={design.groups["case"]: 1, design.groups["control"]: -1},
        model=model_formula(design.fixed, slope),
        notes=design.notes,
    )


def assemble(
    dataset: Dataset, design: Design, params: AnalysisParams, kind_result: KindResult, out: Path
) -> AnalysisResult:
    """The whole result of a run; writes the sample and QC tables beside it."""
    design.sample.to_parquet(out / "sample.parquet", index=False)
    qc = qc_table(dataset)
    qc.to_parquet(out / "qc_exclusions.parquet", index=False)
    return AnalysisResult(
        kind=params.kind,
        contrast=params.contrast,
        groups=design.groups,
        design=_design_summary(design, params),
        sample=design.sample.to_dict(orient="records"),
        qc=QcSummary(
            n_excluded=int((~dataset.qc["included"].astype(bool)).sum()),
            n_subjects_total=int(len(dataset.qc)),
            by_site_reason=qc.to_dict(orient="records"),
        ),
        sections=kind_result.sections,
        figures=kind_result.figures,
        provenance=_provenance(dataset, params),
    )


def run(
    dataset: Dataset,
    params: AnalysisParams,
    out_dir: str | Path,
    *,
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
    client: Any = None,
) -> Path:
    """Run one analysis and write its results directory; returns ``out_dir``.

    ``out_dir`` is written to a temporary sibling and renamed into place only when
    complete, so a failed run leaves nothing half-written; a non-empty ``out_dir``
    is refused unless ``overwrite``. ``progress(step, done, total)`` is told of
    every step (the CLI draws it). ``client`` is a ``dask.distributed`` client the
    caller opened for the permutations (:mod:`consortium.analysis.cluster`).
    """
    if params.mode != "pooled":
        raise AnalysisError(
            "mode 'federated' runs against the coordinator and the sites' agents: "
            "use consortium.federated.analysis.run_federated_analysis "
            "(confed analyze KIND --mode federated --root DIR)"
        )
    out_dir = Path(out_dir)
    params = _resolve(dataset, params)
    design = build_design(dataset, params.contrast, params.covariates, params.min_per_group)
    check_out_dir(out_dir, overwrite)
    kind = get_kind(params.kind)
    with staged_output(out_dir) as tmp:
        steps = Steps(progress)
        kind_result = kind.run(ReleaseData(dataset, design, tmp, client), params, steps)
        result = assemble(dataset, design, params, kind_result, tmp)
        (tmp / "results.json").write_text(to_json(result))
        (tmp / "timing.json").write_text(json.dumps(steps.timings, indent=2) + "\n")
    return out_dir


def run_analysis(
    dataset: Dataset,
    kind: str,
    out_dir: str | Path,
    *,
    progress: bool | ProgressCallback | None = None,
    overwrite: bool = False,
    client: Any = None,
    **options: Any,
) -> Path:
    """:func:`run` with the parameters as keywords (the fields of :class:`AnalysisParams`).

    ``progress`` is a callback ``progress(step, done, total)``; ``True``/``False``
    (the former display switch) mean no callback here: display belongs to the caller.
    """
    params = make_params(kind, **options)
    callback = progress if callable(progress) else None
    return run(dataset, params, out_dir, progress=callback, overwrite=overwrite, client=client)
