"""The site agent: from a site's local derivatives to a signed bundle.

:func:`compute` reads the phenotype table, every subject's ROI time series
(or BOLD image, or precomputed connectivity matrix: :mod:`sites.matrices`),
head motion and voxel maps as the site config describes, applies quality
control, pseudonymizes, and writes the bundle atomically.
Problems that concern one subject's data quality become recorded QC
exclusions; problems that mean the site's files or config are wrong (an
unreadable file, a wrong column count, a time series file of a subject absent
from the phenotype table, a map on another grid) stop the run with an error
naming the file and subject, and leave no bundle behind.

QC reasons enter the bundle as codes (:mod:`sites.contract`); the same reasons
with subject IDs and file paths go to a local log next to the bundle
(:func:`sites.qc.local_log_path`), which stays at the site.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sites import contract
from sites.atlas import BUILTIN_ATLASES, Atlas, load_atlas
from sites.bundle import write_bundle
from sites.config import ConfigError, ConnectivityConfig, SiteConfig
from sites.connectivity import fisher_z_connectivity, network_summaries
from sites.formats import InputFormat, input_format
from sites.keys import load_private_key
from sites.maps import standardized_maps
from sites.matrices import MatrixError, StackedMatrices, matrix_edges, read_matrix, read_stacked
from sites.motion import mean_fd, mean_fd_from_confounds, read_realignment
from sites.phenotypes import Phenotypes, check_code_maps, load_phenotypes
from sites.pseudonym import load_secret, subject_key
from sites.qc import (
    Reason,
    local_log_path,
    phenotype_problems,
    qc_tables,
    rules_note,
    rules_run,
    timeseries_problems,
    write_local_log,
)

SUBJECT_FIELD = "{subject_id}"


class AgentError(ValueError):
    """A site input that stops the computation (message names file and subject)."""


class TooFewIncluded(AgentError):
    """Fewer subjects than ``[qc] min_included`` passed QC: no bundle is written."""


@dataclass
class _Source:
    config: ConnectivityConfig
    atlas: Atlas
    edges: dict[str, np.ndarray] = field(default_factory=dict)
    stack: StackedMatrices | None = None  # source = "matrix" with a subject_list
    kinds: dict[str, str] = field(default_factory=dict)  # matrix kind -> first file seen

    @property
    def format(self) -> InputFormat:
        """How this entry's files are read (:mod:`sites.formats`)."""
        return input_format(self.config.source)


def software_version() -> str:
    try:
        return importlib_metadata.version("confed")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _subject_path(config: SiteConfig, pattern: str, subject: str) -> Path:
    return config.resolve(pattern.replace(SUBJECT_FIELD, subject))


def _check_reverse(config: SiteConfig, pattern: str, subjects: set[str], table: Path) -> None:
    """Every file matching ``pattern`` must belong to a subject of the table."""
    if SUBJECT_FIELD not in pattern:
        raise ConfigError(f"pattern {pattern!r} lacks {SUBJECT_FIELD}")
    full = re.escape(str(config.resolve(pattern)))
    placeholder = re.escape(SUBJECT_FIELD)
    regex = re.compile(
        full.replace(placeholder, r"(?P<id>[^/]+)", 1).replace(placeholder, r"(?P=id)") + "$"
    )
    wildcard = glob.escape(str(config.resolve(pattern))).replace(SUBJECT_FIELD, "*")
    for path in sorted(glob.glob(wildcard)):
        match = regex.match(path)
        if match and match.group("id") not in subjects:
            raise AgentError(
                f"{path}: subject '{match.group('id')}' has a file but no row in {table}"
            )


def _load_atlas(config: SiteConfig, name: str) -> Atlas:
    if name in BUILTIN_ATLASES:
        return load_atlas(name)
    return load_atlas(config.resolve(name))


def _timeseries(config: SiteConfig, source: _Source, subject: str) -> tuple[np.ndarray, Path]:
    """One subject's time series, read by the entry's input format."""
    path = _subject_path(config, source.config.pattern, subject)
    return source.format.reader(path, source.config, source.atlas, config), path


