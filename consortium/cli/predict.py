"""`confed predict run`: site-aware classification (leave-site-out CV, in-fold harmonization).

The data come from a coordinator release (``--release NAME --root DIR [--db URL]``),
from bundle directories (``--bundles DIR``, repeatable; a folder of bundles
counts as all of them) or from an ABIDE Preprocessed folder read in place
(``--data DIR``: one folder per site with ``participants.csv`` and ``.1D``
time series).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


class FeatureKind(StrEnum):
    edges = "edges"
    networks = "networks"
    maps = "maps"


class Tuning(StrEnum):
    nested = "nested"
    fixed = "fixed"


class NanPolicy(StrEnum):
    error = "error"
    zero = "zero"


def _bundle_paths(paths: list[Path]) -> list[Path]:
    """Bundle directories/archives; a folder without a manifest stands for its bundles."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir() and not (path / "manifest.json").exists():
            inner = sorted(
                p for p in path.iterdir() if (p / "manifest.json").exists() or p.suffix == ".tar"
            )
            if not inner:
                raise typer.BadParameter(f"{path}: neither a bundle nor a folder of bundles")
            out.extend(inner)
        else:
            out.append(path)
    return out


def _features(release, root, db, bundles, data, kind, atlas, metric, nan):
    from consortium.analysis.prediction import features_from_abide, features_from_dataset

    given = [bool(release), bool(bundles), data is not None]
    if sum(given) != 1:
        raise typer.BadParameter("give exactly one of --release (with --root), --bundles, --data")
    if data is not None:
        if kind != FeatureKind.edges:
            raise typer.BadParameter("--data (ABIDE layout) gives connectivity edges only")
        return features_from_abide(data, atlas=atlas or "ho111", nan=nan.value)
    if bundles:
        from consortium.dataset import Dataset
        from sites.bundle import read_bundle

        dataset = Dataset.from_bundles([read_bundle(p) for p in _bundle_paths(bundles)])
    else:
        if root is None:
            raise typer.BadParameter("--release needs --root DIR (the coordinator root)")
        from consortium.releases import open_release

        dataset = open_release(root, release, db)
    return features_from_dataset(dataset, kind.value, atlas=atlas, metric=metric, nan=nan.value)


def _harmonizer_options(name: str, ref_site: str | None) -> dict:
    """Options of the ``--harmonize`` harmonizer; an unknown name is a usage error."""
    from harmonization.registry import harmonizer_names

    if name not in harmonizer_names():
        raise typer.BadParameter(
            f"unknown harmonizer {name!r}; choose one of: {', '.join(harmonizer_names())}",
            param_hint="--harmonize",
        )
    return {} if ref_site is None else {"ref_site": ref_site}


def _parse_grid(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"--grid must be comma-separated numbers, got {text!r}") from exc


def _print_summary(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"prediction of {doc['data']['dx_labels']['case']} vs "
        f"{doc['data']['dx_labels']['control']} "
        f"({doc['data']['n_subjects']} subjects, {doc['data']['n_sites']} sites)"
    )
    for col in ("scheme", "model", "accuracy", "balanced acc.", "AUC", "sens.", "spec.", "p"):
        table.add_column(col)
    for row in doc["summary"]:

        def fmt(v):
            return "-" if v is None else f"{v:.3f}"

        table.add_row(
            row["scheme"],
            row["model"],
            fmt(row["accuracy"]),
            fmt(row["balanced_accuracy"]),
            fmt(row["auc"]),
            fmt(row["sensitivity"]),
            fmt(row["specificity"]),
            fmt(row["p_accuracy"]),
        )
    Console().print(table)


@app.command("run")
def run_command(
    out: Path = typer.Option(..., "--out", help="Results folder (prediction.json, plots)."),
    release: str = typer.Option(None, "--release", help="Release name."),
    root: Path = typer.Option(None, "--root", help="Coordinator root (with --release)."),
    db: str = typer.Option(None, "--db", help="Database URL (default: the root's settings)."),
    bundles: list[Path] = typer.Option(None, "--bundles", help="Bundle dir/archive (repeat)."),
    data: Path = typer.Option(None, "--data", help="ABIDE Preprocessed folder (site folders)."),
    features: FeatureKind = typer.Option(FeatureKind.edges, "--features"),
    atlas: str = typer.Option(None, "--atlas", help="Atlas (default: the only one)."),
    metric: str = typer.Option(None, "--metric", help="Map metric for --features maps."),
    scheme: list[str] = typer.Option(
        ["leave-one-site-out", "stratified-kfold"],
        "--scheme",
        help="leave-one-site-out, grouped-kfold, stratified-kfold (repeat).",
    ),
    model: list[str] = typer.Option(
        ["logistic", "svm"],
        "--model",
        help="logistic, svm, ridge or a scikit-learn classifier class name (repeat).",
    ),
    grid: str = typer.Option("0.001,0.01,0.1,1", "--grid", help="C values of the nested search."),
    folds: int = typer.Option(10, "--folds", help="Folds of the K-fold schemes."),
    inner_folds: int = typer.Option(5, "--inner-folds", help="Site-grouped inner folds."),
    harmonize: str = typer.Option(
        "combat",
        "--harmonize",
        help="Harmonizer fitted in each training fold: any registered name "
        "(none, combat, combat-gam, combat-ref, ...).",
    ),
    ref_site: str = typer.Option(None, "--ref-site", help="Reference site of combat-ref."),
    covariate: list[str] = typer.Option(
        None, "--covariate", help="Phenotype column appended to the features (repeat)."
    ),
    subject_standardize: bool = typer.Option(False, "--subject-standardize"),
    permutations: int = typer.Option(0, "--permutations", help="Within-site permutations."),
    permutation_tuning: Tuning = typer.Option(Tuning.nested, "--permutation-tuning"),
    seed: int = typer.Option(0, "--seed"),
    n_jobs: int = typer.Option(1, "--n-jobs", help="Outer folds in parallel."),
    nan: NanPolicy = typer.Option(
        None,
        "--nan",
        help="Non-finite features: error, or set to 0 (default: error; zero "
        "for --data, where ABIDE ROIs without signal are expected).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Cross-validated case/control classification with whole sites held out."""
    from consortium.analysis.prediction import PredictionConfig, run_prediction
    from consortium.dataset import DatasetError
    from consortium.errors import ConfedError
    from sites.bundle import BundleError

    options = _harmonizer_options(harmonize, ref_site)
    if nan is None:
        nan = NanPolicy.zero if data is not None else NanPolicy.error
    config = PredictionConfig(
        schemes=list(scheme),
        models=list(model),
        grid=_parse_grid(grid),
        n_folds=folds,
        inner_folds=inner_folds,
        harmonize=harmonize,
        harmonize_options=options,
        feature_covariates=list(covariate or []),
        subject_standardize=subject_standardize,
        n_permutations=permutations,
        permutation_tuning=permutation_tuning.value,
        seed=seed,
        n_jobs=n_jobs,
    )
    try:
        feats = _features(release, root, db, bundles, data, features, atlas, metric, nan)
        doc = run_prediction(feats, out, config, overwrite=overwrite)
    except (
        BundleError,
        ConfedError,
        DatasetError,
        ValueError,
        KeyError,
        FileExistsError,
        FileNotFoundError,
        LookupError,
    ) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    _print_summary(doc)
    typer.echo(f"results written to {out} ({doc['runtime_s']} s)")
