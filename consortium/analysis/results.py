"""Typed analysis results and their one JSON serialisation (schema ``confed.analysis/2``).

Every analysis result that leaves the coordinator (the pipeline's
``results.json``, the API's analysis jobs, remote analyses on a grant) is one of
the dataclasses below, written by :func:`to_json` / :func:`result_to_dict` and read
back by :func:`from_json`. Nothing else builds these JSON documents.

Document layout (``results.json``, key order as written)
--------------------------------------------------------
``schema``      ``"confed.analysis/2"`` (:data:`SCHEMA`).
``kind``        the registered analysis kind (``dmn``, ``networks``, ``edges``, ``voxels``, ...).
``contrast``    the contrast name (:mod:`consortium.analysis.contrasts`).
``groups``      ``{"case": name, "control": name}`` of the two sides of the contrast.
``design``      :class:`DesignSummary`: n, n_case, n_control, sites, sites_excluded,
                fixed, covariates, covariates_dropped, subjects_excluded_missing_covariate,
                dx_coding, model, notes.
``sample``      records, one per site and group: site, group, n, age_mean, age_sd,
                female_pct, education_mean, mean_fd_mean.
``qc``          :class:`QcSummary`: n_excluded, n_subjects_total, by_site_reason (records:
                site, code, field, meaning, n, values, threshold).
sections        one key per section of the kind's :class:`KindResult` (in its order):
                ``dmn`` (:class:`DmnSection`) and ``meta`` (:class:`MetaAnalysis`) for dmn;
                ``networks`` (:class:`NetworksSection`); ``edges`` (:class:`EdgesSection`);
                ``voxels`` (:class:`VoxelsSection`); with permutations ``nbs``
                (:class:`NbsSection`) for edges and ``tfce`` (:class:`TfceSection`)
                for voxels; a registered kind may add its own
                section (a dataclass, or a plain JSON object).
``figures``     ``{name: {"png": file, "svg": file}}`` relative to the results directory.
``provenance``  release_name, release_hash, bundle_hashes, atlas_sha256, software,
                parameters (:class:`consortium.analysis.params.AnalysisParams` as JSON,
                plus ``kind`` and ``fdr_alpha``), seed.

Remote analyses (:func:`result_to_dict` of :class:`RemoteMixedModel` or
:class:`RemoteMetaAnalysis`) carry ``schema`` first, then their fields.

Vocabulary (one name per concept, in every document and table)
--------------------------------------------------------------
``estimate``, ``se``   a coefficient or pooled effect and its standard error.
``t``, ``df``          test statistic and its degrees of freedom.
``p``                  two-sided p value (never ``pvalue``).
``ci``                 ``[low, high]`` 95% interval of ``estimate`` in an object; flat tables
                       (records, parquet) use ``ci_low``/``ci_high`` columns instead.
``d``, ``d_ci``, ``d_se``  Cohen's d of the diagnosis effect, its interval and SE.
``coefficients``       the fixed-effect table: records ``{term, estimate, se, t, p[, df]}``
                       (never ``fixed_effects``).
``q`` (feature tables) Benjamini-Hochberg FDR q value; ``p_fwe`` max-statistic FWE p
                       (Freedman-Lane, scheme in ``permutation``); ``p_fwe_tail`` the
                       same with the generalized Pareto tail approximation.
``q``, ``q_p`` (meta)  Cochran's heterogeneity Q and its p value (never ``q_pvalue``);
                       ``tau2``, ``tau2_ci``, ``i2``, ``h2``, ``k`` as in metafor.
``n_fdr``, ``n_fwe``   number of features with q < ``fdr_alpha`` / p_fwe < 0.05.
``primary``            the harmonization whose results are the main ones.

Everything here is a function of the inputs: no wall-clock time, so two runs
give byte-identical ``results.json``.

Length: this module is over 500 lines because it is the one place of every result
dataclass and of their one serialiser; splitting it would split the schema.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from consortium.provenance import jsonable

__all__ = [
    "SCHEMA",
    "AnalysisResult",
    "Coefficient",
    "DesignSummary",
    "DmnSection",
    "EdgesSection",
    "KindResult",
    "MetaAnalysis",
    "MixedModelFit",
    "NbsComponentSummary",
    "NbsEdge",
    "NbsSection",
    "NetworksSection",
    "PermutationSummary",
    "PooledEffect",
    "QcSummary",
    "RemoteMetaAnalysis",
    "RemoteMixedModel",
    "SlopeLRT",
    "TailFit",
    "TfceSection",
    "VoxelsSection",
    "from_dict",
    "from_json",
    "pooled_effect",
    "register_section",
    "rename_vocabulary",
    "result_to_dict",
    "to_dict",
    "to_json",
]

SCHEMA = "confed.analysis/2"
_OMIT_NONE = {"omit_none": True}

# Names used by library code (metafor/statsmodels conventions) -> the one vocabulary.
_RENAMES = {"pvalue": "p", "q_pvalue": "q_p", "fixed_effects": "coefficients"}


def rename_vocabulary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with library key names (``pvalue``, ``q_pvalue``) in the one vocabulary."""
    return [{_RENAMES.get(k, k): v for k, v in r.items()} for r in records]


