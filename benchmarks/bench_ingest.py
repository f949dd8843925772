"""Benchmark of the coordinator's ingest (not a test).

1. Ingest of one 300-subject bundle: Dosenbach 160 connectivity (12,720 edges) and
   network summaries plus one standardized voxel map on the 3 mm MNI152 brain mask
   (69,765 voxels), written by the site agent's own writer from synthetic data.
   Reference: the site agent's verifier alone (``sites.bundle.read_bundle`` of the
   tar with signature and checksums, then reading every table and the map), i.e.
   the least work any ingest must do. Ours: ``consortium.ingest.ingest_archive``
   (safe extraction, signature with the registered key, verification, value checks,
   staging with fsync and re-hash, rename, database commit), in the same process,
   and the same bundle uploaded over HTTP to a real server.
2. Throughput of 20 sites uploading at once to a real ``confed coord serve``
   process (SQLite), each a 60-subject Dosenbach bundle without maps, against the
   same 20 uploads one after another.

Run: ``.venv/bin/python benchmarks/bench_ingest.py [n_subjects]``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from nilearn.datasets import load_mni152_brain_mask

from consortium import audit
from consortium.coordinator import Coordinator
from consortium.ingest import ingest_archive
from consortium.registry import add_site
from consortium.settings import Settings
from sites.atlas import load_atlas
from sites.bundle import export_bundle, read_bundle, write_bundle
from sites.connectivity import network_summaries
from sites.keys import generate_keypair, load_private_key


def make_bundle(folder: Path, site: str, n: int, with_map: bool, seed: int) -> tuple[Path, Path]:
    """A signed bundle tar of synthetic data; returns (tar, public key)."""
    rng = np.random.default_rng(seed)
    private, public = generate_keypair(folder / f"{site}.pem", folder / f"{site}.pub.pem")
    atlas = load_atlas("dosenbach160")
    keys = [f"{rng.integers(0, 2**63):016x}".rjust(64, "0") for _ in range(n)]
    subjects = pd.DataFrame(
        {
            "subject_key": keys,
            "dx": np.where(np.arange(n) % 2 == 0, "MDD", "HC"),
            "age": rng.uniform(18, 65, n),
            "sex": rng.choice(["M", "F"], n),
            "mean_fd": rng.uniform(0.02, 0.2, n),
        }
    )
    n_edges = atlas.n_rois * (atlas.n_rois - 1) // 2
    edges = rng.normal(0.2, 0.25, (n, n_edges)).astype(np.float32)
    maps = None
    if with_map:
        mask = load_mni152_brain_mask(resolution=3)
        n_vox = int(np.count_nonzero(np.asarray(mask.dataobj)))
        values = rng.normal(0, 1, (n, n_vox)).astype(np.float32)
        values = (values - values.mean(1, keepdims=True)) / values.std(1, keepdims=True)
        maps = {"alff": (mask, values)}
    bundle = write_bundle(
        folder / site,
        site_id=site,
        subjects=subjects,
        qc=pd.DataFrame({"subject_key": keys, "included": True, "reason_codes": ""}),
        connectivity={"dosenbach160": edges},
        networks={"dosenbach160": network_summaries(edges, atlas)},
        maps=maps,
        metadata={"dx_labels": {"case": "MDD", "control": "HC"}},
        atlases={"dosenbach160": atlas},
        private_key=load_private_key(private),
    )
    return export_bundle(bundle, folder / f"{site}.tar"), public


def reference_ingest(tar: Path) -> None:
    bundle = read_bundle(tar, verify=True)
    bundle.subjects  # noqa: B018
    bundle.connectivity("dosenbach160")
    bundle.network_summaries("dosenbach160")
    for metric in bundle.map_names:
        bundle.maps(metric)


def new_root(folder: Path) -> Coordinator:
    settings = Settings(folder)
    coord = Coordinator(settings)
    settings.save()
    return coord


def register(coord: Coordinator, site: str, public: Path) -> str:
    with coord.db.session() as session:
        _, _, token = add_site(session, site, site, public.read_text(), "bench")
    return token


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


class Server:
    def __init__(self, root: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "consortium.cli.main",
                "coord",
                "serve",
                "--root",
                str(root),
                "--port",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}/api/v1"
        for _ in range(600):
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def upload(self, token: str, tar: Path) -> float:
        t0 = time.perf_counter()
        with open(tar, "rb") as fh:
            r = httpx.post(
                f"{self.url}/submissions",
                content=fh,
                timeout=600,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-tar"},
            )
        if r.status_code not in (200, 201):
            raise RuntimeError(r.text)
        return time.perf_counter() - t0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def bench_single(tmp: Path, n: int) -> None:
    tar, public = make_bundle(tmp, "BIG", n, with_map=True, seed=1)
    size_mb = tar.stat().st_size / 1e6
    print(f"1. one bundle: {n} subjects, 12,720 edges + 69,765-voxel map, {size_mb:.0f} MB tar")
    t_ref = best_of(lambda: reference_ingest(tar), 2)
    times = []
    for i in range(2):  # a fresh root each time: a repeat would be a duplicate
        coord = new_root(tmp / f"root{i}")
        register(coord, "BIG", public)
        t0 = time.perf_counter()
        result = ingest_archive(coord, tar, "BIG", "bench")
        times.append(time.perf_counter() - t0)
        assert result.created
        coord.close()
    t_ours = min(times)
    print(f"   reference read_bundle(verify) + read all: {t_ref:7.2f} s")
    print(
        f"   ours ingest_archive (in process):         {t_ours:7.2f} s  "
        f"({size_mb / t_ours:.0f} MB/s)  ratio ours/reference = {t_ours / t_ref:.2f}"
    )
    # A server runs for months: warm it up with a small upload of another site, as
    # the in-process figure is the warm one of two runs.
    warm_tar, warm_public = make_bundle(tmp, "WARM", 20, with_map=True, seed=2)
    http_times = []
    for i in range(2):  # best of two, each into a fresh root, as in process
        coord = new_root(tmp / f"root-http{i}")
        token = register(coord, "BIG", public)
        warm_token = register(coord, "WARM", warm_public)
        coord.close()
        server = Server(tmp / f"root-http{i}")
        try:
            server.upload(warm_token, warm_tar)
            http_times.append(server.upload(token, tar))
        finally:
            server.stop()
    t_http = min(http_times)
    print(
        f"   ours over HTTP to a real server:           {t_http:7.2f} s  "
        f"ratio HTTP/reference = {t_http / t_ref:.2f}, HTTP/in process = {t_http / t_ours:.2f}"
    )


def _upload_after_barrier(job) -> float:
    server, token, tar, barrier = job
    barrier.wait()
    return server.upload(token, tar)


def bench_concurrent(tmp: Path, n_sites: int = 20, n_subjects: int = 60) -> None:
    tars = {}
    for i in range(n_sites):
        site = f"S{i + 1:02d}"
        tars[site] = make_bundle(tmp / "small", site, n_subjects, with_map=False, seed=100 + i)
    total_mb = sum(t.stat().st_size for t, _ in tars.values()) / 1e6
    print(f"2. {n_sites} sites, {n_subjects} subjects each, {total_mb:.0f} MB in all")
    results = {}
    for mode in ("sequential", "concurrent"):
        root = tmp / f"root-{mode}"
        coord = new_root(root)
        tokens = {s: register(coord, s, pub) for s, (_, pub) in tars.items()}
        coord.close()
        server = Server(root)
        try:
            t0 = time.perf_counter()
            if mode == "sequential":
                for s, (tar, _) in tars.items():
                    server.upload(tokens[s], tar)
            else:
                barrier = threading.Barrier(n_sites)
                jobs = [(server, tokens[s], tars[s][0], barrier) for s in tars]
                with ThreadPoolExecutor(n_sites) as pool:
                    list(pool.map(_upload_after_barrier, jobs))
            results[mode] = time.perf_counter() - t0
        finally:
            server.stop()
        with Coordinator.open(root).db.session() as session:
            report = audit.verify_chain(session)
            assert report.ok, report.problems
        t = results[mode]
        print(f"   {mode:10s}: {t:6.2f} s  {n_sites / t:5.2f} uploads/s  {total_mb / t:6.1f} MB/s")
    print(
        f"   ratio concurrent/sequential time = {results['concurrent'] / results['sequential']:.2f}"
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    print(f"machine: {os.cpu_count()} CPU(s); figures depend on load from other processes")
    with tempfile.TemporaryDirectory(prefix="confed-bench-") as tmp:
        bench_single(Path(tmp), n)
        bench_concurrent(Path(tmp))


if __name__ == "__main__":
    main()