def _subject_fd(
    config: SiteConfig, phen: pd.DataFrame, subject: str
) -> tuple[float, Reason | None]:
    motion = config.motion
    if motion.source == "phenotype":
        return float(phen.at[subject, "mean_fd"]), None
    if motion.source == "none":
        return float("nan"), None
    path = _subject_path(config, motion.pattern or "", subject)
    if not path.exists():
        return float("nan"), Reason("motion_missing", "mean_fd", detail=f"no motion file {path}")
    if motion.source == "confounds":
        definition = None if motion.definition == "power" else motion.definition
        return mean_fd_from_confounds(path, definition=definition), None
    return mean_fd(read_realignment(path), motion.definition), None


def _check_config(config: SiteConfig, phen: Phenotypes) -> None:
    labels = set(config.phenotypes.values.get("dx", {}).values())
    for role in ("dx_case", "dx_control"):
        label = getattr(config.phenotypes, role)
        if labels and label not in labels:
            raise ConfigError(
                f"phenotypes.{role} = {label!r} is not a value of phenotypes.values.dx"
            )
    if config.motion.source == "phenotype" and "mean_fd" not in phen.table.columns:
        raise ConfigError("motion.source = 'phenotype' but no column is mapped to 'mean_fd'")


def check_out_dir(out_dir: Path, overwrite: bool) -> bool:
    """Refuse an existing, non-empty output folder unless ``overwrite``.

    Returns whether the folder exists (empty, or to be replaced), so the
    writer may replace it.
    """
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: exists and is not a folder; choose another --out")
    if any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out_dir}: already exists and is not empty; choose another --out, or pass "
            "--overwrite to replace it"
        )
    return True


def _check_included(config: SiteConfig, included: list[str]) -> None:
    minimum = config.qc.min_included
    if len(included) < minimum:
        raise TooFewIncluded(
            f"site {config.site_id}: {len(included)} subject(s) included after QC, fewer than "
            f"[qc] min_included = {minimum}; no bundle written (see the QC reasons above "
            "or run with fewer exclusions)"
        )


def _select(phen: Phenotypes, subjects: list[str] | None, path: Path) -> pd.DataFrame:
    if subjects is None:
        return phen.table
    unknown = [s for s in subjects if s not in phen.table.index]
    if unknown:
        raise AgentError(f"{path}: subject(s) {unknown[:5]} not in the phenotype table")
    return phen.table.loc[list(subjects)]


