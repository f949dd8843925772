"""The consortium analyses of a release, from a :class:`~consortium.dataset.Dataset`
to a results directory the report renders.

Four kinds of analysis share one design step (contrast, covariates, per-site
minimum group size) and one output layout:

``dmn``
    The REST-meta-MDD model of Yan et al. (2019) on mean DMN functional
    connectivity, ``y ~ Dx + Age + Sex + Edu + Motion + (1|Site) + (0 + Dx|Site)``
    by maximum likelihood, without and (``harmonize="combat"``) with ComBat,
    plus the site-level meta-analysis (always on the unharmonized outcome), its
    forest plot and leave-one-site-out table.
``networks``
    The same model for every within- and between-network mean.
``edges``
    The mass-univariate model over every edge, t and d matrices,
    Benjamini-Hochberg FDR, optional max-statistic permutations and
    network-block summaries.
``voxels``
    The mass-univariate model over the voxels of a map, streamed in chunks of
    voxels from the bundles; t, d and FDR-thresholded maps as NIfTI.

Diagnosis is coded +1 (case) / -1 (control) as in the published scripts, so the
Dx coefficient is half the adjusted group difference; t, d and p do not depend
on the coding. ComBat (Johnson et al. 2007; Fortin et al. 2017) is applied to
the edges (or voxels) with diagnosis and the covariates preserved; network means
are then recomputed from the harmonized edges.

Everything written is a function of the release, the parameters and the seed:
``results.json`` carries no wall-clock time (timings go to ``timing.json``) so
two runs can be compared byte for byte.

References
----------
Yan C-G et al. (2019). Reduced default mode network functional connectivity in
patients with recurrent major depressive disorder. PNAS 116:9078-9083.
Johnson WE, Li C, Rabinovic A (2007). Adjusting batch effects in microarray
expression data using empirical Bayes methods. Biostatistics 8:118-127.
Fortin J-P et al. (2017). Harmonization of multi-site diffusion tensor imaging
data. NeuroImage 161:149-170.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from consortium.provenance import check_out_dir, jsonable, software_versions, staged_output

__all__ = ["AnalysisError", "CONTRASTS", "KINDS", "run_analysis"]

KINDS = ("dmn", "networks", "edges", "voxels")
CONTRASTS = ("all", "recurrent", "fedn", "fedn_vs_recurrent")
HARMONIZE = ("combat", "none")
DEFAULT_COVARIATES = ("age", "sex", "education_years", "mean_fd")
SCHEMA = "confed.analysis/1"
# Strongest edges drawn in the glass-brain connectome view.
N_STRONGEST_EDGES = 20
FDR_ALPHA = 0.05


class AnalysisError(ValueError):
    """The analysis cannot run on this dataset with these parameters."""


# --------------------------------------------------------------------------- design


@dataclass
class Design:
    """Subjects entering the model, their numeric design and what was dropped.

    ``rows`` are positions in ``dataset.subjects``; ``data`` has ``site``, ``dx``
    (+1 case, -1 control) and the numeric covariates, one row per entry of ``rows``.
    """

    rows: np.ndarray
    data: pd.DataFrame
    covariates: list[str]
    groups: dict[str, str]
    sample: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    sites_excluded: list[dict[str, Any]] = field(default_factory=list)
    covariates_dropped: list[dict[str, Any]] = field(default_factory=list)
    missing_covariate_exclusions: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def fixed(self) -> list[str]:
        return ["dx", *self.covariates]

    @property
    def n_case(self) -> int:
        return int((self.data["dx"] > 0).sum())

    @property
    def n_control(self) -> int:
        return int((self.data["dx"] < 0).sum())

    @property
    def sites(self) -> list[str]:
        return sorted(self.data["site"].unique().tolist())


# Names of the two sides of each contrast (the selection itself is
# consortium.analysis.dmn.CONTRASTS).
_GROUP_NAMES = {
    "all": ("{case}", "{control}"),
    "recurrent": ("recurrent {case}", "{control}"),
    "fedn": ("first-episode drug-naive {case}", "{control}"),
    "fedn_vs_recurrent": ("first-episode drug-naive {case}", "recurrent {case}"),
}


def _contrast_masks(
    subjects: pd.DataFrame, dx_labels: dict[str, str], contrast: str
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Boolean masks of the 'case' and 'control' sides of a contrast, and their names."""
    from consortium.analysis.dmn import contrast_sample

    labels = {"case": dx_labels["case"], "control": dx_labels["control"]}
    try:
        sample = contrast_sample(subjects.reset_index(drop=True), contrast, **labels)
    except KeyError as exc:
        raise AnalysisError(f"contrast {contrast!r}: {exc.args[0]}") from exc
    is_case = np.zeros(len(subjects), dtype=bool)
    is_control = np.zeros(len(subjects), dtype=bool)
    is_case[sample.index[sample["Dx"] > 0]] = True
    is_control[sample.index[sample["Dx"] < 0]] = True
    case_name, control_name = _GROUP_NAMES[contrast]
    return (
        is_case,
        is_control,
        {"case": case_name.format(**labels), "control": control_name.format(**labels)},
    )


def _encode_sex(values: pd.Series, sites: pd.Series) -> np.ndarray:
    """Sex coded as in the published analysis (consortium.analysis.dmn.SEX_CODES)."""
    from consortium.analysis.dmn import SEX_CODES

    sex = values.astype("string")
    bad = sex.notna() & ~sex.isin(list(SEX_CODES))
    if bad.any():
        i = bad.to_numpy().nonzero()[0][0]
        raise AnalysisError(
            f"site {sites.iloc[i]!r}: sex must be one of {sorted(SEX_CODES)}, found {sex.iloc[i]!r}"
        )
    return sex.map(SEX_CODES).astype(float).to_numpy()


