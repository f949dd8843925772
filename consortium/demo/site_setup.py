"""The demo's sites: folders and configs, registration over the API, the site process."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pandas as pd

from consortium.simulate import ConsortiumSimulator, SignalModel
from sites.config import to_toml

from .processes import DemoError, _run_all

if TYPE_CHECKING:
    from .run import _Stages

__all__ = ["NOTHING_SUBMITTED", "DemoSite", "RealDataOptions", "site_main"]

ABIDE_DX = {"1": "ASD", "2": "TDC"}


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
