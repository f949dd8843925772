"""``confed analyze <kind> --mode federated``: the pipeline's results from the sites' statistics.

The coordinator holds no subject rows. It creates tasks in its database (the running
coordinator server hands them to the sites' agents, which poll it), waits for the
answers (:func:`consortium.federated.orchestrator.run_federated`) and fits from the
sites' aggregates with the pooled code. The results directory has the pooled run's
``results.json`` schema (:mod:`consortium.analysis.results`) with
``provenance.parameters.mode = "federated"`` and ``provenance.federated`` listing
every round (run id, sites used, refusals and silent sites by name).

Rounds (one task per site each):

- ``dmn``: ``meta_summary`` (per-site OLS, the site meta-analysis), then
  ``mixed_stats`` with and without the site random slope of Dx (the model and its
  slope LRT) on the sites the meta round found usable;
- ``edges``: ``mass_stats`` over every edge of the atlas;
- ``networks``: ``mass_stats`` over every network-pair mean (one outcome per column,
  as the edges model);
- with ``--harmonize combat``: distributed ComBat on the sites' edges first
  (:mod:`consortium.federated.combat`, three rounds); the harmonized edges stay at
  the sites, which compute the statistics (and the network means) on them. DMN and
  networks keep the unharmonized fit next to the harmonized one, as the pooled run.

A site with fewer than ``min_per_group`` cases or controls refuses (as the pooled
design excludes it) and is listed in ``design.sites_excluded`` with its reason.

Available now: ``dmn``, ``networks`` and ``edges``, with ``--harmonize none`` or
``combat``, contrast ``all``, no permutations, no covariate sensitivity and no
harmonization diagnostics section.
Each site's subjects are its bundle's included subjects with complete covariates (a
site with a missing covariate value refuses, naming the column).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from consortium.analysis.effects import cohens_d_ci, d_from_t
from consortium.analysis.encodings import DX_CODES, SEX_CODES
from consortium.analysis.errors import AnalysisError
from consortium.analysis.params import FDR_ALPHA, AnalysisParams
from consortium.analysis.results import (
    AnalysisResult,
    Coefficient,
    DesignSummary,
    DmnSection,
    EdgesSection,
    MixedModelFit,
    QcSummary,
    SlopeLRT,
    to_json,
)
from consortium.federated import combine
from consortium.federated.combat import harmonized_round
from consortium.federated.orchestrator import FederatedIncomplete, FederatedOutcome, run_federated
from consortium.provenance import check_out_dir, software_versions, staged_output

__all__ = ["FEDERATED_KINDS", "run_federated_analysis"]

FEDERATED_KINDS = ("dmn", "networks", "edges")
FEDERATED_HARMONIZERS = ("none", "combat")
OUTCOME = "dmn_restmeta"


def check_federated(params: AnalysisParams) -> None:
    """AnalysisError naming every option federated mode does not offer yet."""
    problems = []
    if params.kind not in FEDERATED_KINDS:
        problems.append(
            f"kind {params.kind!r} is not available in federated mode yet "
            f"(available: {', '.join(FEDERATED_KINDS)})"
        )
    if params.harmonize not in FEDERATED_HARMONIZERS:
        problems.append(
            f"harmonize {params.harmonize!r} is not available in federated mode "
            f"(available: {', '.join(FEDERATED_HARMONIZERS)})"
        )
    if params.contrast != "all":
        problems.append(f"contrast {params.contrast!r}: federated mode offers contrast 'all'")
    if params.permutations:
        problems.append("permutations are not available in federated mode")
    if params.atlas is None:
        problems.append("atlas: federated mode needs --atlas (the coordinator has no bundles)")
    if problems:
        raise AnalysisError("; ".join(problems))


def _design(params: AnalysisParams, dx_labels: Mapping[str, str], slope: bool) -> dict[str, Any]:
    codes = {"dx": {dx_labels["case"]: DX_CODES["case"], dx_labels["control"]: DX_CODES["control"]}}
    if "sex" in params.covariates:
        codes["sex"] = dict(SEX_CODES)
    return {
        "dx": "dx", "fixed": ["dx", *params.covariates],
        "random_slopes": ["dx"] if slope else [], "codes": codes,
    }  # fmt: skip


class _Rounds:
    """Runs rounds against the coordinator and keeps each outcome for the provenance."""

    def __init__(self, coord: Any, sites: Sequence[str], run: Mapping[str, Any]):
        self.coord, self.sites, self.run, self.outcomes = coord, list(sites), dict(run), []

    def __call__(
        self, kind: str, params: Mapping[str, Any], sites=None, site_params=None
    ) -> FederatedOutcome:
        outcome = run_federated(self.coord, kind, params, sites or self.sites,
                                site_params=site_params, **self.run)  # fmt: skip
        self.outcomes.append(outcome)
        if not outcome.messages:
            named = {**outcome.refused, **{s: "no answer" for s in outcome.missing}}
            raise FederatedIncomplete(
                f"federated {kind} run {outcome.run_id}: no site sent statistics ("
                + "; ".join(f"{s}: {r}" for s, r in named.items()) + ")", list(named),
            )  # fmt: skip
        return outcome


def _excluded(outcomes: Sequence[FederatedOutcome], used: Sequence[str]) -> list[dict]:
    """Each asked site not in the model, with the first reason a round gave."""
    reasons: dict[str, str] = {}
    for outcome in outcomes:
        for site, reason in outcome.refused.items():
            reasons.setdefault(site, reason)
        for site in outcome.missing:
            reasons.setdefault(site, "no answer before the timeout")
    return [{"site": s, "reason": reasons[s]} for s in sorted(reasons) if s not in used]


def _counts(outcome: FederatedOutcome) -> tuple[int, int]:
    groups = [m["groups"] for m in outcome.messages]
    return sum(g["case"] for g in groups), sum(g["control"] for g in groups)


def _mixed_fit(with_slope: Any, without: Any, n_case: int, n_control: int) -> MixedModelFit:
    """The DMN section's record of a fit (as :func:`consortium.analysis.fitting.fit_dmn`)."""
    t = float(with_slope.tvalues["dx"])
    d = float(d_from_t(t, n_case, n_control, with_slope.df_resid)[0])
    low, high, se = cohens_d_ci(d, n_case, n_control)
    lrt = max(0.0, 2.0 * (with_slope.llf - without.llf))
    from scipy import stats

    coefficients = [
        Coefficient(term, float(with_slope.params[term]), float(with_slope.bse[term]),
                    float(with_slope.tvalues[term]), float(with_slope.pvalues[term]))
        for term in with_slope.params.index
    ]  # fmt: skip
    return MixedModelFit(
        n=n_case + n_control, n_case=n_case, n_control=n_control,
        n_sites=int(with_slope.n_groups), df=float(with_slope.df_resid), t=t,
        p=float(with_slope.pvalues["dx"]), d=d, d_ci=[float(low), float(high)], d_se=float(se),
        variance_components={k: float(v) for k, v in with_slope.variance_components.items()},
        residual_variance=float(with_slope.scale), llf=float(with_slope.llf),
        slope_lrt=SlopeLRT(
            statistic=float(lrt),
            p_mixture=float(0.5 * stats.chi2.sf(lrt, 1)) if lrt > 0 else 1.0,
            p_chi2_1=float(stats.chi2.sf(lrt, 1)), llf_without_slope=float(without.llf),
        ),
        coefficients=coefficients,
    )  # fmt: skip