def build_design(
    dataset: Any,
    contrast: str = "all",
    covariates: Sequence[str] = DEFAULT_COVARIATES,
    min_per_group: int = 10,
) -> Design:
    """Select the subjects of a contrast and build the numeric design.

    Missing covariates (docs/methods/analysis.md, "Missing covariates"): a
    covariate missing for every analysed subject of a site (or absent from
    the data) is dropped for all sites in this model, with a note; subjects
    with a missing value of a kept covariate are excluded from this model,
    with a note of the count per site. Sites with fewer than ``min_per_group``
    subjects in either group are then excluded (as in Yan et al. 2019) and listed.
    """
    if contrast not in CONTRASTS:
        raise AnalysisError(f"unknown contrast {contrast!r}; choose from {CONTRASTS}")
    subjects = dataset.subjects
    is_case, is_control, groups = _contrast_masks(subjects, dataset.dx_labels, contrast)
    keep = is_case | is_control
    notes: list[str] = []
    frame = pd.DataFrame({"site": subjects["site"].to_numpy()})
    frame["dx"] = np.where(is_case, 1.0, -1.0)
    kept_covariates: list[str] = []
    dropped: list[dict[str, Any]] = []
    for name in covariates:
        if name not in subjects.columns or subjects.loc[keep, name].isna().all():
            notes.append(f"covariate {name!r} is not in the data and was dropped")
            dropped.append({"covariate": name, "reason": "not in the data", "sites": []})
            continue
        absent = _sites_without(subjects[name], subjects["site"], keep)
        if absent:
            notes.append(
                f"covariate {name!r} is missing for every subject of site(s) "
                f"{', '.join(absent)} and was dropped for all sites in this model"
            )
            dropped.append(
                {"covariate": name, "reason": "missing for a whole site", "sites": absent}
            )
            continue
        if name == "sex":
            frame[name] = _encode_sex(subjects[name], subjects["site"])
        else:
            try:
                frame[name] = pd.to_numeric(subjects[name], errors="raise").astype(float)
            except (TypeError, ValueError) as exc:
                raise AnalysisError(f"covariate {name!r} is not numeric ({exc})") from exc
        kept_covariates.append(name)
    excluded_missing: dict[str, dict[str, int]] = {}
    for name in kept_covariates:
        missing = keep & frame[name].isna().to_numpy()
        if missing.any():
            per_site = frame.loc[missing, "site"].value_counts().sort_index()
            listed = ", ".join(f"{s}: {n}" for s, n in per_site.items())
            notes.append(f"{int(missing.sum())} subjects without {name!r} excluded ({listed})")
            excluded_missing[name] = {str(s): int(n) for s, n in per_site.items()}
            keep &= ~missing
    sample = _sample_table(subjects, frame, keep, groups)
    counts = sample.pivot_table(index="site", columns="group", values="n", fill_value=0)
    sites_excluded = []
    for site in counts.index:
        n_case = int(counts.loc[site].get(groups["case"], 0))
        n_control = int(counts.loc[site].get(groups["control"], 0))
        if min(n_case, n_control) < min_per_group:
            sites_excluded.append(
                {
                    "site": site,
                    "n_case": n_case,
                    "n_control": n_control,
                    "reason": f"fewer than {min_per_group} subjects in a group",
                }
            )
            keep &= (frame["site"] != site).to_numpy()
    sample["included"] = ~sample["site"].isin([s["site"] for s in sites_excluded])
    rows = np.flatnonzero(keep)
    data = frame.iloc[rows].reset_index(drop=True)
    for name in list(kept_covariates):
        if len(data) and data[name].nunique() < 2:
            notes.append(f"covariate {name!r} is constant in the analysed subjects and was dropped")
            kept_covariates.remove(name)
    design = Design(
        rows,
        data[["site", "dx", *kept_covariates]],
        kept_covariates,
        groups,
        sample,
        notes,
        sites_excluded,
        dropped,
        excluded_missing,
    )
    if design.n_case == 0 or design.n_control == 0 or len(design.sites) < 2:
        raise AnalysisError(
            f"contrast {contrast!r} leaves {design.n_case} {groups['case']} and "
            f"{design.n_control} {groups['control']} subjects at {len(design.sites)} site(s) "
            f"after the minimum of {min_per_group} per group and site; at least 2 sites with "
            "both groups are needed"
        )
    return design


def _sites_without(values: pd.Series, sites: pd.Series, keep: np.ndarray) -> list[str]:
    """Sites (among the kept subjects) where no subject has a value of the covariate."""
    present = values.notna().to_numpy()[keep]
    by_site = pd.Series(present).groupby(sites.to_numpy()[keep]).any()
    return sorted(str(site) for site, any_value in by_site.items() if not any_value)


def _sample_table(
    subjects: pd.DataFrame, frame: pd.DataFrame, keep: np.ndarray, groups: dict[str, str]
) -> pd.DataFrame:
    """Sample characteristics by site and group (subjects of the contrast)."""
    part = subjects.loc[keep].copy()
    part["group"] = np.where(frame.loc[keep, "dx"] > 0, groups["case"], groups["control"])
    records = []
    for (site, group), rows in part.groupby(["site", "group"], sort=True):
        record = {"site": site, "group": group, "n": len(rows)}
        if "age" in rows:
            record["age_mean"] = float(rows["age"].mean())
            record["age_sd"] = float(rows["age"].std(ddof=1)) if len(rows) > 1 else np.nan
        if "sex" in rows:
            record["female_pct"] = float((rows["sex"] == "F").mean() * 100)
        if "education_years" in rows and rows["education_years"].notna().any():
            record["education_mean"] = float(rows["education_years"].mean())
        if "mean_fd" in rows:
            record["mean_fd_mean"] = float(rows["mean_fd"].mean())
        records.append(record)
    return pd.DataFrame.from_records(records)


QC_SUMMARY_COLUMNS = ("site", "code", "field", "meaning", "n", "values", "threshold")


def _format_numbers(values: pd.Series, roi: bool) -> str:
    present = np.unique(values.dropna().to_numpy(dtype=float))
    if present.size == 0:
        return ""
    if roi:
        shown = ", ".join(f"{v:g}" for v in present[:6])
        return f"ROI {shown}" + (f" (+{present.size - 6} more)" if present.size > 6 else "")
    if present.size == 1:
        return f"{present[0]:.4g}"
    return f"{present[0]:.4g} to {present[-1]:.4g}"