def _plain(value: Any) -> Any:
    """Dataclasses as dicts (field order; ``omit_none`` fields left out when None)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = _plain(item)
        return out
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------ building blocks


@dataclass
class Coefficient:
    """One row of a fixed-effect table."""

    term: str
    estimate: float
    se: float
    t: float
    p: float
    df: float | None = field(default=None, metadata=_OMIT_NONE)


@dataclass
class SlopeLRT:
    """LRT of the site random slope of diagnosis (boundary: 50:50 chi2(0)/chi2(1) mixture)."""

    statistic: float
    p_mixture: float
    p_chi2_1: float
    llf_without_slope: float


@dataclass
class MixedModelFit:
    """The diagnosis effect of one mixed model (one outcome, one harmonization)."""

    n: int
    n_case: int
    n_control: int
    n_sites: int
    df: float
    t: float
    p: float
    d: float
    d_ci: list[float]
    d_se: float
    variance_components: dict[str, float]
    residual_variance: float
    llf: float
    slope_lrt: SlopeLRT
    coefficients: list[Coefficient]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MixedModelFit:
        values = dict(data)
        values["slope_lrt"] = SlopeLRT(**values["slope_lrt"])
        values["coefficients"] = [Coefficient(**c) for c in values["coefficients"]]
        return cls(**values)


@dataclass
class PooledEffect:
    """A random-effects pooled estimate (metafor ``rma`` quantities, one vocabulary)."""

    method: str
    k: int
    estimate: float
    se: float
    ci: list[float]
    p: float
    tau2: float
    tau2_ci: list[float]
    q: float
    q_p: float
    i2: float
    h2: float


def pooled_effect(res: Any) -> PooledEffect:
    """:class:`PooledEffect` of a :class:`consortium.analysis.meta.RandomEffectsResult`."""
    return PooledEffect(
        method=str(res.method),
        k=int(res.k),
        estimate=float(res.estimate),
        se=float(res.se),
        ci=[float(res.ci_low), float(res.ci_high)],
        p=float(res.pvalue),
        tau2=float(res.tau2),
        tau2_ci=[float(x) for x in res.tau2_ci],
        q=float(res.q),
        q_p=float(res.q_pvalue),
        i2=float(res.i2),
        h2=float(res.h2),
    )


# ------------------------------------------------------------------ kind sections


@dataclass
class DmnSection:
    """``dmn``: the REST-meta-MDD model of mean DMN FC, per harmonization."""

    outcome: str
    primary: str
    models: dict[str, MixedModelFit]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DmnSection:
        models = {h: MixedModelFit.from_dict(m) for h, m in data["models"].items()}
        return cls(data["outcome"], data["primary"], models)


@dataclass
class MetaAnalysis:
    """``meta``: per-site Hedges' g pooled by random effects, with leave-one-site-out."""

    method: str
    outcome_harmonization: str
    outcome_harmonization_reason: str
    covariates: list[str]
    notes: list[str]
    k: int
    estimate: float
    se: float
    ci: list[float]
    p: float
    tau2: float
    tau2_ci: list[float]
    q: float
    q_p: float
    i2: float
    h2: float
    sites: list[dict[str, Any]]
    leave_one_site_out: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class NetworksSection:
    """``networks``: the model of every within/between-network mean (records per pair)."""

    primary: str
    n_pairs: int
    n_fdr: int
    effects: list[dict[str, Any]]


@dataclass
class TailFit:
    """Generalized Pareto fit to the upper tail of the null max distribution (PALM)."""

    threshold: float
    quantile: float
    shape: float
    scale: float
    n_exceedances: int


