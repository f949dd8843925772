"""Recipe "add an input format" (:mod:`sites.formats`), tried with a toy format.

The toy format stores a subject's time series ROI-major (one row per ROI,
``.npy``), the transpose of what the agent expects. Registering its reader is
the whole recipe: the config accepts ``source = "roi-major"``, the agent reads
it and runs the same QC, connectivity, pseudonymization and bundle writing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sites.agent import AgentError, compute
from sites.bundle import read_bundle
from sites.config import ConfigError, load_config
from sites.formats import (
    SERIES_RULES,
    input_format,
    input_formats,
    register_input_format,
    unregister_input_format,
)
from sites.pseudonym import load_secret, subject_key
from tests.helpers import site_folders as synthetic
from tests.helpers.keys import make_site

N_ROIS = 160  # dosenbach160
TOY = "roi-major"
TOY_CONNECTIVITY = f"""
[[connectivity]]
atlas = "dosenbach160"
source = "{TOY}"
pattern = "roi_major/{{subject_id}}.npy"
"""


def read_roi_major(path: Path, entry, atlas, site) -> np.ndarray:
    """The toy reader: (ROIs x volumes) ``.npy`` -> (volumes x ROIs)."""
    series = np.load(path)
    if series.ndim != 2 or series.shape[0] != atlas.n_rois:
        raise ValueError(f"{path}: expected {atlas.n_rois} rows (ROIs), got shape {series.shape}")
    return series.T


@pytest.fixture
def toy_format():
    registered = register_input_format(TOY, read_roi_major)
    yield registered
    unregister_input_format(TOY)


def _toy_site(tmp_path: Path, n: int = 5, n_vols: int = 40):
    """A site with ``n`` subjects in the toy format; returns its files and series."""
    keys = make_site(tmp_path, "S01")
    table = synthetic.phenotype_table(n)
    table.to_csv(keys.root / "participants.tsv", sep="\t", index=False)
    (keys.root / "roi_major").mkdir()
    rng = np.random.default_rng(7)
    series = {}
    for sid in table["participant_id"]:
        series[sid] = rng.normal(size=(n_vols, N_ROIS)) + 0.4 * rng.normal(size=(n_vols, 1))
        np.save(keys.root / "roi_major" / f"{sid}.npy", series[sid].T)
    keys.config_path.write_text(synthetic.config_text(keys, TOY_CONNECTIVITY))
    return keys, series


def _fisher(ts: np.ndarray) -> np.ndarray:
    r = np.corrcoef(ts, rowvar=False)
    return np.arctanh(r[np.triu_indices(ts.shape[1], k=1)])


def test_toy_format_runs_end_to_end(tmp_path, toy_format):
    assert toy_format.name in input_formats() and not toy_format.precomputed
    keys, series = _toy_site(tmp_path)
    missing = next(iter(series))
    (keys.root / "roi_major" / f"{missing}.npy").unlink()  # a QC exclusion, not an error
    bundle = read_bundle(compute(load_config(keys.config_path), tmp_path / "out", progress=False))

    secret = load_secret(keys.secret_path)
    key_of = {subject_key(secret, "S01", sid): sid for sid in series}
    fc = bundle.connectivity("dosenbach160")
    keys_in = list(bundle.subjects["subject_key"])
    assert sorted(key_of[k] for k in keys_in) == sorted(set(series) - {missing})
    for i, key in enumerate(keys_in):
        np.testing.assert_allclose(fc[i], _fisher(series[key_of[key]]), atol=1e-5)
    entry = bundle.manifest["connectivity"]["dosenbach160"]
    assert entry["source"] == TOY and entry["matrix_kind"] is None
    rules = bundle.manifest["qc_rules"]
    assert rules["run"]["connectivity"]["dosenbach160"] == list(SERIES_RULES)
    assert rules["not_run"] == {}
    excluded = bundle.qc_reasons
    assert list(excluded["code"]) == ["missing_timeseries"]


def test_toy_reader_errors_name_the_subject(tmp_path, toy_format):
    keys, series = _toy_site(tmp_path, n=3)
    sid = next(iter(series))
    np.save(keys.root / "roi_major" / f"{sid}.npy", np.zeros((3, 4)))
    with pytest.raises(AgentError, match=rf"subject '{sid}':.*expected 160 rows"):
        compute(load_config(keys.config_path), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_unregistered_source_is_refused_by_the_config(tmp_path):
    keys, _ = _toy_site(tmp_path, n=2)  # no toy_format fixture: "roi-major" is unknown
    with pytest.raises(ConfigError) as info:
        load_config(keys.config_path)
    message = str(info.value)
    assert "connectivity.0.source" in message and "'roi-major'" in message
    assert "bold, matrix, timeseries" in message


def test_registration_is_checked(toy_format):
    with pytest.raises(ValueError, match="already registered"):
        register_input_format(TOY, read_roi_major)
    with pytest.raises(ValueError, match="lower-case"):
        register_input_format("Roi Major", read_roi_major)
    with pytest.raises(ValueError, match="unknown QC rules"):
        register_input_format("other", read_roi_major, rules=("no_such_rule",))
    assert input_format("matrix").precomputed
    with pytest.raises(ValueError, match="registered: bold, matrix, roi-major, timeseries"):
        input_format("nifti")