def _atlas(params: AnalysisParams) -> Any:
    from sites.atlas import AtlasError, load_atlas

    try:
        return load_atlas(params.atlas)
    except (AtlasError, FileNotFoundError, ValueError) as exc:
        raise AnalysisError(f"atlas {params.atlas!r}: {exc}") from exc


def _stats(rounds: _Rounds, params: AnalysisParams, harm: str, kind: str, tasks: list,
           sites: Sequence[str]) -> list[FederatedOutcome]:  # fmt: skip
    """One ``kind`` round per task, on the sites' own or ComBat-harmonized data."""
    if harm == "none":
        return [rounds(kind, task, list(sites)) for task in tasks]
    n_edges = _atlas(params).n_edges
    return harmonized_round(rounds, kind, tasks, sites, params.atlas, n_edges, params.ref_site)


def _run_dmn(rounds: _Rounds, params: AnalysisParams, dx_labels, out: Path) -> tuple:
    from consortium.analysis.kinds.dmn import harmonizations, meta_from_sites

    source = {"type": "networks", "atlas": params.atlas, "columns": [OUTCOME]}
    base = {"source": source, "min_per_group": params.min_per_group}
    meta = rounds("meta_summary", {**base, "design": _design(params, dx_labels, False)})
    every = meta.messages + [
        {"site": s, "status": "refused", "reason": r} for s, r in meta.refused.items()
    ]
    table, _ = combine.combine_meta(every)
    table["covariates"] = ", ".join(params.covariates)
    table["covariates_dropped"] = ""
    section_meta = meta_from_sites(table, list(params.covariates), out)
    designs = [_design(params, dx_labels, slope) for slope in (True, False)]
    models = {}
    for harm in harmonizations(params):
        tasks = [{**base, "design": design} for design in designs]
        outcomes = _stats(rounds, params, harm, "mixed_stats", tasks, meta.sites_used)
        fits = [combine.combine_mixed(o.messages, d, reml=False)
                for o, d in zip(outcomes, designs, strict=True)]  # fmt: skip
        models[harm] = _mixed_fit(fits[0], fits[1], *_counts(outcomes[0]))
    pd.DataFrame.from_records(
        [{**{k: v for k, v in vars(c).items() if k != "df"}, "harmonization": harm}
         for harm, model in models.items() for c in model.coefficients]
    ).to_parquet(out / "mixed_model.parquet", index=False)  # fmt: skip
    sections = {"dmn": DmnSection(outcome=OUTCOME, primary=params.harmonize, models=models),
                "meta": section_meta}  # fmt: skip
    figures = {"forest": {"png": "forest.png", "svg": "forest.svg"}}
    return sections, figures, outcomes[0]