@dataclass
class PermutationSummary:
    """How the permutation p values were obtained (the seed reproduces them bit for bit).

    ``n_fwe_tail``: features with the tail-approximated FWE p (column ``p_fwe_tail``)
    below 0.05, when ``tail`` was fitted.
    """

    method: str
    scheme: str
    blocks: str
    n_permutations: int
    seed: int
    two_sided: bool
    tail: TailFit | None = field(default=None, metadata=_OMIT_NONE)
    n_fwe_tail: int | None = field(default=None, metadata=_OMIT_NONE)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PermutationSummary:
        tail = data.get("tail")
        return cls(**{**data, "tail": TailFit(**tail) if tail else None})


@dataclass
class EdgesSection:
    """``edges``: the mass-univariate model over edges (summary; the table is a parquet).

    With permutations, ``blocks`` records carry ``p_fwe`` (the block's mean t,
    corrected over blocks) and ``permutation`` says how.
    """

    n_edges: int
    n_fdr: int
    max_abs_t: float
    strongest: list[dict[str, Any]]
    blocks: list[dict[str, Any]]
    n_fwe: int | None = field(default=None, metadata=_OMIT_NONE)
    permutation: PermutationSummary | None = field(default=None, metadata=_OMIT_NONE)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EdgesSection:
        perm = data.get("permutation")
        return cls(**{**data, "permutation": PermutationSummary.from_dict(perm) if perm else None})


@dataclass
class NbsEdge:
    """One edge of an NBS component, named by its ROIs and their networks."""

    edge: int
    roi_a: str
    roi_b: str
    network_a: str
    network_b: str
    t: float


@dataclass
class NbsComponentSummary:
    """One supra-threshold component: size (extent), mass above threshold, FWE p."""

    component: int
    sign: int
    extent: int
    intensity: float
    p_extent: float
    p_intensity: float
    nodes: list[str]
    edges: list[NbsEdge]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NbsComponentSummary:
        return cls(**{**data, "edges": [NbsEdge(**e) for e in data["edges"]]})


@dataclass
class NbsSection:
    """``nbs``: network-based statistic components (table ``nbs_components.parquet``)."""

    threshold: float
    tail: str
    n_permutations: int
    seed: int
    n_components: int
    n_significant: int
    components: list[NbsComponentSummary]
    scheme: str = "permute"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NbsSection:
        parts = [NbsComponentSummary.from_dict(c) for c in data["components"]]
        return cls(**{**data, "components": parts})


@dataclass
class TfceSection:
    """``tfce``: threshold-free cluster enhancement with FWE-corrected p maps (NIfTI).

    ``n_fwe`` counts voxels with FWE p < 0.05 (``n_fwe_positive`` / ``_negative`` by
    the sign of t); ``maps`` names the TFCE and p map files.
    """

    E: float
    H: float
    dh: str
    connectivity: int
    n_voxels: int
    n_fwe: int
    n_fwe_positive: int
    n_fwe_negative: int
    max_abs_tfce: float
    min_p_fwe: float
    maps: dict[str, str]
    permutation: PermutationSummary

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TfceSection:
        return cls(**{**data, "permutation": PermutationSummary.from_dict(data["permutation"])})


@dataclass
class VoxelsSection:
    """``voxels``: the mass-univariate model over voxels (maps are NIfTI files)."""

    metric: str
    n_voxels: int
    n_fdr: int
    fdr_threshold_abs_t: float | None
    peak_t: float
    peak_d: float
    peak_mni: list[float]
    maps: dict[str, str]


_SECTIONS: dict[str, type] = {}


def register_section(name: str, cls: type) -> None:
    """Let :func:`from_json` rebuild section ``name`` as ``cls`` (a dataclass)."""
    _SECTIONS[name] = cls


for _name, _cls in (
    ("dmn", DmnSection),
    ("meta", MetaAnalysis),
    ("networks", NetworksSection),
    ("edges", EdgesSection),
    ("voxels", VoxelsSection),
    ("nbs", NbsSection),
    ("tfce", TfceSection),
):
    register_section(_name, _cls)


def _section(name: str, data: Any) -> Any:
    cls = _SECTIONS.get(name)
    if cls is None or not isinstance(data, Mapping):
        return data
    builder = getattr(cls, "from_dict", None)
    return builder(data) if builder else cls(**data)


@dataclass
class KindResult:
    """What a kind's ``run`` returns: named result sections and the figures it wrote.

    ``sections`` maps a top-level key of ``results.json`` to a section dataclass
    (or a JSON-able dict, for a kind without its own dataclass).
    """

    sections: dict[str, Any]
    figures: dict[str, dict[str, str]] = field(default_factory=dict)