def _qc_table(dataset: Any) -> pd.DataFrame:
    """Sites' QC exclusion reasons, counted by site, code and field.

    Rendered from the structured reasons (:data:`sites.contract.QC_CODES`):
    ``meaning`` is the code's text, ``n`` the number of subjects with the
    reason, ``values`` the range of offending values (or the ROI indices) and
    ``threshold`` the rule's bound(s). A subject with several reasons counts
    once per reason.
    """
    from sites.contract import QC_CODES

    reasons = getattr(dataset, "qc_reasons", None)
    if reasons is None or reasons.empty:
        return pd.DataFrame(
            {c: pd.Series(dtype="int64" if c == "n" else str) for c in QC_SUMMARY_COLUMNS}
        )
    records = []
    for (site, code, name), rows in reasons.groupby(["site", "code", "field"], sort=True):
        spec = QC_CODES.get(code)
        records.append(
            {
                "site": site,
                "code": code,
                "field": name,
                "meaning": spec.text if spec else "unknown code",
                "n": int(rows["subject_key"].nunique()),
                "values": _format_numbers(rows["value"], spec is not None and "ROI" in spec.value),
                "threshold": _format_numbers(rows["threshold"], False),
            }
        )
    return pd.DataFrame.from_records(records, columns=list(QC_SUMMARY_COLUMNS))


# ------------------------------------------------------------------- outcomes


def _combat_inputs(design: Design) -> tuple[np.ndarray, pd.DataFrame]:
    """Sites and preserved covariates (diagnosis and the model covariates) of ComBat."""
    return design.data["site"].to_numpy(), design.data[design.fixed].reset_index(drop=True)


def _harmonize(X: np.ndarray, design: Design) -> np.ndarray:
    """ComBat across sites, preserving diagnosis and the covariates."""
    from harmonization.combat import ComBat

    sites, covariates = _combat_inputs(design)
    model = ComBat()
    return np.asarray(model.fit_transform(np.asarray(X, dtype=np.float64), sites, covariates))


def _harmonize_lazy(X: Any, dataset: Any, design: Design, what: str) -> Any:
    """ComBat of a dask array chunked by features (``DaskComBat``), returned lazily.

    The fit reads ``X`` once; the harmonized array is computed chunk by chunk by
    whatever consumes it. Non-finite input is reported by site and subject.
    """
    import dask.array as da

    from harmonization.dask_combat import DaskComBat

    sites, covariates = _combat_inputs(design)
    model = DaskComBat()
    try:
        model.fit(X, sites, covariates)
    except ValueError:
        # Only on failure: one more pass to name the subject (ComBat names a row).
        _check_finite_rows(da.isfinite(X).all(axis=1).compute(), dataset, design, what)
        raise
    return model.transform(X, sites, covariates)


def _check_finite(values: np.ndarray, dataset: Any, design: Design, what: str) -> None:
    finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)
    _check_finite_rows(finite, dataset, design, what)


def _check_finite_rows(finite: np.ndarray, dataset: Any, design: Design, what: str) -> None:
    """AnalysisError naming the first subject whose row is not all finite."""
    finite = np.asarray(finite, dtype=bool)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        row = dataset.subjects.iloc[design.rows[i]]
        raise AnalysisError(
            f"site {row['site']!r}, subject {str(row['subject_key'])[:16]}: {what} has "
            f"non-finite values ({int((~finite).sum())} subjects in all)"
        )


def _atlas(dataset: Any, atlas_name: str):
    """The atlas definition the release carries (never a file on this machine)."""
    from consortium.dataset import DatasetError

    try:
        return dataset.atlas(atlas_name)
    except DatasetError as exc:
        raise AnalysisError(str(exc)) from exc


def _resolve_atlas(dataset: Any, atlas: str | None) -> str:
    from consortium.dataset import DatasetError

    try:
        return dataset.resolve_atlas(atlas)
    except DatasetError as exc:
        raise AnalysisError(str(exc)) from exc


def _edges(dataset: Any, design: Design, atlas: str) -> np.ndarray:
    edges = dataset.connectivity(atlas)[design.rows]
    _check_finite(edges, dataset, design, f"connectivity ({atlas})")
    return edges


def _summaries(dataset: Any, design: Design, atlas: str, harmonize: str) -> pd.DataFrame:
    """Network means, either as submitted or recomputed from harmonized edges."""
    if harmonize == "none":
        table = dataset.network_summaries(atlas).iloc[design.rows].reset_index(drop=True)
        _check_finite(table.to_numpy(), dataset, design, f"network summaries ({atlas})")
        return table
    from sites.connectivity import network_summaries

    edges = _harmonize(_edges(dataset, design, atlas), design)
    return network_summaries(edges, _atlas(dataset, atlas)).reset_index(drop=True)


# ------------------------------------------------------------------- models


def _d_and_ci(t: np.ndarray, n_case: int, n_control: int, df: float):
    from consortium.analysis import d_from_t

    return d_from_t(t, n_case, n_control, df)


def _fit_dmn(dataset: Any, y: np.ndarray, design: Design, contrast: str) -> dict[str, Any]:
    """REST-meta-MDD mixed model on one outcome (consortium.analysis.dmn_model)."""
    from consortium.analysis import dmn_model

    data = dataset.subjects.iloc[design.rows].reset_index(drop=True)
    data = data.assign(y=np.asarray(y, dtype=float))
    result = dmn_model(
        data,
        "y",
        dataset.dx_labels["case"],
        dataset.dx_labels["control"],
        covariates=design.covariates,
        site="site",
        contrast=contrast,
    )
    if (result.n_case, result.n_control) != (design.n_case, design.n_control):
        raise AnalysisError(
            f"the DMN model used {result.n_case}/{result.n_control} subjects, the design "
            f"{design.n_case}/{design.n_control}"
        )
    fit = result.fit
    table = pd.DataFrame(
        {
            "term": ["dx" if term == "Dx" else term for term in fit.params.index],
            "estimate": fit.params.to_numpy(float),
            "se": fit.bse.to_numpy(float),
            "t": fit.tvalues.to_numpy(float),
            "p": fit.pvalues.to_numpy(float),
        }
    )
    components = {("dx" if k == "Dx" else k): float(v) for k, v in fit.variance_components.items()}
    return {
        "n": result.n_case + result.n_control,
        "n_case": result.n_case,
        "n_control": result.n_control,
        "n_sites": int(result.n_sites),
        "df": float(result.df),
        "t": float(result.t),
        "p": float(result.pvalue),
        "d": float(result.d),
        "d_ci": [float(v) for v in result.d_ci],
        "d_se": float(result.d_se),
        "variance_components": components,
        "residual_variance": float(fit.scale),
        "llf": float(fit.llf),
        # The slope variance is on the boundary under H0: 50:50 mixture of chi2(0), chi2(1).
        "slope_lrt": {
            "statistic": float(result.slope_lrt),
            "p_mixture": float(result.slope_lrt_pvalue),
            "p_chi2_1": float(result.slope_lrt_pvalue_chi2),
            "llf_without_slope": float(result.fit_no_slope.llf),
        },
        "coefficients": table.to_dict(orient="records"),
    }


