"""Signed site bundles for tests, in three recipes (all written by the site agent's code).

- ``synthetic_bundle(out_dir, site_id, private_key, ...)``: the *toy* recipe for the
  coordinator tests: random but plausible data, ``ASD``/``TDC``, a "toy" atlas of
  ``n_rois`` ROIs, all subjects included; ``edit(arrays)`` may spoil it before signing.
- ``make_bundle(out_dir, site, site_index, ...)`` / ``make_bundles(out_dir, n_sites, ...)``:
  the *planted* recipe for the analysis tests: Dosenbach-160 connectivity with a planted
  DMN effect (cases have lower DMN coupling), additive and multiplicative site effects,
  covariates with known effects, a coarse voxel map and a QC table with exclusions.
- ``build_abide_bundle(abide_dir, abide_site, out_dir, ...)``: the *ABIDE* recipe: runs the
  real site agent on one ABIDE PCP site folder (``ho111`` atlas; ``DX_GROUP`` 1 -> ``ASD``
  (case), 2 -> ``TDC`` (control); ``SEX`` 1 -> ``M``, 2 -> ``F``; ``AGE_AT_SCAN`` -> ``age``;
  ``func_mean_fd`` -> ``mean_fd``; default QC). ``abide_config_text`` is its site config.
  ABIDE's ho111 ROI 83 is empty (zero variance) in 193 of 871 subjects, mostly at
  CALTECH, CMU and SDSU, and QC excludes those subjects (coverage); sites with many
  included subjects: NYU (160 of 172 pass QC), UM_1 (63/86), USM (44/67), KKI (26/33),
  STANFORD (23/25), LEUVEN_2 (25/28), UM_2 (29/34).

The recipes are kept apart because reference tests assert numbers computed from exactly
this data; each recipe draws its random numbers in its own order.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sites.agent import compute
from sites.atlas import Atlas, load_atlas
from sites.bundle import read_bundle, write_bundle
from sites.config import load_config
from sites.connectivity import dmn_edges, network_summaries
from sites.contract import n_rois_of
from sites.keys import load_private_key
from tests.helpers.keys import SiteFiles, site_files_in

# ------------------------------------------------------------------------ toy recipe


def synthetic_bundle(
    out_dir: Path,
    site_id: str,
    private_key: Path,
    n_per_group: int = 12,
    n_rois: int = 10,
    seed: int = 0,
    edit: Callable[[dict], None] | None = None,
    map_voxels: int | None = None,
) -> Path:
    """A signed toy bundle of random but plausible data; ``edit(arrays)`` may spoil it."""
    rng = np.random.default_rng(seed)
    n = 2 * n_per_group
    keys = [secrets.token_hex(32) for _ in range(n)]
    subjects = pd.DataFrame(
        {
            "subject_key": keys,
            "dx": ["ASD"] * n_per_group + ["TDC"] * n_per_group,
            "age": rng.uniform(8, 40, n),
            "sex": rng.choice(["M", "F"], n),
            "mean_fd": rng.uniform(0.02, 0.2, n),
        }
    )
    qc = pd.DataFrame({"subject_key": keys, "included": True, "reason_codes": ""})
    n_edges = n_rois * (n_rois - 1) // 2
    edges = rng.normal(0.2, 0.3, (n, n_edges)).astype(np.float32)
    networks = pd.DataFrame({"none__none": edges.mean(axis=1)})
    arrays = {"subjects": subjects, "edges": edges, "maps": _toy_maps(rng, n, map_voxels)}
    if edit is not None:
        edit(arrays)
    return write_bundle(
        out_dir,
        site_id=site_id,
        subjects=arrays["subjects"],
        qc=qc,
        connectivity={"toy": arrays["edges"]},
        networks={"toy": networks},
        maps=arrays["maps"],
        metadata={"dx_labels": {"case": "ASD", "control": "TDC"}},
        private_key=load_private_key(private_key),
        atlases=_toy_atlas(arrays["edges"]),
    )


def _toy_maps(rng: np.random.Generator, n: int, map_voxels: int | None) -> dict | None:
    """An ``alff`` map of ``map_voxels`` voxels per subject, or None."""
    if not map_voxels:
        return None
    side = int(np.ceil(map_voxels ** (1 / 3))) + 1
    mask = np.zeros((side, side, side), np.uint8)
    mask.reshape(-1)[:map_voxels] = 1
    values = rng.normal(0, 1, (n, map_voxels)).astype(np.float32)
    return {"alff": (nib.Nifti1Image(mask, np.eye(4)), values)}


def _toy_atlas(edges: np.ndarray) -> dict[str, Atlas]:
    """The "toy" atlas of ``edges`` (ROIs ``r1``... in one network ``none``), if any."""
    n = n_rois_of(int(np.shape(edges)[1])) if np.ndim(edges) == 2 else -1
    if n < 2:
        return {}
    return {"toy": Atlas("toy", [f"r{i}" for i in range(1, n + 1)], ["none"] * n)}


# -------------------------------------------------------------------- planted recipe

DX_LABELS = {"case": "MDD", "control": "HC"}
GRID = (7, 8, 7)
AFFINE = np.array([[8.0, 0, 0, -24], [0, 8, 0, -40], [0, 0, 8, -16], [0, 0, 0, 1]])


def map_mask(shrink: int = 1) -> nib.Nifti1Image:
    """The planted recipe's voxel mask on ``GRID`` (``shrink`` voxels off the first axis)."""
    mask = np.zeros(GRID, dtype=np.uint8)
    mask[shrink:-1, 1:-1, 1:-1] = 1
    return nib.Nifti1Image(mask, AFFINE)


