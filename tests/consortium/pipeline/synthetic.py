"""Small synthetic site bundles written with the site agent's public writer.

Each site has Dosenbach-160 connectivity with a planted DMN effect (cases have
lower DMN coupling), additive and multiplicative site effects, covariates with
known effects, a coarse voxel map and a QC table with a few exclusions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sites.atlas import load_atlas
from sites.bundle import read_bundle, write_bundle
from sites.connectivity import dmn_edges, network_summaries

DX_LABELS = {"case": "MDD", "control": "HC"}
GRID = (7, 8, 7)
AFFINE = np.array([[8.0, 0, 0, -24], [0, 8, 0, -40], [0, 0, 8, -16], [0, 0, 0, 1]])


def map_mask(shrink: int = 1) -> nib.Nifti1Image:
    mask = np.zeros(GRID, dtype=np.uint8)
    mask[shrink:-1, 1:-1, 1:-1] = 1
    return nib.Nifti1Image(mask, AFFINE)


def site_tables(site: str, n_case: int, n_control: int, rng: np.random.Generator,
                education: bool = True, n_excluded: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
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
              rng: np.random.Generator, mask: nib.Nifti1Image):
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
    """Write ``n_sites`` bundles (SITE_A, SITE_B, ...) and open them verified."""
    paths = []
    for k in range(n_sites):
        sizes = {"n_case": 12 + 2 * k, "n_control": 13 + k}
        sizes.update({key: options.pop(key) for key in list(options) if key in sizes})
        paths.append(make_bundle(out_dir, f"SITE_{chr(65 + k)}", k, seed=seed, **sizes, **options))
    return [read_bundle(p) for p in paths]