META_HARMONIZATION_NOTE = (
    "The site meta-analysis uses the unharmonized outcome: each site's OLS t is invariant "
    "to that site's own location and scale, so per-site estimates need no harmonization, "
    "and ComBat (which adjusts each site towards the pooled covariate effects) would shrink "
    "the between-site heterogeneity the meta-analysis is meant to show."
)


def _dropped_notes(per_site: pd.DataFrame) -> list[str]:
    """One note per site whose model left out covariates (constant or collinear there)."""
    return [
        f"site {row.site}: covariates left out of this site's model: {row.covariates_dropped}"
        for row in per_site.itertuples(index=False)
        if row.covariates_dropped
    ]


def _meta_analysis(y: np.ndarray, design: Design, min_per_group: int, out: Path) -> dict[str, Any]:
    """Per-site OLS t for Dx -> Hedges' g -> random-effects pooling, forest plot, LOSO.

    ``y`` must be the unharmonized outcome (see :data:`META_HARMONIZATION_NOTE`); each
    site's model has the design's covariates except those constant at that site
    (:func:`consortium.analysis.meta.site_effects`).

    References
    ----------
    Hedges LV (1981). J Educ Stat 6:107-128.
    Borenstein M, Hedges LV, Higgins JPT, Rothstein HR (2009). Introduction to
    Meta-Analysis. Wiley.
    """
    from consortium.analysis.meta import leave_one_out, random_effects, site_effects

    data = design.data.assign(y=np.asarray(y, dtype=float))
    per_site = site_effects(data, "y", "dx", "site", design.covariates, min_per_group=min_per_group)
    used = per_site[per_site["included"].astype(bool)].reset_index(drop=True)
    if len(used) < 2:
        raise AnalysisError(f"the site meta-analysis needs 2 usable sites, got {len(used)}")
    pooled = random_effects(used["yi"].to_numpy(), used["vi"].to_numpy(), method="REML")
    per_site.to_parquet(out / "site_effects.parquet", index=False)
    result = {
        "method": "REML",
        "outcome_harmonization": "none",
        "outcome_harmonization_reason": META_HARMONIZATION_NOTE,
        "covariates": list(design.covariates),
        "notes": _dropped_notes(per_site),
        "k": len(used),
        "estimate": float(pooled.estimate),
        "se": float(pooled.se),
        "ci": [float(pooled.ci_low), float(pooled.ci_high)],
        "p": float(pooled.pvalue),
        "tau2": float(pooled.tau2),
        "tau2_ci": [float(x) for x in pooled.tau2_ci],
        "q": float(pooled.q),
        "q_p": float(pooled.q_pvalue),
        "i2": float(pooled.i2),
        "h2": float(pooled.h2),
        "sites": per_site.to_dict(orient="records"),
        "leave_one_site_out": [],
    }
    if len(used) >= 3:
        loso = leave_one_out(
            used["yi"].to_numpy(),
            used["vi"].to_numpy(),
            labels=used["site"].tolist(),
            method="REML",
        )
        loso.to_parquet(out / "leave_one_site_out.parquet", index=False)
        result["leave_one_site_out"] = loso.to_dict(orient="records")
    _forest_figure(used, pooled, out)
    return result


def _forest_figure(used: pd.DataFrame, pooled: Any, out: Path) -> None:
    from consortium.analysis.forest import forest_plot

    with _deterministic_svg():
        fig = forest_plot(
            used["yi"].to_numpy(),
            used["vi"].to_numpy(),
            labels=used["site"].tolist(),
            result=pooled,
        )
        _save_figure(fig, out, "forest")


def _mass_fit(
    Y: Any, design: Design, random_slope: bool, progress: Any = None, chunk_size: int = 2048
) -> pd.DataFrame:
    """t, p and d for Dx of the mass-univariate model, one row per feature.

    ``Y`` is a numpy array or a dask array (fitted over its feature chunks of
    ``chunk_size``).
    """
    from consortium.analysis import mass_mixed_model

    slopes = ("dx",) if random_slope else ()
    lazy = hasattr(Y, "map_blocks")  # a dask array: fitted chunk by chunk, never gathered
    result = mass_mixed_model(
        Y if lazy else np.asarray(Y, dtype=np.float64),
        design.data,
        design.fixed,
        "site",
        random_slopes=slopes,
        reml=False,
        chunk_size=chunk_size,
        progress=progress,
    )
    t = result.tvalues["dx"].to_numpy(float)
    df = float(len(design.data) - len(design.fixed) - 1)
    d, ci_low, ci_high = _d_and_ci(t, design.n_case, design.n_control, df)
    return pd.DataFrame(
        {
            "beta": result.params["dx"].to_numpy(float),
            "se": result.bse["dx"].to_numpy(float),
            "t": t,
            "p": result.pvalues["dx"].to_numpy(float),
            "d": np.asarray(d, float),
            "d_ci_low": np.asarray(ci_low, float),
            "d_ci_high": np.asarray(ci_high, float),
        }
    )


def _fdr(p: np.ndarray) -> np.ndarray:
    from consortium.analysis.multiple import fdr_bh

    return np.asarray(fdr_bh(np.asarray(p, float)), float)


