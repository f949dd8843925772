"""Benchmark of the site agent's per-subject work (not a test).

1. FC + network summaries for 200 subjects from ROI time series (Dosenbach
   160, 200 volumes): ``sites.connectivity`` against a straightforward nilearn
   ``ConnectivityMeasure(kind="correlation")`` (empirical covariance, i.e.
   Pearson) + ``np.arctanh`` per subject + network means with boolean masks.
2. ROI extraction from a 4D NIfTI per subject (Dosenbach 160 spheres of 5 mm,
   3 mm MNI grid, 200 volumes): ``sites.extraction.extract_spheres`` (sphere
   membership built once as a sparse averaging matrix, one read + one sparse
   product per subject) against a plain ``nilearn.maskers.NiftiSpheresMasker``
   (``allow_overlap=True``) in the same run on the same files. The first
   confed subject includes building the membership (cached afterwards).

Run: ``.venv/bin/python benchmarks/bench_site_agent.py [n_subjects]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
from nilearn.connectome import ConnectivityMeasure
from nilearn.maskers import NiftiSpheresMasker
from sklearn.covariance import EmpiricalCovariance

from sites.atlas import load_atlas
from sites.connectivity import fisher_z_connectivity, network_pairs, network_summaries
from sites.extraction import _CACHE as _SPHERE_CACHE
from sites.extraction import extract_spheres


def bench_fc(n_subjects: int, n_vols: int = 200) -> None:
    atlas = load_atlas("dosenbach160")
    rng = np.random.default_rng(0)
    series = [
        rng.normal(size=(n_vols, 160)) + rng.normal(size=(n_vols, 1)) for _ in range(n_subjects)
    ]

    start = time.perf_counter()
    edges = np.stack([fisher_z_connectivity(ts) for ts in series])
    ours = network_summaries(edges, atlas)
    t_ours = time.perf_counter() - start

    start = time.perf_counter()
    rows, cols = np.triu_indices(160, k=1)
    measure = ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance())
    ref_edges = []
    for ts in series:
        r = measure.fit_transform([ts])[0]
        ref_edges.append(np.arctanh(r[rows, cols]))
    ref_edges = np.asarray(ref_edges)
    groups = network_pairs(atlas)
    nets = np.asarray(atlas.networks)
    ref = {}
    for name in groups:
        a, b = name.split("__")
        mask = ((nets[rows] == a) & (nets[cols] == b)) | ((nets[rows] == b) & (nets[cols] == a))
        ref[name] = ref_edges[:, mask].mean(axis=1)
    dmn = atlas.dmn[rows] & atlas.dmn[cols]
    ref["dmn_restmeta"] = ref_edges[:, dmn].mean(axis=1)
    t_ref = time.perf_counter() - start

    diff = max(np.abs(ours[k].to_numpy() - v).max() for k, v in ref.items())
    print(f"FC + network summaries, {n_subjects} subjects, Dosenbach 160, {n_vols} volumes")
    print(f"  confed : {t_ours / n_subjects * 1e3:8.2f} ms/subject ({t_ours:.2f} s total)")
    print(f"  nilearn: {t_ref / n_subjects * 1e3:8.2f} ms/subject ({t_ref:.2f} s total)")
    print(f"  ratio nilearn/confed = {t_ref / t_ours:.2f}; max |difference| = {diff:.2e}")


def bench_extraction(n_subjects: int = 5, n_vols: int = 200) -> None:
    atlas = load_atlas("dosenbach160")
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-78, -112, -70]
    shape = (53, 63, 52)
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n_subjects):
            data = rng.normal(100, 5, size=(*shape, n_vols)).astype(np.float32)
            path = Path(tmp) / f"sub-{i}_bold.nii.gz"
            nib.save(nib.Nifti1Image(data, affine), path)
            paths.append(path)
        _SPHERE_CACHE.clear()  # time the one-off membership build too
        start = time.perf_counter()
        ours = [extract_spheres(p, atlas, 5.0) for p in paths]
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        ref = []
        for p in paths:
            masker = NiftiSpheresMasker(
                [tuple(c) for c in atlas.coords], radius=5.0, allow_overlap=True
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref.append(masker.fit_transform(str(p)))
        t_ref = time.perf_counter() - start
    diff = max(np.abs(a - b).max() for a, b in zip(ours, ref, strict=True))
    print(f"ROI extraction from 4D NIfTI, {n_subjects} subjects, {shape} x {n_vols}, 3 mm")
    print(f"  confed : {t_ours / n_subjects:6.2f} s/subject (fast sphere path)")
    print(f"  nilearn: {t_ref / n_subjects:6.2f} s/subject (NiftiSpheresMasker)")
    print(f"  ratio nilearn/confed = {t_ref / t_ours:.2f}; max |difference| = {diff:.2e}")


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    bench_fc(n)
    bench_extraction()