def _mass(rounds: _Rounds, params: AnalysisParams, harm: str, task: dict) -> tuple:
    """Per-feature fit table (estimate, se, t, p, d, CI) and the round's outcome."""
    from consortium.analysis.fitting import mass_table

    outcome = _stats(rounds, params, harm, "mass_stats", [task], rounds.sites)[0]
    result = combine.combine_mass(outcome.messages, task["design"], reml=False)
    return mass_table(result, *_counts(outcome)), outcome


def _run_networks(rounds: _Rounds, params: AnalysisParams, dx_labels, out: Path) -> tuple:
    from consortium.analysis.figures import network_matrix_figure
    from consortium.analysis.kinds.dmn import harmonizations
    from consortium.analysis.kinds.networks import label_pairs
    from consortium.analysis.results import NetworksSection
    from sites.connectivity import network_pairs

    pairs = list(network_pairs(_atlas(params)))
    task = {"design": _design(params, dx_labels, params.random_slope),
            "source": {"type": "networks", "atlas": params.atlas, "columns": pairs},
            "min_per_group": params.min_per_group, "dims": {"feature": len(pairs)}}  # fmt: skip
    tables = []
    for harm in harmonizations(params):
        fit, outcome = _mass(rounds, params, harm, task)
        tables.append(label_pairs(fit, pairs).assign(harmonization=harm))
    table = pd.concat(tables, ignore_index=True)
    table.to_parquet(out / "network_effects.parquet", index=False)
    primary = table[table["harmonization"] == params.harmonize]
    title = f"Network effects: d ({params.harmonize})"
    network_matrix_figure(primary, "d", title, out, "network_matrix")
    section = NetworksSection(
        primary=params.harmonize, n_pairs=int(len(primary)),
        n_fdr=int((primary["q"] < FDR_ALPHA).sum()), effects=table.to_dict(orient="records"),
    )  # fmt: skip
    figures = {"network_matrix": {"png": "network_matrix.png", "svg": "network_matrix.svg"}}
    return {"networks": section}, figures, outcome


def _run_edges(rounds: _Rounds, params: AnalysisParams, dx_labels, out: Path) -> tuple:
    from consortium.analysis.figures import strongest_edges
    from consortium.analysis.fitting import fdr
    from consortium.analysis.kinds.edges import _edge_matrix, _figures, _label, block_summary
    from consortium.analysis.kinds.edges import _with_d_and_q as with_d_and_q

    atlas = _atlas(params)
    task = {"design": _design(params, dx_labels, params.random_slope),
            "source": {"type": "connectivity", "atlas": params.atlas},
            "min_per_group": params.min_per_group, "dims": {"feature": atlas.n_edges}}  # fmt: skip
    fit, outcome = _mass(rounds, params, params.harmonize, task)
    fit["q"] = fdr(fit["p"].to_numpy())
    fit = _label(fit, atlas)
    fit.to_parquet(out / "edge_effects.parquet", index=False)
    _edge_matrix(fit["t"].to_numpy(), atlas.labels).to_parquet(out / "edge_t_matrix.parquet")
    _edge_matrix(fit["d"].to_numpy(), atlas.labels).to_parquet(out / "edge_d_matrix.parquet")
    blocks = block_summary(fit, atlas)
    blocks.to_parquet(out / "network_blocks.parquet", index=False)
    figures = _figures(blocks, atlas, fit["t"].to_numpy(), out)
    section = EdgesSection(
        n_edges=int(len(fit)), n_fdr=int((fit["q"] < FDR_ALPHA).sum()),
        max_abs_t=float(np.abs(fit["t"]).max()),
        strongest=with_d_and_q(strongest_edges(atlas, fit["t"].to_numpy()), fit),
        blocks=blocks.to_dict(orient="records"), n_fwe=None,
    )  # fmt: skip
    return {"edges": section}, figures, outcome


