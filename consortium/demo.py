"""Run a whole consortium on one machine, over the real code paths.

:func:`run_demo` is what ``confed demo`` does. Every party runs as it would in
production, only on loopback:

1. *Data*: :mod:`consortium.simulate` writes each simulated hospital's files
   (or, with ``data=DIR``, real per-site folders laid out like the ABIDE PCP
   release are described in place).
2. *Coordinator*: ``confed coord init`` makes a root with an SQLite database
   under ``out/coordinator`` (in its own process, while the site files are
   written), and ``confed coord serve`` runs as a separate process on a free
   loopback port.
3. *Sites*: ``confed site init`` makes each site's keys and config (the
   command's function, called in this process); the coordinator operator
   registers each public key over the HTTP API with the admin token (what
   ``confed coord site add`` does on the coordinator host) and hands the site
   its token. Each site then runs ``confed site compute`` and
   ``confed site submit`` in its own process (``python -m consortium.demo
   site ...``), several sites at once, largest first.
4. *Release and analyses*: the release is created over the API (as
   ``confed coord release create``);
   :func:`consortium.analysis.pipeline.run_analysis` runs the DMN mixed model
   (with and without ComBat) and site meta-analysis, the network means, every
   edge and every voxel on :func:`consortium.releases.open_release`; and
   :func:`consortium.report.render_report` writes one HTML page.

Timings of every stage, the planted and recovered effect sizes and the QC
exclusions go to ``out/summary.json`` and are printed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from consortium.simulate import ConsortiumSimulator, SignalModel, to_toml

MARKER = ".confed-demo"
RELEASE = "demo-1"
ABIDE_DX = {"1": "ASD", "2": "TDC"}


class DemoError(RuntimeError):
    """A stage of the demo failed; the message names the stage, site and log file."""


@dataclass
class DemoSite:
    """One participating site: its folder, config and, later, bundle."""

    site_id: str
    name: str
    directory: Path
    config: Path
    data_config: dict[str, Any]
    n_subjects: int = 0
    bundle: Path = field(init=False)

    def __post_init__(self) -> None:
        self.bundle = self.directory / "bundle"


@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    out: Path
    report: Path
    summary: dict[str, Any]


@dataclass(frozen=True)
class RealDataOptions:
    """How to read a folder of real sites laid out like ``abide-pcp-ho111``.

    Each site is a sub-folder with a phenotype table and one time series file
    per subject. Defaults are those of the ABIDE PCP release.
    """

    atlas: str = "ho111"
    phenotypes: str = "participants.csv"
    pattern: str = "{subject_id}_rois_ho.1D.gz"
    subject_column: str = "FILE_ID"
    dx_column: str = "DX_GROUP"
    dx_values: dict[str, str] = field(default_factory=lambda: dict(ABIDE_DX))
    dx_case: str = "ASD"
    dx_control: str = "TDC"
    age_column: str = "AGE_AT_SCAN"
    sex_column: str = "SEX"
    sex_values: dict[str, str] = field(default_factory=lambda: {"1": "M", "2": "F"})
    fd_column: str | None = "func_mean_fd"
    sites: tuple[str, ...] | None = None
    max_subjects: int | None = None


# ---------------------------------------------------------------- processes


def confed_command(*args: str) -> list[str]:
    """The ``confed`` command line, run with this interpreter."""
    return [sys.executable, "-m", "consortium.cli.main", *args]


def _run(args: list[str], log: Path, what: str, timeout: float = 600) -> str:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        log.write_text(f"$ {' '.join(args)}\n(timed out after {timeout} s)\n")
        raise DemoError(f"{what}: timed out after {timeout:.0f} s (log: {log})") from exc
    log.write_text(f"$ {' '.join(args)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise DemoError(f"{what} failed (exit {proc.returncode}): {' / '.join(tail)} (log: {log})")
    return proc.stdout


def _run_all(
    jobs: Sequence[tuple[str, list[str], Path]],
    what: str,
    workers: int,
    advance: Callable[[], None],
) -> dict[str, str]:
    """Run ``(key, args, log)`` commands concurrently; fail on the first error."""
    outputs: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {
            pool.submit(_run, args, log, f"{what} of site {key}"): key for key, args, log in jobs
        }
        for future in as_completed(futures):
            outputs[futures[future]] = future.result()
            advance()
    return outputs


def _start(args: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _finish(proc: subprocess.Popen, log: Path, what: str, timeout: float = 300) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        raise DemoError(f"{what}: timed out after {timeout:.0f} s") from exc
    log.write_text(f"$ {' '.join(proc.args)}\n{output}")
    if proc.returncode != 0:
        tail = " / ".join(output.strip().splitlines()[-3:])
        raise DemoError(f"{what} failed (exit {proc.returncode}): {tail} (log: {log})")
    return output


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CoordinatorServer:
    """``confed coord serve`` in its own process on a free loopback port.

    :meth:`start` launches the process without waiting for it, :meth:`wait_ready`
    blocks until ``/api/v1/health`` answers and :meth:`stop` ends it (SIGINT, then
    SIGKILL after 15 s). As a context manager, the object stops the server on exit.
    """

    def __init__(self, root: Path, log: Path, timeout: float = 90) -> None:
        self.root, self.log, self.timeout = root, log, timeout
        self.url = ""
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> CoordinatorServer:
        return self

    def start(self) -> str:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as handle:
            self.proc = subprocess.Popen(
                confed_command("coord", "serve", "--root", str(self.root), "--port", str(port)),
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self.url

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoError(
                    f"coordinator exited with code {self.proc.returncode} (log: {self.log})"
                )
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise DemoError(
            f"coordinator did not answer on {self.url} within {self.timeout:.0f} s "
            f"(log: {self.log})"
        )

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------- stages


class _Stages:
    """Times stages and shows one progress bar per stage (rich)."""

    def __init__(self, show: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.timings: dict[str, float] = {}
        self.progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not show,
        )

    def __enter__(self) -> _Stages:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    @contextmanager
    def stage(self, name: str, total: int = 1) -> Iterator[Callable[[], None]]:
        task = self.progress.add_task(name, total=total)
        start = time.perf_counter()
        yield lambda: self.progress.advance(task)
        self.timings[name] = round(time.perf_counter() - start, 2)
        self.progress.update(task, completed=total)


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise DemoError(f"{out} exists and is not empty (and is not an earlier demo's output)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("output of `confed demo`; safe to delete\n")


def _simulate(
    out: Path,
    n_sites: int | None,
    subjects_scale: float,
    effect_size: float,
    seed: int,
    jobs: int,
    stages: _Stages,
) -> tuple[list[DemoSite], ConsortiumSimulator]:
    model = SignalModel(effect_size=effect_size)
    sim = ConsortiumSimulator(
        n_sites=n_sites, subjects_scale=subjects_scale, model=model, seed=seed
    )
    design = sim.simulate_design()
    sim.calibrate()
    with stages.stage("simulate site files", total=design["site_id"].nunique()) as advance:
        # Worker processes pay off only when there is much to write.
        n_jobs = jobs if len(design) > 400 else 1
        simulated = sim.write(out / "sites", progress=lambda *_: advance(), n_jobs=n_jobs)
    sites = [
        DemoSite(
            s.site_id,
            f"Simulated hospital {s.site_id}",
            s.directory,
            s.directory / "site.toml",
            s.data_config,
            n_subjects=len(s.subjects),
        )
        for s in simulated
    ]
    return sites, sim


def _real_sites(data: Path, out: Path, options: RealDataOptions) -> list[DemoSite]:
    """Describe each real site folder with a site config (and a subset, if asked)."""
    if not data.is_dir():
        raise DemoError(f"--data {data}: not a folder")
    folders = sorted(p for p in data.iterdir() if (p / options.phenotypes).is_file())
    if options.sites:
        missing = sorted(set(options.sites) - {p.name for p in folders})
        if missing:
            raise DemoError(f"--data {data}: no site folder(s) {missing} with {options.phenotypes}")
        folders = [p for p in folders if p.name in options.sites]
    if not folders:
        raise DemoError(f"--data {data}: no sub-folder holds a {options.phenotypes}")
    return [_real_site(folder, out / "sites" / folder.name, options) for folder in folders]


def _real_site(folder: Path, site_dir: Path, options: RealDataOptions) -> DemoSite:
    table_path = folder / options.phenotypes
    table = pd.read_csv(table_path, dtype=str)
    for column in (
        options.subject_column,
        options.dx_column,
        options.age_column,
        options.sex_column,
        options.fd_column,
    ):
        if column is not None and column not in table.columns:
            raise DemoError(f"{table_path}: no column {column!r}")
    site_dir.mkdir(parents=True)
    pattern = str(folder / options.pattern)
    if options.max_subjects is not None:
        # A subset: the site's own table restricted to a few subjects per group, and
        # links to their files (the agent refuses files without a table row).
        table = table.groupby(options.dx_column).head(options.max_subjects)
        (site_dir / "timeseries").mkdir()
        for subject in table[options.subject_column]:
            source = Path(pattern.replace("{subject_id}", subject))
            if not source.is_file():
                raise DemoError(f"{table_path}: subject {subject} has no file {source}")
            (site_dir / "timeseries" / source.name).symlink_to(source)
        table_path = site_dir / options.phenotypes
        table.to_csv(table_path, index=False)
        pattern = str(site_dir / "timeseries" / options.pattern)
    columns = {
        options.subject_column: "subject_id",
        options.dx_column: "dx",
        options.age_column: "age",
        options.sex_column: "sex",
    }
    if options.fd_column:
        columns[options.fd_column] = "mean_fd"
    data_config = {
        "phenotypes": {
            "path": str(table_path),
            "dx_case": options.dx_case,
            "dx_control": options.dx_control,
            "columns": columns,
            "values": {"dx": dict(options.dx_values), "sex": dict(options.sex_values)},
        },
        "connectivity": [{"atlas": options.atlas, "source": "timeseries", "pattern": pattern}],
        "motion": {"source": "phenotype" if options.fd_column else "none"},
    }
    return DemoSite(
        folder.name,
        f"{folder.name} ({folder})",
        site_dir,
        site_dir / "site.toml",
        data_config,
        n_subjects=len(table),
    )


def _init_site(site: DemoSite, log: Path) -> None:
    """``confed site init`` for one site (the command's own function, in this process)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from consortium.cli.main import app

    buffer = io.StringIO()
    args = ["site", "init", "--site-id", site.site_id, "--out", str(site.config)]
    with redirect_stdout(buffer), redirect_stderr(buffer):
        code = app(args, standalone_mode=False)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ confed {' '.join(args)}\n{buffer.getvalue()}")
    if code:
        raise DemoError(f"confed site init of site {site.site_id} failed (log: {log})")


def _configure_site(site: DemoSite, token: str) -> None:
    """Complete the config made by ``confed site init`` with the site's data sections."""
    import tomllib

    token_file = site.directory / "keys" / "coordinator.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    current = tomllib.loads(site.config.read_text())
    text = to_toml({"site_id": current["site_id"], "keys": current["keys"], **site.data_config})
    tmp = site.config.with_name(site.config.name + ".tmp")
    tmp.write_text("# made by `confed site init`, completed by `confed demo`\n" + text)
    tmp.replace(site.config)


def _register(site: DemoSite, url: str, admin_token: str) -> None:
    """Register the site's public key over the API (admin) and give it its token."""
    public_key = (site.directory / "keys" / "site_ed25519.pub.pem").read_text()
    created = _api(
        "POST",
        f"{url}/api/v1/sites",
        admin_token,
        f"registering site {site.site_id}",
        json={"id": site.site_id, "name": site.name, "public_key_pem": public_key},
    )
    _configure_site(site, created["token"])


def _api(method: str, url: str, token: str, what: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = httpx.request(
            method, url, headers={"Authorization": f"Bearer {token}"}, timeout=120, **kwargs
        )
    except httpx.HTTPError as exc:
        raise DemoError(f"{what}: cannot reach the coordinator ({exc})") from exc
    if response.status_code >= 400:
        raise DemoError(
            f"{what}: coordinator answered {response.status_code}: {response.text[:300]}"
        )
    return response.json()


def _token_of(output: str, what: str) -> str:
    for line in output.splitlines():
        if "token" in line and ":" in line:
            return line.rsplit(":", 1)[1].strip()
    raise DemoError(f"{what}: no token in the output of the command")


# ---------------------------------------------------------------- the demo


def run_demo(
    out: str | Path = "demo-output",
    n_sites: int | None = None,
    effect_size: float = -0.2,
    seed: int = 0,
    subjects_scale: float = 1.0,
    data: str | Path | None = None,
    real: RealDataOptions | None = None,
    min_per_group: int = 10,
    jobs: int | None = None,
    voxels: bool = True,
    progress: bool = True,
) -> DemoResult:
    """Run a consortium end to end; see the module docstring.

    Parameters
    ----------
    out : path
        Output folder (sites, coordinator root, analyses, report, logs). An
        earlier demo output there is replaced; any other non-empty folder is
        refused.
    n_sites : int or None
        Simulated sites (largest REST-meta-MDD sites first); ``None``: all 17.
    effect_size : float
        Planted standardized difference of mean DMN FC (MDD minus controls).
    seed : int
        Seed of the simulation.
    subjects_scale : float
        Multiplies the published group sizes.
    data : path or None
        A folder of real sites (like ``abide-pcp-ho111``) instead of simulated ones.
    real : RealDataOptions or None
        Atlas, columns and diagnosis mapping of ``data`` (ABIDE defaults).
    min_per_group : int
        Sites with fewer cases or controls are left out of the analyses.
    jobs : int or None
        Site processes run at once (default: number of CPUs, at least 2).
    voxels : bool
        Run the voxel-wise analysis when the bundles hold maps.
    progress : bool
        Show progress bars on stderr.
    """
    out = Path(out).resolve()
    _prepare_out(out)
    logs = out / "logs"
    jobs = jobs or max(2, os.cpu_count() or 2)
    summary: dict[str, Any] = {"mode": "real data" if data else "simulated"}
    wall = time.perf_counter()
    root = out / "coordinator"
    with _Stages(progress) as stages:
        # The coordinator initializes in its own process while the sites' files are made.
        init = _start(
            confed_command(
                "coord", "init", "--root", str(root), "--min-per-group", str(min_per_group)
            ),
            logs / "coord-init.log",
        )
        sim = None
        if data is None:
            sites, sim = _simulate(out, n_sites, subjects_scale, effect_size, seed, jobs, stages)
        else:
            with stages.stage("describe real site folders"):
                data = Path(data).expanduser().resolve()  # relative to the caller's folder
                sites = _real_sites(data, out, real or RealDataOptions())
        with CoordinatorServer(root, logs / "coord-serve.log") as server:
            with stages.stage(
                "site keys, coordinator start, registration", total=len(sites)
            ) as advance:
                admin = _token_of(
                    _finish(init, logs / "coord-init.log", "confed coord init"), "confed coord init"
                )
                server.start()
                for site in sites:
                    _init_site(site, logs / f"{site.site_id}-init.log")
                server.wait_ready()
                for site in sites:
                    _register(site, server.url, admin)
                    advance()
            summary["sites_without_bundle"] = _sites_run(sites, server.url, logs, jobs, stages)
            with stages.stage("create release"):
                release = _api(
                    "POST",
                    f"{server.url}/api/v1/releases",
                    admin,
                    "creating the release",
                    json={"name": RELEASE},
                )
            summary["release"] = {"name": release["name"], "hash": release.get("release_hash")}
        analyses = _analyses(out, root, sim is not None, voxels, min_per_group, seed, stages)
        with stages.stage("render report"):
            from consortium.report import render_report

            title = (
                "confed demo: simulated consortium"
                if sim is not None
                else f"confed demo: real data from {data}"
            )
            report = render_report(list(analyses.values()), out / "report.html", title=title)
    summary.update(
        _summarize(out, sites, analyses, sim, stages.timings, time.perf_counter() - wall, report)
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return DemoResult(out=out, report=report, summary=summary)


#: Printed by a site process whose subjects all failed QC (it submits nothing).
NOTHING_SUBMITTED = "no subject passed QC: nothing submitted"


def _sites_run(
    sites: list[DemoSite], url: str, logs: Path, jobs: int, stages: _Stages
) -> list[str]:
    """Every site computes its bundle and submits it, each in its own process.

    Returns the sites that submitted nothing because no subject passed QC.
    """
    with stages.stage("sites compute and submit", total=len(sites)) as advance:
        outputs = _run_all(
            [
                (
                    s.site_id,
                    [
                        sys.executable,
                        "-m",
                        "consortium.demo",
                        "site",
                        str(s.config),
                        str(s.bundle),
                        url,
                        str(s.directory / "keys" / "coordinator.token"),
                    ],
                    logs / f"{s.site_id}-compute-submit.log",
                )
                # Largest sites first, so that the last one to finish is a small one.
                for s in sorted(sites, key=lambda s: -s.n_subjects)
            ],
            "confed site compute + submit",
            jobs,
            advance,
        )
    return sorted(site for site, text in outputs.items() if NOTHING_SUBMITTED in text)


def site_main(config: str, bundle: str, url: str, token_file: str) -> int:
    """What one hospital runs: ``confed site compute`` then ``confed site submit``."""
    from consortium.cli.main import app

    steps = (
        ["site", "compute", "--config", config, "--out", bundle, "--quiet"],
        ["site", "submit", bundle, "--config", config, "--url", url, "--token-file", token_file],
    )
    from sites.cli import EXIT_TOO_FEW_INCLUDED

    for args in steps:
        print(f"$ confed {' '.join(args)}", flush=True)
        code = app(args, standalone_mode=False)
        if code == EXIT_TOO_FEW_INCLUDED and args[1] == "compute":
            print(NOTHING_SUBMITTED, flush=True)
            return 0
        if code:
            return int(code)
    return 0


def _analyses(
    out: Path,
    root: Path,
    simulated: bool,
    voxels: bool,
    min_per_group: int,
    seed: int,
    stages: _Stages,
) -> dict[str, Path]:
    from consortium.analysis.pipeline import run_analysis
    from consortium.releases import open_release

    dataset = open_release(root, RELEASE)
    atlas = dataset.atlases[0]
    kinds = ["dmn", "networks", "edges"] if simulated else ["edges"]
    if voxels and dataset.map_names:
        kinds.append("voxels")
    results: dict[str, Path] = {}
    with stages.stage("analyses (" + ", ".join(kinds) + ")", total=len(kinds)) as advance:
        for kind in kinds:
            results[kind] = run_analysis(
                dataset,
                kind,
                out / "analysis" / kind,
                harmonize="combat",
                atlas=atlas,
                min_per_group=min_per_group,
                seed=seed,
                progress=False,
                metric=dataset.map_names[0] if kind == "voxels" else None,
            )
            advance()
    return results


def _summarize(
    out: Path,
    sites: list[DemoSite],
    analyses: dict[str, Path],
    sim: ConsortiumSimulator | None,
    timings: dict[str, float],
    wall: float,
    report: Path,
) -> dict[str, Any]:
    first = json.loads((next(iter(analyses.values())) / "results.json").read_text())
    summary: dict[str, Any] = {
        "sites": len(sites),
        "subjects_in_site_files": sum(s.n_subjects for s in sites),
        "qc_excluded": first["qc"]["n_excluded"],
        "qc_by_site_reason": first["qc"]["by_site_reason"],
        "analysed": {
            "n": first["design"]["n"],
            "n_case": first["design"]["n_case"],
            "n_control": first["design"]["n_control"],
            "sites": len(first["design"]["sites"]),
            "sites_excluded": first["design"]["sites_excluded"],
        },
        "timings_s": timings,
        "total_s": round(wall, 1),
        "report": str(report),
        "analyses": {k: str(v) for k, v in analyses.items()},
    }
    if "dmn" in analyses:
        dmn = json.loads((analyses["dmn"] / "results.json").read_text())
        recovered = {}
        for harm, model in dmn["dmn"]["models"].items():
            low, high = model["d_ci"]
            recovered[harm] = {"d": model["d"], "ci": [low, high], "p": model["p"]}
            if sim is not None:
                planted = sim.model.effect_size
                recovered[harm]["planted_within_ci"] = bool(low <= planted <= high)
        summary["dmn"] = recovered
        summary["meta_analysis"] = {k: dmn["meta"][k] for k in ("estimate", "ci", "p", "k")}
    if sim is not None:
        summary["planted_d"] = sim.model.effect_size
        summary["calibration"] = vars(sim.calibration_)
        summary["seed"] = sim.seed
    if "edges" in analyses:
        edges = json.loads((analyses["edges"] / "results.json").read_text())
        summary["edges"] = {
            k: v for k, v in edges.get("edges", {}).items() if isinstance(v, int | float | str)
        }
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A short, human-readable summary of a demo run."""
    a = summary["analysed"]
    lines = [
        f"sites: {summary['sites']} ({a['sites']} analysed); subjects in site files: "
        f"{summary['subjects_in_site_files']}, QC exclusions: {summary['qc_excluded']}, "
        f"analysed: {a['n']} ({a['n_case']} cases, {a['n_control']} controls)",
    ]
    if summary.get("sites_without_bundle"):
        lines.append(
            "sites with no subject passing QC (nothing submitted): "
            + ", ".join(summary["sites_without_bundle"])
        )
    if "dmn" in summary:
        planted = summary.get("planted_d")
        if planted is not None:
            lines.append(f"planted effect on mean DMN FC: d = {planted:+.3f}")
        for harm, r in summary["dmn"].items():
            verdict = ""
            if "planted_within_ci" in r:
                verdict = (
                    "  planted value inside CI"
                    if r["planted_within_ci"]
                    else "  planted value OUTSIDE CI"
                )
            lines.append(
                f"recovered (mixed model, {'ComBat' if harm == 'combat' else 'no ComBat'}"
                f"): d = {r['d']:+.3f}  95% CI [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"
                f"  p = {r['p']:.2g}{verdict}"
            )
        m = summary["meta_analysis"]
        lines.append(
            f"site meta-analysis (k = {m['k']}): g = {m['estimate']:+.3f}  "
            f"95% CI [{m['ci'][0]:+.3f}, {m['ci'][1]:+.3f}]"
        )
    lines.append(
        "time per stage: "
        + ", ".join(f"{name} {secs:.1f} s" for name, secs in summary["timings_s"].items())
    )
    lines.append(f"total: {summary['total_s']:.1f} s")
    lines.append(f"report: {summary['report']}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m consortium.demo site CONFIG BUNDLE URL TOKEN_FILE
    if len(sys.argv) != 6 or sys.argv[1] != "site":
        sys.exit("usage: python -m consortium.demo site CONFIG BUNDLE URL TOKEN_FILE")
    sys.exit(site_main(*sys.argv[2:]))