# ------------------------------------------------------------------ the document


@dataclass
class DesignSummary:
    """Who entered the model and how (see :class:`consortium.analysis.design.Design`)."""

    n: int
    n_case: int
    n_control: int
    sites: list[str]
    sites_excluded: list[dict[str, Any]]
    fixed: list[str]
    covariates: list[str]
    covariates_dropped: list[dict[str, Any]]
    subjects_excluded_missing_covariate: dict[str, dict[str, int]]
    dx_coding: dict[str, int]
    model: str
    notes: list[str]


@dataclass
class QcSummary:
    """Sites' QC exclusions, counted by site, reason code and field."""

    n_excluded: int
    n_subjects_total: int
    by_site_reason: list[dict[str, Any]]


@dataclass
class AnalysisResult:
    """One analysis run: the whole ``results.json``."""

    kind: str
    contrast: str
    groups: dict[str, str]
    design: DesignSummary
    sample: list[dict[str, Any]]
    qc: QcSummary
    sections: dict[str, Any]
    figures: dict[str, dict[str, str]]
    provenance: dict[str, Any]
    schema: str = SCHEMA

    def section(self, name: str) -> Any:
        """A result section by name (``KeyError`` naming the present ones)."""
        if name not in self.sections:
            raise KeyError(f"no section {name!r}; present: {', '.join(self.sections)}")
        return self.sections[name]


def to_dict(result: AnalysisResult) -> dict[str, Any]:
    """The JSON object of a result (plain types; NaN and infinities as ``None``)."""
    document = {
        "schema": result.schema,
        "kind": result.kind,
        "contrast": result.contrast,
        "groups": result.groups,
        "design": result.design,
        "sample": result.sample,
        "qc": result.qc,
        **result.sections,
        "figures": result.figures,
        "provenance": result.provenance,
    }
    return jsonable(_plain(document))


def to_json(result: AnalysisResult) -> str:
    """``results.json`` text: indented, NaN-free, newline-terminated, deterministic."""
    return json.dumps(to_dict(result), indent=2, sort_keys=False, allow_nan=False) + "\n"


_FIXED_KEYS = ("schema", "kind", "contrast", "groups", "design", "sample", "qc", "figures")


def from_dict(data: Mapping[str, Any]) -> AnalysisResult:
    """Rebuild an :class:`AnalysisResult` (``ValueError`` on another schema)."""
    schema = data.get("schema")
    if schema != SCHEMA:
        raise ValueError(f"results schema {schema!r} is not {SCHEMA!r}")
    sections = {
        k: _section(k, v) for k, v in data.items() if k not in (*_FIXED_KEYS, "provenance")
    }
    return AnalysisResult(
        kind=data["kind"],
        contrast=data["contrast"],
        groups=dict(data["groups"]),
        design=DesignSummary(**data["design"]),
        sample=list(data["sample"]),
        qc=QcSummary(**data["qc"]),
        sections=sections,
        figures=dict(data["figures"]),
        provenance=dict(data["provenance"]),
        schema=schema,
    )


def from_json(text: str) -> AnalysisResult:
    """Parse ``results.json`` text."""
    return from_dict(json.loads(text))


# ------------------------------------------------------------------ remote analyses


@dataclass
class RemoteMixedModel:
    """A remote ``mixed_model`` on a grant's data (aggregates only)."""

    analysis: str
    measure: str
    outcome: str
    harmonize: str
    n_subjects: int
    cells: dict[str, Any]
    strata: dict[str, Any]
    coefficients: list[Coefficient]
    variance_components: dict[str, float]
    residual_variance: float
    converged: bool
    formula: str


@dataclass
class RemoteMetaAnalysis:
    """A remote ``meta_analysis``: per-site Hedges' g pooled by random effects."""

    analysis: str
    measure: str
    outcome: str
    harmonize: str
    n_subjects: int
    cells: dict[str, Any]
    strata: dict[str, Any]
    pooled: PooledEffect
    sites: dict[str, dict[str, Any]]
    sites_excluded: dict[str, str]
    model: str


def result_to_dict(result: RemoteMixedModel | RemoteMetaAnalysis) -> dict[str, Any]:
    """The JSON object of a remote analysis result, ``schema`` first."""
    return jsonable({"schema": SCHEMA, **_plain(result)})