def site_tables(site: str, n_case: int, n_control: int, rng: np.random.Generator,
                education: bool = True, n_excluded: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Subjects (MDD/HC, age, sex, mean FD, episode, medication, education) and QC."""
    n = n_case + n_control
    keys = [hashlib.sha256(f"{site}-{i}".encode()).hexdigest() for i in range(n + n_excluded)]
    subjects = pd.DataFrame({
        "subject_key": keys[:n],
        "dx": ["MDD"] * n_case + ["HC"] * n_control,
        "age": rng.uniform(20, 60, n).round(1),
        "sex": rng.choice(["M", "F"], n),
        "mean_fd": rng.gamma(4.0, 0.03, n),
        "episode": ["recurrent" if i % 2 else "first" for i in range(n_case)] + [None] * n_control,
        "medication": ["naive" if i % 3 else "treated" for i in range(n_case)] + [None] * n_control,
    })
    if education:
        subjects["education_years"] = rng.normal(13, 3, n).round()
    qc = pd.DataFrame({
        "subject_key": keys,
        "included": [True] * n + [False] * n_excluded,
        "reason_codes": [""] * n + ["head_motion"] * n_excluded,
    })
    return subjects, qc


def qc_reasons(qc: pd.DataFrame) -> pd.DataFrame:
    """One ``head_motion`` reason (mean FD 0.3 mm > 0.2 mm) per excluded subject."""
    excluded = qc.loc[~qc["included"], "subject_key"].tolist()
    return pd.DataFrame({"subject_key": excluded, "code": "head_motion", "field": "mean_fd",
                         "value": 0.3, "threshold": 0.2})


def site_data(subjects: pd.DataFrame, atlas, site_index: int, effect: float,
              rng: np.random.Generator, mask: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Edges with a planted DMN effect and site effects, and voxel values in ``mask``."""
    n = len(subjects)
    case = (subjects["dx"] == "MDD").to_numpy()
    edges = rng.normal(0.15, 0.12, (n, atlas.n_edges))
    # A subject-level DMN offset makes mean DMN FC vary across subjects (sd 0.05).
    offset = (rng.normal(0.0, 0.05, n) + effect * 0.05 * case
              + 0.001 * (subjects["age"].to_numpy() - 40))
    if atlas.dmn is not None:
        edges[:, dmn_edges(atlas)] += offset[:, None]
    edges = 0.03 * site_index + (1.0 + 0.15 * site_index) * edges
    n_vox = int(np.count_nonzero(mask.get_fdata()))
    voxels = rng.normal(0.0, 1.0, (n, n_vox)) + 0.3 * site_index
    voxels[:, : n_vox // 4] += 0.8 * case[:, None]
    return edges.astype(np.float32), voxels.astype(np.float32)


def make_bundle(out_dir: Path, site: str, site_index: int, n_case: int = 14,
                n_control: int = 14, effect: float = -1.0, seed: int = 0,
                education: bool = True, dx_labels: dict | None = None,
                mask: nib.Nifti1Image | None = None, atlas_name: str = "dosenbach160") -> Path:
    """Write one planted-effect bundle ``out_dir / site`` (signed with a new key)."""
    rng = np.random.default_rng([seed, site_index])
    atlas = load_atlas(atlas_name)
    mask = mask if mask is not None else map_mask()
    subjects, qc = site_tables(site, n_case, n_control, rng, education)
    edges, voxels = site_data(subjects, atlas, site_index, effect, rng, mask)
    labels = dx_labels or DX_LABELS
    subjects["dx"] = subjects["dx"].map({"MDD": labels["case"], "HC": labels["control"]})
    return write_bundle(
        out_dir / site, site_id=site, subjects=subjects, qc=qc, qc_reasons=qc_reasons(qc),
        connectivity={atlas.name: edges},
        networks={atlas.name: network_summaries(edges, atlas)},
        maps={"alff": (mask, voxels)},
        metadata={"dx_labels": labels},
        private_key=Ed25519PrivateKey.generate(),
        atlases={atlas.name: atlas},
    )


def make_bundles(out_dir: Path, n_sites: int = 3, seed: int = 0, **options) -> list:
    """Write ``n_sites`` planted bundles (SITE_A, SITE_B, ...) and open them verified."""
    paths = []
    for k in range(n_sites):
        sizes = {"n_case": 12 + 2 * k, "n_control": 13 + k}
        sizes.update({key: options.pop(key) for key in list(options) if key in sizes})
        paths.append(make_bundle(out_dir, f"SITE_{chr(65 + k)}", k, seed=seed, **sizes, **options))
    return [read_bundle(p) for p in paths]


# ---------------------------------------------------------------------- ABIDE recipe


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

{keys.keys_toml}

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


def build_abide_bundle(
    abide_dir: Path,
    abide_site: str,
    out_dir: Path,
    site_id: str | None = None,
    max_subjects: int | None = None,
    keys: SiteFiles | None = None,
    atlas: str = "ho111",
) -> Path:
    """Run the site agent on one ABIDE site; return the signed bundle directory ``out_dir``.

    Parameters
    ----------
    abide_dir : Path
        The ABIDE PCP folder (one sub-folder per site).
    abide_site : str
        The site folder's name.
    out_dir : Path
        Where the bundle is written.
    site_id : str, optional
        The bundle's site id (default ``abide_site``).
    max_subjects : int, optional
        Keep the first N rows of the site's ``participants.csv`` (fast tests).
    keys : SiteFiles, optional
        Keys to sign with; default: a new key pair in ``.<out_dir name>-site`` next to
        ``out_dir`` (public key ``site_ed25519.pub.pem``), config in
        ``.<out_dir name>-site.toml``.
    atlas : str
        Atlas name or TSV path of the connectivity entry.
    """
    out_dir = Path(out_dir)
    site_id = site_id or abide_site
    site_dir = Path(abide_dir) / abide_site
    keys = keys or site_files_in(out_dir.parent / f".{out_dir.name}-site", site_id)
    config_path = out_dir.parent / f".{out_dir.name}-site.toml"
    config_path.write_text(abide_config_text(site_id, site_dir, keys, atlas=atlas))
    subjects = None
    if max_subjects is not None:
        table = pd.read_csv(site_dir / "participants.csv", dtype=str)
        subjects = table["FILE_ID"].head(max_subjects).tolist()
    return compute(load_config(config_path), out_dir, subjects=subjects, progress=False)
