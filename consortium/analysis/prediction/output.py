"""Results of a prediction run: ``prediction.json``, ``predictions.csv`` and the site plot."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from consortium.analysis.cv import METRICS
from consortium.provenance import check_out_dir, jsonable, software_versions, staged_output

from .config import PredictionConfig
from .crossval import cross_validate
from .features import Features

__all__ = ["RESULT_FORMAT", "plot_site_scores", "run_prediction"]

RESULT_FORMAT = "confed.prediction/1"


def _data_summary(features: Features) -> dict[str, Any]:
    subjects = features.subjects
    per_site = {
        str(site): {
            "n": int(len(g)),
            "n_case": int(g["y"].sum()),
            "n_control": int((g["y"] == 0).sum()),
        }
        for site, g in subjects.groupby("site", sort=True)
    }
    return {
        **features.source,
        "kind": features.kind,
        "n_subjects": int(len(subjects)),
        "n_case": int(subjects["y"].sum()),
        "n_control": int((subjects["y"] == 0).sum()),
        "n_features": int(features.X.shape[1]),
        "n_sites": len(per_site),
        "dx_labels": features.dx_labels,
        "sites": per_site,
        "notes": features.notes,
    }


def _summary_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        row = {
            "scheme": r["scheme"],
            "model": r["model"],
            **{m: r["pooled"][m] for m in METRICS},
            "fold_mean_accuracy": r["fold_mean"]["accuracy"],
            "fold_sd_accuracy": r["fold_sd"]["accuracy"],
        }
        perm = r.get("permutation")
        row["p_accuracy"] = perm["accuracy"]["p_value"] if perm else None
        row["p_balanced_accuracy"] = perm["balanced_accuracy"]["p_value"] if perm else None
        rows.append(row)
    return rows


def _site_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per scheme x model x site (the data of the per-site plot)."""
    return [
        {"scheme": r["scheme"], "model": r["model"], "site": site, **metrics}
        for r in results
        for site, metrics in r["sites"].items()
    ]


def _gaps(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Random-fold minus site-held-out accuracy, per model: the optimism of random folds."""
    acc = {(r["scheme"], r["model"]): r["pooled"]["accuracy"] for r in results}
    out: dict[str, dict[str, float]] = {}
    for (scheme, model), value in acc.items():
        if scheme == "stratified-kfold":
            continue
        random = acc.get(("stratified-kfold", model))
        if random is not None:
            out.setdefault(model, {})[f"stratified-kfold_minus_{scheme}"] = random - value
    return out


def plot_site_scores(results: list[dict[str, Any]], path: Path, metric: str = "accuracy") -> None:
    """Per-site scores, one panel per scheme, one bar per model; chance at 0.5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schemes = list(dict.fromkeys(r["scheme"] for r in results))
    models = list(dict.fromkeys(r["model"] for r in results))
    sites = sorted(results[0]["sites"])
    height = 0.8 / len(models)
    fig, axes = plt.subplots(
        1,
        len(schemes),
        figsize=(4.2 * len(schemes), 0.28 * len(sites) + 1.6),
        sharey=True,
        squeeze=False,
    )
    for ax, scheme in zip(axes[0], schemes, strict=True):
        for m, model in enumerate(models):
            r = next(x for x in results if x["scheme"] == scheme and x["model"] == model)
            values = [r["sites"][s][metric] or np.nan for s in sites]
            ax.barh(
                np.arange(len(sites)) + m * height,
                values,
                height=height,
                label=f"{model} (pooled {r['pooled'][metric]:.3f})",
            )
        ax.axvline(0.5, color="k", lw=0.8, ls="--")
        ax.set_xlim(0, 1)
        ax.set_title(scheme, fontsize=10)
        ax.set_xlabel(metric.replace("_", " "))
        ax.legend(fontsize=7, loc="lower right")
    labels = [f"{s} (n={results[0]['sites'][s]['n']})" for s in sites]
    axes[0][0].set_yticks(np.arange(len(sites)) + 0.4 - height / 2, labels, fontsize=7)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def _predictions_table(features: Features, results: list[dict[str, Any]]) -> pd.DataFrame:
    blocks = []
    for r in results:
        oof = r["_oof"]
        blocks.append(
            pd.DataFrame(
                {
                    "scheme": r["scheme"],
                    "model": r["model"],
                    "subject_key": features.subjects["subject_key"].to_numpy(),
                    "site": features.sites,
                    "y_true": features.y,
                    "fold": oof["fold"],
                    "y_pred": oof["pred"],
                    "score": oof["score"],
                }
            )
        )
    return pd.concat(blocks, ignore_index=True)


def run_prediction(
    features: Features,
    out_dir: str | Path,
    config: PredictionConfig | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Cross-validate, then write ``prediction.json``, ``predictions.csv`` and the site plot.

    The folder is written in a temporary sibling and moved into place when
    complete, so a failed run leaves no partial results.

    Returns
    -------
    dict
        The content of ``prediction.json``.
    """
    config = config or PredictionConfig()
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    start = time.perf_counter()
    results = cross_validate(features, config)
    with staged_output(out_dir) as tmp:
        _predictions_table(features, results).to_csv(tmp / "predictions.csv", index=False)
        plot_site_scores(results, tmp / "prediction_sites.png")
        doc = {
            "format": RESULT_FORMAT,
            "data": _data_summary(features),
            "config": asdict(config),
            "summary": _summary_rows(results),
            "gap": _gaps(results),
            "per_site": _site_rows(results),
            "results": [{k: v for k, v in r.items() if k != "_oof"} for r in results],
            "figures": {"per_site": "prediction_sites.png"},
            "files": {"predictions": "predictions.csv"},
            "seed": config.seed,
            "software": software_versions(),
            "runtime_s": round(time.perf_counter() - start, 2),
        }
        doc = jsonable(doc)
        (tmp / "prediction.json").write_text(json.dumps(doc, indent=2))
    return doc