def _summary(params, outcome, outcomes, dx_labels, slope: bool) -> tuple[DesignSummary, list]:
    from consortium.analysis.pipeline import model_formula

    n_case, n_control = _counts(outcome)
    fixed = ["dx", *params.covariates]
    sample = [
        {"site": m["site"], "group": dx_labels[g], "n": int(m["groups"][g]), "included": True}
        for m in sorted(outcome.messages, key=lambda m: m["site"]) for g in ("case", "control")
    ]  # fmt: skip
    summary = DesignSummary(
        n=n_case + n_control, n_case=n_case, n_control=n_control, sites=outcome.sites_used,
        sites_excluded=_excluded(outcomes, outcome.sites_used), fixed=fixed,
        covariates=list(params.covariates),
        covariates_dropped=[], subjects_excluded_missing_covariate={},
        dx_coding={dx_labels["case"]: 1, dx_labels["control"]: -1},
        model=model_formula(fixed, slope),
        notes=["federated: the sites sent aggregate statistics only; QC exclusions and "
               "covariate checks were applied at each site"],
    )  # fmt: skip
    return summary, sample


def run_federated_analysis(
    coord: Any,
    params: AnalysisParams,
    out_dir: str | Path,
    *,
    sites: Sequence[str],
    dx_labels: Mapping[str, str],
    timeout: float = 600.0,
    missing: str = "wait",
    overwrite: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Run ``params.kind`` federated over ``sites`` and write its results directory.

    Parameters
    ----------
    coord : Coordinator
        The open coordinator whose server the sites' agents poll.
    params : AnalysisParams
        With ``mode="federated"`` (see :func:`check_federated` for what is available).
    sites : list of str
        Registered site ids asked.
    dx_labels : dict
        ``{"case": label, "control": label}`` of the sites' ``dx`` column.
    timeout, missing
        As :func:`~consortium.federated.orchestrator.run_federated`: wait at most
        ``timeout`` seconds per round; ``"wait"`` stops naming silent sites,
        ``"proceed"`` goes on without them (listed in ``sites_excluded``).
    """
    check_federated(params)
    if not sites:
        raise AnalysisError("no sites to ask: register sites or pass --site")
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    rounds = _Rounds(coord, sites, {"timeout": timeout, "missing": missing})
    runner = {"dmn": _run_dmn, "networks": _run_networks, "edges": _run_edges}[params.kind]
    slope = params.kind == "dmn" or params.random_slope
    with staged_output(out_dir) as tmp:
        if progress is not None:
            progress(f"federated {params.kind}", 0, 1)
        sections, figures, outcome = runner(rounds, params, dx_labels, tmp)
        summary, sample = _summary(params, outcome, rounds.outcomes, dx_labels, slope)
        result = AnalysisResult(
            kind=params.kind, contrast=params.contrast, groups=dict(dx_labels), design=summary,
            sample=sample, qc=QcSummary(n_excluded=0, n_subjects_total=summary.n,
                                        by_site_reason=[]),
            sections=sections, figures=figures,
            provenance={
                "release_name": None, "release_hash": None, "bundle_hashes": {},
                "atlas_sha256": None, "software": software_versions(),
                "parameters": params.provenance(), "seed": params.seed,
                "federated": [o.as_dict() for o in rounds.outcomes],
            },
        )  # fmt: skip
        pd.DataFrame(sample).to_parquet(tmp / "sample.parquet", index=False)
        (tmp / "results.json").write_text(to_json(result))
        if progress is not None:
            progress(f"federated {params.kind}", 1, 1)
    return out_dir