def _permutation_fwe(
    Y: np.ndarray,
    design: Design,
    random_slope: bool,
    permutations: int,
    seed: int,
    progress: Any = None,
) -> np.ndarray:
    """Family-wise p of each feature from the max |t| over within-site Dx permutations."""
    from consortium.analysis.multiple import maxstat_permutation

    slopes = ("dx",) if random_slope else ()
    result = maxstat_permutation(
        np.asarray(Y, dtype=np.float64),
        design.data,
        design.fixed,
        "site",
        term="dx",
        random_slopes=slopes,
        reml=False,
        n_permutations=permutations,
        seed=seed,
        progress=progress,
    )
    return np.asarray(result.p_fwe, float)


# ------------------------------------------------------------------- figures


@contextmanager
def _deterministic_svg():
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "confed", "svg.fonttype": "path"}):
        yield


def _save_figure(fig: Any, out: Path, stem: str, svg: bool = True) -> None:
    import matplotlib.pyplot as plt

    with _deterministic_svg():
        fig.savefig(out / f"{stem}.png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        if svg:
            fig.savefig(out / f"{stem}.svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)


def _network_matrix_figure(
    table: pd.DataFrame, value: str, title: str, out: Path, stem: str
) -> None:
    """Heatmap of a network x network effect (``table`` has net_a, net_b, value, q)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    nets = sorted(set(table["net_a"]) | set(table["net_b"]))
    index = {n: i for i, n in enumerate(nets)}
    matrix = np.full((len(nets), len(nets)), np.nan)
    significant = np.zeros_like(matrix, dtype=bool)
    for row in table.itertuples(index=False):
        i, j = index[row.net_a], index[row.net_b]
        matrix[i, j] = matrix[j, i] = getattr(row, value)
        significant[i, j] = significant[j, i] = bool(row.q < FDR_ALPHA)
    limit = float(np.nanmax(np.abs(matrix))) if np.isfinite(matrix).any() else 1.0
    size = 1.2 + 0.65 * len(nets)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_xticks(range(len(nets)), nets, rotation=45, ha="right")
    ax.set_yticks(range(len(nets)), nets)
    for i in range(len(nets)):
        for j in range(len(nets)):
            if np.isfinite(matrix[i, j]):
                mark = "*" if significant[i, j] else ""
                ax.text(j, i, f"{matrix[i, j]:.2f}{mark}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label=value)
    ax.set_title(title)
    _save_figure(fig, out, stem)


def _dmn_rois_figure(atlas: Any, out: Path) -> bool:
    if atlas.coords is None or atlas.dmn is None:
        return False
    import matplotlib.pyplot as plt
    from nilearn import plotting

    coords = atlas.coords[atlas.dmn]
    fig = plt.figure(figsize=(9, 3))
    plotting.plot_connectome(
        np.zeros((len(coords), len(coords))),
        coords,
        node_color="#c0392b",
        node_size=25,
        display_mode="lzr",
        colorbar=False,
        figure=fig,
        title=f"REST-meta-MDD DMN: {len(coords)} ROIs",
    )
    _save_figure(fig, out, "dmn_rois", svg=False)
    return True


def _strongest_edges_figure(atlas: Any, t: np.ndarray, out: Path) -> list[dict[str, Any]]:
    """Glass-brain view of the strongest edges by |t|; returns them as records."""
    rows, cols = np.triu_indices(atlas.n_rois, k=1)
    # Stable sort so that ties resolve identically on every run.
    order = np.argsort(-np.abs(t), kind="stable")[:N_STRONGEST_EDGES]
    records = [
        {
            "edge": int(e),
            "index_a": int(rows[e]) + 1,
            "index_b": int(cols[e]) + 1,
            "roi_a": atlas.labels[rows[e]],
            "roi_b": atlas.labels[cols[e]],
            "network_a": atlas.networks[rows[e]],
            "network_b": atlas.networks[cols[e]],
            "t": float(t[e]),
        }
        for e in order
    ]
    if atlas.coords is None:
        return records
    import matplotlib.pyplot as plt
    from nilearn import plotting

    nodes = sorted(set(rows[order]) | set(cols[order]))
    local = {n: i for i, n in enumerate(nodes)}
    adjacency = np.zeros((len(nodes), len(nodes)))
    for e in order:
        a, b = local[rows[e]], local[cols[e]]
        adjacency[a, b] = adjacency[b, a] = t[e]
    fig = plt.figure(figsize=(9, 3))
    limit = float(np.abs(adjacency).max()) or 1.0
    plotting.plot_connectome(
        adjacency,
        atlas.coords[nodes],
        edge_cmap="RdBu_r",
        edge_vmin=-limit,
        edge_vmax=limit,
        node_size=12,
        display_mode="lzr",
        colorbar=False,
        figure=fig,
        title=f"{len(order)} strongest edges (t)",
    )
    _save_figure(fig, out, "strongest_edges", svg=False)
    return records


def _voxel_figure(t_img: Any, threshold: float | None, out: Path) -> None:
    import matplotlib.pyplot as plt
    from nilearn import plotting

    fig = plt.figure(figsize=(9, 3.2))
    title = "t map" + (
        f", FDR q<{FDR_ALPHA} (|t|>{threshold:.2f})"
        if threshold
        else ", nothing survives FDR: unthresholded"
    )
    plotting.plot_glass_brain(
        t_img,
        threshold=threshold if threshold else None,
        colorbar=True,
        plot_abs=False,
        cmap="RdBu_r",
        display_mode="lzry",
        figure=fig,
        title=title,
    )
    _save_figure(fig, out, "voxel_map", svg=False)


# ------------------------------------------------------------------- kinds


def _net_pair_columns(table: pd.DataFrame) -> pd.DataFrame:
    pairs = [c for c in table.columns if "__" in c]
    return table[pairs]


def _run_dmn(dataset, design, params, out, steps) -> dict[str, Any]:
    atlas = params["atlas"]
    with steps("mean DMN FC"):
        summaries = {"none": _summaries(dataset, design, atlas, "none")}
        if "dmn_restmeta" not in summaries["none"].columns:
            raise AnalysisError(
                f"atlas {atlas!r} has no REST-meta-MDD DMN (no ROI has dmn = 1, so the "
                "bundles hold no 'dmn_restmeta' summary); the DMN analysis needs an "
                "atlas TSV with a dmn column shared by every site, see "
                "docs/site-data-manager/README.md#atlases"
            )
    if params["harmonize"] == "combat":
        with steps("ComBat on edges"):
            summaries["combat"] = _summaries(dataset, design, atlas, "combat")
    models = {}
    for harm, table in summaries.items():
        with steps(f"mixed model ({harm})"):
            models[harm] = _fit_dmn(
                dataset, table["dmn_restmeta"].to_numpy(), design, params["contrast"]
            )
    rows = [dict(r, harmonization=h) for h, m in models.items() for r in m["coefficients"]]
    pd.DataFrame.from_records(rows).to_parquet(out / "mixed_model.parquet", index=False)
    primary = params["harmonize"]
    with steps("site meta-analysis"):
        meta = _meta_analysis(
            summaries["none"]["dmn_restmeta"].to_numpy(), design, params["min_per_group"], out
        )
    figures = {"forest": {"png": "forest.png", "svg": "forest.svg"}}
    with steps("DMN glass brain"):
        if _dmn_rois_figure(_atlas(dataset, atlas), out):
            figures["dmn_rois"] = {"png": "dmn_rois.png"}
    return {
        "dmn": {"outcome": "dmn_restmeta", "primary": primary, "models": models},
        "meta": meta,
        "figures": figures,
    }


def _network_table(summaries: pd.DataFrame, design: Design, random_slope: bool) -> pd.DataFrame:
    pairs = _net_pair_columns(summaries)
    fit = _mass_fit(pairs.to_numpy(), design, random_slope)
    names = pd.Series(pairs.columns).str.split("__", n=1, expand=True)
    fit.insert(0, "net_b", names[1].to_numpy())
    fit.insert(0, "net_a", names[0].to_numpy())
    fit.insert(0, "pair", list(pairs.columns))
    fit["q"] = _fdr(fit["p"].to_numpy())
    return fit


def _run_networks(dataset, design, params, out, steps) -> dict[str, Any]:
    atlas = params["atlas"]
    harmonizations = ["none", "combat"] if params["harmonize"] == "combat" else ["none"]
    tables = []
    for harm in harmonizations:
        with steps(f"network means ({harm})"):
            summaries = _summaries(dataset, design, atlas, harm)
        with steps(f"mass mixed model ({harm})"):
            tables.append(
                _network_table(summaries, design, params["random_slope"]).assign(harmonization=harm)
            )
    table = pd.concat(tables, ignore_index=True)
    table.to_parquet(out / "network_effects.parquet", index=False)
    primary = table[table["harmonization"] == params["harmonize"]]
    with steps("network matrix figure"):
        _network_matrix_figure(
            primary, "d", f"Network effects: d ({params['harmonize']})", out, "network_matrix"
        )
    return {
        "networks": {
            "primary": params["harmonize"],
            "n_pairs": int(len(primary)),
            "n_fdr": int((primary["q"] < FDR_ALPHA).sum()),
            "effects": table.to_dict(orient="records"),
        },
        "figures": {"network_matrix": {"png": "network_matrix.png", "svg": "network_matrix.svg"}},
    }


def _edge_matrix(values: np.ndarray, labels: list[str]) -> pd.DataFrame:
    from consortium.analysis import edges_to_matrix

    return pd.DataFrame(edges_to_matrix(values), index=pd.Index(labels, name="roi"), columns=labels)


def _run_edges(dataset, design, params, out, steps) -> dict[str, Any]:
    atlas_name = params["atlas"]
    atlas = _atlas(dataset, atlas_name)
    with steps("connectivity"):
        Y = _edges(dataset, design, atlas_name)
        if Y.shape[1] != atlas.n_edges:
            raise AnalysisError(
                f"connectivity has {Y.shape[1]} edges but atlas {atlas_name!r} has {atlas.n_edges}"
            )
    if params["harmonize"] == "combat":
        with steps("ComBat on edges"):
            Y = _harmonize(Y, design)
    with steps(f"mass mixed model ({Y.shape[1]} edges)") as advance:
        fit = _mass_fit(Y, design, params["random_slope"], progress=advance)
        fit["q"] = _fdr(fit["p"].to_numpy())
    if params["permutations"] > 0:
        with steps(f"{params['permutations']} max-t permutations") as advance:
            fit["p_fwe"] = _permutation_fwe(
                Y, design, params["random_slope"], params["permutations"], params["seed"], advance
            )
    rows, cols = np.triu_indices(atlas.n_rois, k=1)
    nets = np.asarray(atlas.networks)
    fit.insert(0, "network_b", nets[cols])
    fit.insert(0, "network_a", nets[rows])
    fit.insert(0, "roi_b", np.asarray(atlas.labels)[cols])
    fit.insert(0, "roi_a", np.asarray(atlas.labels)[rows])
    fit.insert(0, "edge", np.arange(len(fit)))
    fit.to_parquet(out / "edge_effects.parquet", index=False)
    _edge_matrix(fit["t"].to_numpy(), atlas.labels).to_parquet(out / "edge_t_matrix.parquet")
    _edge_matrix(fit["d"].to_numpy(), atlas.labels).to_parquet(out / "edge_d_matrix.parquet")
    with steps("network blocks and figures"):
        blocks = _block_summary(fit, atlas)
        blocks.to_parquet(out / "network_blocks.parquet", index=False)
        figures = {}
        if len(blocks) > 1:
            _network_matrix_figure(
                blocks.rename(columns={"mean_d": "d"}),
                "d",
                "Mean edge d per network block",
                out,
                "edge_blocks",
            )
            figures["edge_blocks"] = {"png": "edge_blocks.png", "svg": "edge_blocks.svg"}
        strongest = _strongest_edges_figure(atlas, fit["t"].to_numpy(), out)
        if (out / "strongest_edges.png").exists():
            figures["strongest_edges"] = {"png": "strongest_edges.png"}
        if _dmn_rois_figure(atlas, out):
            figures["dmn_rois"] = {"png": "dmn_rois.png"}
    summary = {
        "n_edges": int(len(fit)),
        "n_fdr": int((fit["q"] < FDR_ALPHA).sum()),
        "max_abs_t": float(np.abs(fit["t"]).max()),
        "strongest": strongest,
        "blocks": blocks.to_dict(orient="records"),
    }
    if "p_fwe" in fit:
        summary["n_fwe"] = int((fit["p_fwe"] < 0.05).sum())
    return {"edges": summary, "figures": figures}


def _block_summary(fit: pd.DataFrame, atlas: Any) -> pd.DataFrame:
    """Mean edge effect within and between networks (a network-block summary)."""
    from sites.connectivity import network_pairs

    records = []
    for name, index in network_pairs(atlas).items():
        net_a, net_b = name.split("__", 1)
        block = fit.iloc[index]
        records.append(
            {
                "pair": name,
                "net_a": net_a,
                "net_b": net_b,
                "n_edges": len(index),
                "mean_t": float(block["t"].mean()),
                "mean_d": float(block["d"].mean()),
                "n_fdr": int((block["q"] < FDR_ALPHA).sum()),
                "q": float(block["q"].min()),
            }
        )
    return pd.DataFrame.from_records(records)


def _run_voxels(dataset, design, params, out, steps) -> dict[str, Any]:
    import nibabel as nib

    metric = params["metric"] or _default_metric(dataset)
    params["metric"] = metric
    chunk = int(params["chunk_voxels"])
    mask_img, data = dataset.maps(metric, chunk_voxels=chunk)
    data = data[design.rows]
    n_voxels = data.shape[1]
    starts = list(range(0, n_voxels, chunk))
    if params["harmonize"] == "combat":
        # Two passes over the maps, chunks of voxels: ComBat's fit, then the
        # harmonized chunks straight into the mass model.
        data = data.astype(np.float64).rechunk({0: -1, 1: chunk})
        with steps(f"ComBat on {n_voxels} voxels"):
            source = _harmonize_lazy(data, dataset, design, f"map {metric!r}")
        with steps(f"mass mixed model ({n_voxels} voxels)"):
            fit = _mass_fit(source, design, params["random_slope"], chunk_size=chunk)
    else:
        fits = []
        with steps(f"mass mixed model ({n_voxels} voxels)", total=len(starts)) as advance:
            for start in starts:
                block = np.asarray(data[:, start : start + chunk].compute())
                _check_finite(block, dataset, design, f"map {metric!r}")
                fits.append(_mass_fit(block, design, params["random_slope"]))
                advance()
        fit = pd.concat(fits, ignore_index=True)
    fit["q"] = _fdr(fit["p"].to_numpy())
    fit.insert(0, "voxel", np.arange(len(fit)))
    fit.to_parquet(out / "voxel_effects.parquet", index=False)
    mask = np.asarray(mask_img.dataobj) != 0

    def to_img(values: np.ndarray):
        volume = np.zeros(mask.shape, dtype=np.float32)
        volume[mask] = values
        return nib.Nifti1Image(volume, mask_img.affine)

    t = fit["t"].to_numpy()
    significant = fit["q"].to_numpy() < FDR_ALPHA
    threshold = float(np.abs(t[significant]).min()) if significant.any() else None
    to_img(t).to_filename(out / "t_map.nii.gz")
    to_img(fit["d"].to_numpy()).to_filename(out / "d_map.nii.gz")
    to_img(np.where(significant, t, 0.0)).to_filename(
        out / f"t_map_fdr{int(FDR_ALPHA * 100):02d}.nii.gz"
    )
    mask_img.to_filename(out / "mask.nii.gz")
    with steps("voxel map figure"):
        _voxel_figure(to_img(t), threshold, out)
    peak = int(np.argmax(np.abs(t)))
    peak_ijk = np.argwhere(mask)[peak]
    peak_mm = nib.affines.apply_affine(mask_img.affine, peak_ijk)
    return {
        "voxels": {
            "metric": metric,
            "n_voxels": int(n_voxels),
            "n_fdr": int(significant.sum()),
            "fdr_threshold_abs_t": threshold,
            "peak_t": float(t[peak]),
            "peak_d": float(fit["d"].iloc[peak]),
            "peak_mni": [float(v) for v in peak_mm],
            "maps": {
                "t": "t_map.nii.gz",
                "d": "d_map.nii.gz",
                "t_fdr": f"t_map_fdr{int(FDR_ALPHA * 100):02d}.nii.gz",
                "mask": "mask.nii.gz",
            },
        },
        "figures": {"voxel_map": {"png": "voxel_map.png"}},
    }


def _default_metric(dataset: Any) -> str:
    names = dataset.map_names
    if not names:
        raise AnalysisError("the release has no voxel maps common to all sites")
    return names[0]


_RUNNERS = {"dmn": _run_dmn, "networks": _run_networks, "edges": _run_edges, "voxels": _run_voxels}


# ------------------------------------------------------------------- output


class _Steps:
    """Named steps shown as rich progress bars (or silently), timed for timing.json."""

    def __init__(self, kind: str, enabled: bool) -> None:
        self.timings: dict[str, float] = {}
        self._progress = None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn(f"[bold]{kind}[/bold] {{task.description}}"),
                BarColumn(),
                TimeElapsedColumn(),
                transient=False,
            )

    def __enter__(self) -> _Steps:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    @contextmanager
    def __call__(self, description: str, total: int = 1):
        start = time.perf_counter()
        task = None
        if self._progress is not None:
            task = self._progress.add_task(description, total=total)

        current = {"total": total}

        def advance(done: int | None = None, total_now: int | None = None) -> None:
            """Advance by one, or set progress to ``done`` of ``total_now``."""
            if task is None:
                return
            if done is None:
                self._progress.advance(task)
                return
            current["total"] = total_now or current["total"]
            self._progress.update(task, completed=done, total=current["total"])

        yield advance
        if task is not None:
            self._progress.update(task, completed=current["total"], total=current["total"])
        self.timings[description] = round(time.perf_counter() - start, 3)


def _provenance(dataset: Any, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "release_name": dataset.release_name,
        "release_hash": dataset.release_hash,
        "bundle_hashes": dataset.bundle_hashes,
        "atlas_sha256": _atlas_hash(dataset, params.get("atlas")),
        "software": software_versions(),
        "parameters": params,
        "seed": params["seed"],
    }


def _atlas_hash(dataset: Any, atlas: str | None) -> str | None:
    """SHA-256 of the atlas definition the analysis used (all sites share it), if any."""
    hashes = getattr(dataset, "atlas_hashes", None)
    if atlas is None or not callable(hashes) or atlas not in getattr(dataset, "atlases", []):
        return None
    return next(iter(hashes(atlas).values()), None)


def run_analysis(
    dataset: Any,
    kind: str,
    out_dir: str | Path,
    *,
    harmonize: str = "combat",
    contrast: str = "all",
    atlas: str | None = None,
    covariates: Sequence[str] = DEFAULT_COVARIATES,
    min_per_group: int = 10,
    permutations: int = 0,
    seed: int = 0,
    progress: bool = True,
    metric: str | None = None,
    random_slope: bool = True,
    chunk_voxels: int = 5000,
    overwrite: bool = False,
) -> Path:
    """Run one consortium analysis and write its results directory.

    Parameters
    ----------
    dataset : consortium.dataset.Dataset
        The release (``consortium.releases.open_release``) or bundles
        (``Dataset.from_bundles``) to analyse.
    kind : {"dmn", "networks", "edges", "voxels"}
        Which analysis; see the module docstring.
    out_dir : path
        Results directory. It is written to a temporary sibling and renamed into
        place only when complete, so a failed run leaves nothing half-written.
    harmonize : {"combat", "none"}
        ComBat before the model (preserving diagnosis and covariates). For
        ``dmn`` and ``networks`` the unharmonized model is always fitted too.
    contrast : {"all", "recurrent", "fedn", "fedn_vs_recurrent"}
        All cases vs controls, recurrent cases vs controls, first-episode
        drug-naive cases vs controls, or first-episode drug-naive vs recurrent.
    atlas : str or None
        Name of the atlas of the connectivity (``dmn``, ``networks``, ``edges``);
        by default the release's only atlas. Its definition is read from the
        release (:meth:`consortium.dataset.Dataset.atlas`).
    covariates : sequence of str
        Canonical phenotype columns; those absent from the data are dropped
        with a note in ``results.json``.
    min_per_group : int
        Sites with fewer subjects in either group are excluded (default 10).
    permutations : int
        Max-statistic permutations of Dx within site (``edges``); 0 for none.
    seed : int
        Seed of the permutations; recorded.
    progress : bool
        Show rich progress bars on stderr.
    metric : str or None
        Voxel map (``voxels``); the first common map by default.
    random_slope : bool
        Include the uncorrelated site random slope for Dx in the mass models.
    chunk_voxels : int
        Voxels per streamed chunk (``voxels``).
    overwrite : bool
        Replace an existing non-empty ``out_dir``.

    Returns
    -------
    Path
        ``out_dir``.
    """
    if kind not in KINDS:
        raise AnalysisError(f"unknown analysis kind {kind!r}; choose from {KINDS}")
    if harmonize not in HARMONIZE:
        raise AnalysisError(f"unknown harmonization {harmonize!r}; choose from {HARMONIZE}")
    if permutations < 0:
        raise AnalysisError("permutations must be >= 0")
    out_dir = Path(out_dir)
    if kind in ("dmn", "networks", "edges"):
        atlas = _resolve_atlas(dataset, atlas)
    params = {
        "kind": kind,
        "harmonize": harmonize,
        "contrast": contrast,
        "atlas": atlas,
        "covariates": list(covariates),
        "min_per_group": int(min_per_group),
        "permutations": int(permutations),
        "seed": int(seed),
        "metric": metric,
        "random_slope": bool(random_slope),
        "chunk_voxels": int(chunk_voxels),
        "fdr_alpha": FDR_ALPHA,
    }
    design = build_design(dataset, contrast, covariates, min_per_group)
    check_out_dir(out_dir, overwrite)
    with staged_output(out_dir) as tmp:
        with _Steps(kind, progress) as steps:
            results = _RUNNERS[kind](dataset, design, params, tmp, steps)
        _write_common(dataset, design, params, results, tmp)
        (tmp / "timing.json").write_text(json.dumps(steps.timings, indent=2) + "\n")
    return out_dir


def _write_common(
    dataset: Any, design: Design, params: dict[str, Any], results: dict[str, Any], out: Path
) -> None:
    design.sample.to_parquet(out / "sample.parquet", index=False)
    qc = _qc_table(dataset)
    qc.to_parquet(out / "qc_exclusions.parquet", index=False)
    figures = results.pop("figures", {})
    slope = params["kind"] == "dmn" or params["random_slope"]
    document = {
        "schema": SCHEMA,
        "kind": params["kind"],
        "contrast": params["contrast"],
        "groups": design.groups,
        "design": {
            "n": len(design.data),
            "n_case": design.n_case,
            "n_control": design.n_control,
            "sites": design.sites,
            "sites_excluded": design.sites_excluded,
            "fixed": design.fixed,
            "covariates": design.covariates,
            "covariates_dropped": design.covariates_dropped,
            "subjects_excluded_missing_covariate": design.missing_covariate_exclusions,
            "dx_coding": {design.groups["case"]: 1, design.groups["control"]: -1},
            "model": "y ~ "
            + " + ".join(design.fixed)
            + " + (1|site)"
            + (" + (0 + dx|site)" if slope else "")
            + ", ML",
            "notes": design.notes,
        },
        "sample": design.sample.to_dict(orient="records"),
        "qc": {
            "n_excluded": int((~dataset.qc["included"].astype(bool)).sum()),
            "n_subjects_total": int(len(dataset.qc)),
            "by_site_reason": qc.to_dict(orient="records"),
        },
        **results,
        "figures": figures,
        "provenance": _provenance(dataset, params),
    }
    text = json.dumps(jsonable(document), indent=2, sort_keys=False, allow_nan=False)
    (out / "results.json").write_text(text + "\n")
