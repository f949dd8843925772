"""Small synthetic site folders (DPARSF, fMRIPrep, voxel maps) that the site agent reads."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io

from tests.helpers.keys import SiteFiles

DOS_FIRST, DOS_LAST, DPARSF_WIDTH = 1409, 1568, 1600


def phenotype_table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "participant_id": [f"sub-{i:03d}" for i in range(n)],
            "group": [1 + i % 2 for i in range(n)],
            "age": rng.uniform(20, 60, n).round(1),
            "sex": [1 + (i // 2) % 2 for i in range(n)],
            "fd": rng.uniform(0.02, 0.15, n).round(4),
        }
    )


def config_text(
    keys: SiteFiles,
    connectivity: str,
    extra: str = "",
    table: str = "participants.tsv",
    motion: str = 'source = "phenotype"',
) -> str:
    return f"""
site_id = "{keys.site_id}"
{keys.keys_toml}
[phenotypes]
path = "{table}"
dx_case = "MDD"
dx_control = "HC"
[phenotypes.columns]
participant_id = "subject_id"
group = "dx"
age = "age"
sex = "sex"
fd = "mean_fd"
[phenotypes.values.dx]
"1" = "MDD"
"2" = "HC"
[phenotypes.values.sex]
"1" = "M"
"2" = "F"
{connectivity}
[motion]
{motion}
[qc]
min_volumes = 20
{extra}
"""


DPARSF_CONNECTIVITY = """
[[connectivity]]
atlas = "dosenbach160"
pattern = "ROISignals/ROISignals_{subject_id}.mat"
columns = "1409-1568"
"""


def dparsf_site(
    keys: SiteFiles, n: int = 6, n_vols: int = 60, seed: int = 1
) -> dict[str, np.ndarray]:
    """DPARSF layout: ROISignals_<id>.mat with 1600 columns; returns the wide matrices."""
    rng = np.random.default_rng(seed)
    root = keys.root
    table = phenotype_table(n)
    table.to_csv(root / "participants.tsv", sep="\t", index=False)
    (root / "ROISignals").mkdir(exist_ok=True)
    signals = {}
    shared = rng.normal(size=(n_vols, 1))
    for sid in table["participant_id"]:
        wide = rng.normal(size=(n_vols, DPARSF_WIDTH)) + 0.5 * shared
        scipy.io.savemat(root / "ROISignals" / f"ROISignals_{sid}.mat", {"ROISignals": wide})
        signals[sid] = wide
    keys.config_path.write_text(config_text(keys, DPARSF_CONNECTIVITY))
    return signals


def mni_grid(voxel: float = 4.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """A coarse MNI grid covering the Dosenbach coordinates."""
    shape = (38, 48, 38)
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = [-74, -110, -64]
    return shape, affine


def write_maps(
    root: Path,
    subjects: list[str],
    metric: str,
    shape=(8, 9, 7),
    seed: int = 3,
    affine: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    affine = np.diag([3.0, 3.0, 3.0, 1.0]) if affine is None else affine
    (root / "maps").mkdir(exist_ok=True)
    out = {}
    for i, sid in enumerate(subjects):
        data = rng.gamma(2.0, 1.0 + 0.2 * i, size=shape).astype(np.float32) + 0.1
        data[0] = 0  # a slab outside coverage
        nib.save(nib.Nifti1Image(data, affine), root / "maps" / f"{sid}_{metric}.nii.gz")
        out[sid] = data
    return out