def compute(
    config: SiteConfig,
    out_dir: str | Path,
    *,
    subjects: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Compute a site's bundle.

    Parameters
    ----------
    config : SiteConfig
        The site configuration (:func:`sites.config.load_config`).
    out_dir : path
        Bundle directory to write.
    subjects : list of str, optional
        Restrict to these subject IDs of the phenotype table (files of other
        subjects are then not checked).
    overwrite : bool
        Replace an existing bundle directory.
    progress : bool
        Show rich progress bars.

    Returns
    -------
    Path
        The bundle directory. The local QC log (subject IDs, file paths) is
        written next to it, at :func:`sites.qc.local_log_path` of the bundle.
    """
    out_dir = Path(out_dir)
    replace = check_out_dir(out_dir, overwrite)
    private_key = load_private_key(config.resolve_key(config.keys.private_key))
    secret = load_secret(config.resolve_key(config.keys.secret))
    table_path = config.resolve(config.phenotypes.path)
    phen = load_phenotypes(config.phenotypes, table_path)
    _check_config(config, phen)
    if not config.phenotypes.accept_unmapped_codes:
        groups = (config.phenotypes.dx_case, config.phenotypes.dx_control)
        check_code_maps(phen, groups, table_path)
    table = _select(phen, subjects, table_path)
    ids = table.index.tolist()
    sources = [_Source(c, _load_atlas(config, c.atlas)) for c in config.connectivity]
    if len({s.atlas.name for s in sources}) != len(sources):
        raise ConfigError("two connectivity entries use the same atlas name")
    for source in sources:
        _load_stack(config, source, set(ids) if subjects is None else None, table_path)
    if subjects is None:
        for source in sources:
            if source.stack is None:
                _check_reverse(config, source.config.pattern, set(ids), table_path)

    reasons = {s: list(phen.problems.get(s, [])) for s in ids}
    fds = np.full(len(ids), np.nan)
    with _progress(progress) as bars:
        task = bars.add_task("subjects", total=len(ids))
        for i, subject in enumerate(ids):
            fds[i] = _process_subject(config, table, subject, sources, reasons[subject])
            bars.advance(task)
        for m in config.maps:
            for subject in ids:
                path = _subject_path(config, m.pattern, subject)
                if not path.exists():
                    text = f"missing {m.metric} map: expected {path}"
                    reasons[subject].append(Reason("missing_map", m.metric, detail=text))
        included = [s for s in ids if not reasons[s]]
        _check_included(config, included)
        maps = {}
        for m in config.maps:
            task = bars.add_task(f"map {m.metric}", total=1)
            paths = [_subject_path(config, m.pattern, s) for s in included]
            mask = config.resolve(m.mask) if m.mask else None
            maps[m.metric] = standardized_maps(paths, mask, m.coverage, m.method)
            bars.advance(task)

    keys = [subject_key(secret, config.site_id, s) for s in ids]
    key_of = dict(zip(ids, keys, strict=True))
    subjects_out = table.loc[included].copy()
    subjects_out["mean_fd"] = fds[[ids.index(s) for s in included]]
    subjects_out.insert(0, "subject_key", [key_of[s] for s in included])
    subjects_out = subjects_out.reset_index(drop=True)
    connectivity = {
        s.atlas.name: np.stack([s.edges[x] for x in included]).astype(np.float32)
        if included
        else np.zeros((0, s.atlas.n_edges), np.float32)
        for s in sources
    }
    networks = {
        s.atlas.name: network_summaries(connectivity[s.atlas.name], s.atlas) for s in sources
    }
    qc, qc_reasons = qc_tables(keys, [reasons[s] for s in ids], fds)
    bundle = write_bundle(
        out_dir,
        site_id=config.site_id,
        subjects=subjects_out,
        qc=qc,
        qc_reasons=qc_reasons,
        connectivity=connectivity,
        networks=networks,
        maps=maps,
        metadata=_metadata(config, sources),
        private_key=private_key,
        overwrite=replace,
        atlases={s.atlas.name: s.atlas for s in sources},
    )
    note = rules_note({s.atlas.name: s.config.source for s in sources})
    write_local_log(local_log_path(bundle), ids, keys, [reasons[s] for s in ids], note)
    return bundle


def _process_subject(
    config: SiteConfig,
    table: pd.DataFrame,
    subject: str,
    sources: list[_Source],
    reasons: list[Reason],
) -> float:
    """Read one subject's data; append QC reasons; keep FC when clean. Returns mean FD."""
    try:
        fd, fd_problem = _subject_fd(config, table, subject)
    except ValueError as exc:
        raise AgentError(f"subject '{subject}': {exc}") from exc
    if fd_problem:
        reasons.append(fd_problem)
    age = float(table.at[subject, "age"])
    reasons.extend(phenotype_problems(age, fd, config.qc, config.motion.source != "none"))
    for source in sources:
        if source.format.precomputed:
            _matrix_subject(config, source, subject, reasons)
            continue
        path = _subject_path(config, source.config.pattern, subject)
        if not path.exists():
            text = f"missing time series ({source.atlas.name}): expected {path}"
            reasons.append(Reason("missing_timeseries", source.atlas.name, detail=text))
            continue
        try:
            ts, path = _timeseries(config, source, subject)
        except ValueError as exc:
            raise AgentError(f"subject '{subject}': {exc}") from exc
        problems = timeseries_problems(ts, source.atlas, config.qc, str(path))
        if problems:
            reasons.extend(problems)
            continue
        edges = fisher_z_connectivity(ts)
        if not np.isfinite(edges).all():
            text = f"non-finite connectivity ({source.atlas.name}; {path})"
            reasons.append(Reason("non_finite_connectivity", source.atlas.name, detail=text))
            continue
        source.edges[subject] = edges
    return fd


def _load_stack(
    config: SiteConfig, source: _Source, subjects: set[str] | None, table: Path
) -> None:
    """Read a stacked matrix file; every listed subject must be in the table."""
    cfg = source.config
    if cfg.source != "matrix" or cfg.subject_list is None:
        return
    try:
        source.stack = read_stacked(
            config.resolve(cfg.pattern), config.resolve(cfg.subject_list), cfg.subject_column
        )
    except MatrixError as exc:
        raise AgentError(str(exc)) from exc
    unknown = [s for s in source.stack.index if subjects is not None and s not in subjects]
    if unknown:
        raise AgentError(
            f"{source.stack.subject_list}: subject '{unknown[0]}' has a matrix in "
            f"{source.stack.path} but no row in {table}"
        )


def _subject_matrix(
    config: SiteConfig, source: _Source, subject: str
) -> tuple[np.ndarray | None, str]:
    """One subject's matrix (None when absent) and where it is, for messages."""
    stack = source.stack
    if stack is not None:
        if subject not in stack.index:
            return None, f"not listed in {stack.subject_list}"
        return stack.matrices[stack.index[subject]], stack.where(subject)
    path = _subject_path(config, source.config.pattern, subject)
    if not path.exists():
        return None, f"expected {path}"
    return read_matrix(path, source.config.kind), str(path)


def _matrix_subject(
    config: SiteConfig, source: _Source, subject: str, reasons: list[Reason]
) -> None:
    """Check one subject's precomputed matrix; keep its edges or append a QC reason."""
    name = source.atlas.name
    try:
        matrix, where = _subject_matrix(config, source, subject)
        if matrix is None:
            text = f"missing connectivity matrix ({name}): {where}"
            reasons.append(Reason("missing_timeseries", name, detail=text))
            return
        edges, kind = matrix_edges(
            matrix,
            source.atlas.n_rois,
            kind=source.config.kind,
            columns=source.config.columns,
            where=where,
        )
    except MatrixError as exc:
        raise AgentError(f"subject '{subject}': {exc}") from exc
    source.kinds.setdefault(kind, where)
    if len(source.kinds) > 1:
        other = next(k for k in source.kinds if k != kind)
        raise AgentError(
            f"subject '{subject}': {where} looks like {kind} but {source.kinds[other]} "
            f'looked like {other}; set kind = "fisher_z" or "correlation" in '
            f"[[connectivity]] atlas = {source.config.atlas!r}"
        )
    if not np.isfinite(edges).all():
        text = f"non-finite connectivity ({name}; {where})"
        reasons.append(Reason("non_finite_connectivity", name, detail=text))
        return
    source.edges[subject] = edges


def _matrix_kind(source: _Source) -> str | None:
    """Declared or guessed kind of a matrix source's files (None for other inputs)."""
    if not source.format.precomputed:
        return None
    return source.config.kind or next(iter(source.kinds), None)


def _metadata(config: SiteConfig, sources: list[_Source]) -> dict:
    return {
        "software": {"name": "confed", "version": software_version()},
        "dx_labels": {"case": config.phenotypes.dx_case, "control": config.phenotypes.dx_control},
        "connectivity": {
            s.atlas.name: {
                "n_rois": s.atlas.n_rois,
                "labels": s.atlas.labels,
                "networks": s.atlas.networks,
                "source": s.config.source,
                "columns": s.config.columns,
                "radius_mm": s.config.radius_mm if s.config.source == "bold" else None,
                "matrix_kind": _matrix_kind(s),
                "measure": "fisher_z_pearson_upper_triangle",
            }
            for s in sources
        },
        "motion": {"source": config.motion.source, "fd_definition": config.motion.definition},
        "qc_rules": {
            **config.qc.model_dump(),
            **rules_run({s.atlas.name: s.config.source for s in sources}, bool(config.maps)),
        },
        "maps": {
            m.metric: {
                "method": m.method,
                "mask": "given" if m.mask else "coverage",
                "coverage": m.coverage,
            }
            for m in config.maps
        },
        "pseudonymization": contract.PSEUDONYMIZATION,
        "phenotype_columns": sorted(
            set(config.phenotypes.columns.values()) - {"subject_id"}
            | set(config.phenotypes.allow)
            | {"mean_fd"}
        ),
    }


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=False,
    )
