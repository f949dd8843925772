"""Test factories for sites and bundles, shared by every package's tests.

- ``make_site(tmp_path, site_id) -> SiteFiles``: what ``confed site init`` makes
  (Ed25519 key pair, pseudonymization secret, ``site.toml``) in
  ``tmp_path / site_id``. Attributes: ``site_id``, ``config_path``,
  ``private_key_path``, ``public_key_path``, ``secret_path``, ``root``.
- ``build_abide_bundle(abide_dir, abide_site, out_dir, site_id=None,
  max_subjects=None, keys=None) -> Path``: runs the real site agent on one
  ABIDE PCP site folder (``ho111`` atlas; ``DX_GROUP`` 1 -> ``ASD`` (case),
  2 -> ``TDC`` (control); ``SEX`` 1 -> ``M``, 2 -> ``F``; ``AGE_AT_SCAN`` ->
  ``age``; ``func_mean_fd`` -> ``mean_fd``; default QC) and returns the signed
  bundle directory ``out_dir``. ``max_subjects`` keeps the first N rows of
  the site's ``participants.csv`` (fast tests); ``keys`` is a ``SiteFiles``
  to sign with (default: a new site made next to ``out_dir``).
  ABIDE's ho111 ROI 83 is empty (zero variance) in 193 of 871 subjects, mostly at
  CALTECH, CMU and SDSU, and QC excludes those subjects (coverage); sites with
  many included subjects: NYU (160 of 172 pass QC), UM_1 (63/86), USM (44/67),
  KKI (26/33), STANFORD (23/25), LEUVEN_2 (25/28), UM_2 (29/34).
- ``abide_config_text(...)``: the TOML used by ``build_abide_bundle``, for
  tests that want to vary it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sites.agent import compute
from sites.config import load_config
from sites.keys import generate_keypair
from sites.pseudonym import new_secret


@dataclass(frozen=True)
class SiteFiles:
    site_id: str
    root: Path
    config_path: Path
    private_key_path: Path
    public_key_path: Path
    secret_path: Path


def make_site(tmp_path: Path, site_id: str) -> SiteFiles:
    """Keys, secret and a template config for ``site_id`` under ``tmp_path/site_id``."""
    from typer.testing import CliRunner

    from sites.cli import app

    root = Path(tmp_path) / site_id
    root.mkdir(parents=True, exist_ok=True)
    config = root / "site.toml"
    result = CliRunner().invoke(app, ["init", "--site-id", site_id, "--out", str(config)])
    if result.exit_code != 0:
        raise RuntimeError(f"confed site init failed: {result.output}")
    return SiteFiles(
        site_id=site_id,
        root=root,
        config_path=config,
        private_key_path=root / "keys" / "site_ed25519.pem",
        public_key_path=root / "keys" / "site_ed25519.pub.pem",
        secret_path=root / "keys" / "pseudonym.secret",
    )


def abide_config_text(
    site_id: str,
    site_dir: Path,
    keys: SiteFiles,
    atlas: str = "ho111",
    max_mean_fd: float = 0.2,
    min_volumes: int = 50,
    min_included: int = 0,
) -> str:
    """Site config for one ABIDE PCP site folder (ho111 .1D.gz time series).

    ``min_included`` is 0 by default: some tests need a site whose subjects
    all fail QC (the agent's own default is 1).
    """
    return f"""
site_id = "{site_id}"
base_dir = "{site_dir}"

[keys]
private_key = "{keys.private_key_path}"
public_key = "{keys.public_key_path}"
secret = "{keys.secret_path}"

[phenotypes]
path = "participants.csv"
dx_case = "ASD"
dx_control = "TDC"
allow = ["FIQ"]

[phenotypes.columns]
FILE_ID = "subject_id"
DX_GROUP = "dx"
AGE_AT_SCAN = "age"
SEX = "sex"
func_mean_fd = "mean_fd"

[phenotypes.values.dx]
"1" = "ASD"
"2" = "TDC"

[phenotypes.values.sex]
"1" = "M"
"2" = "F"

[[connectivity]]
atlas = "{atlas}"
pattern = "{{subject_id}}_rois_ho.1D.gz"

[motion]
source = "phenotype"
definition = "jenkinson"

[qc]
max_mean_fd = {max_mean_fd}
min_volumes = {min_volumes}
min_included = {min_included}
"""


def _new_keys(out_dir: Path, site_id: str) -> SiteFiles:
    root = out_dir.parent / f".{out_dir.name}-site"
    root.mkdir(parents=True, exist_ok=True)
    private, public = root / "site_ed25519.pem", root / "site_ed25519.pub.pem"
    if not private.exists():
        generate_keypair(private, public)
        new_secret(root / "pseudonym.secret")
    return SiteFiles(site_id, root, root / "site.toml", private, public, root / "pseudonym.secret")


def build_abide_bundle(
    abide_dir: Path,
    abide_site: str,
    out_dir: Path,
    site_id: str | None = None,
    max_subjects: int | None = None,
    keys: SiteFiles | None = None,
    atlas: str = "ho111",
) -> Path:
    """Run the site agent on one ABIDE site; return the bundle directory."""
    import pandas as pd

    out_dir = Path(out_dir)
    site_id = site_id or abide_site
    site_dir = Path(abide_dir) / abide_site
    keys = keys or _new_keys(out_dir, site_id)
    config_path = out_dir.parent / f".{out_dir.name}-site.toml"
    config_path.write_text(abide_config_text(site_id, site_dir, keys, atlas=atlas))
    subjects = None
    if max_subjects is not None:
        table = pd.read_csv(site_dir / "participants.csv", dtype=str)
        subjects = table["FILE_ID"].head(max_subjects).tolist()
    return compute(load_config(config_path), out_dir, subjects=subjects, progress=False)
