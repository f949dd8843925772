"""The harmonizer registry: built-in entries, a toy entry, errors, import contracts."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, TransformerMixin, clone

from harmonization.combat import ComBat
from harmonization.gam import GAMComBat
from harmonization.registry import (
    harmonizer_names,
    make_harmonizer,
    register_harmonizer,
    unregister_harmonizer,
)

PACKAGE = Path(__file__).resolve().parents[2] / "harmonization"


def _data(n=90, V=12, seed=0):
    rng = np.random.default_rng(seed)
    sites = np.repeat(["a", "b", "c"], n // 3)
    idx = np.unique(sites, return_inverse=True)[1]
    age = rng.uniform(10, 70, n)
    X = np.sin(age / 15)[:, None] + rng.normal(0, 1, (3, V))[idx] + rng.normal(size=(n, V))
    return X, sites, pd.DataFrame({"age": age, "sex": rng.choice(["F", "M"], n)})


class Demean(TransformerMixin, BaseEstimator):
    """Toy harmonizer: subtract each site's mean."""

    def fit(self, X, sites, covariates=None):
        sites = np.asarray(sites)
        self.means_ = {s: X[sites == s].mean(axis=0) for s in np.unique(sites)}
        return self

    def transform(self, X, sites, covariates=None):
        return X - np.array([self.means_[s] for s in np.asarray(sites)])

    def fit_transform(self, X, sites, covariates=None):
        return self.fit(X, sites, covariates).transform(X, sites, covariates)


def test_builtin_names_in_order():
    assert harmonizer_names()[:4] == ("none", "combat", "combat-gam", "combat-ref")


def test_toy_harmonizer_registered_used_and_removed():
    X, sites, _ = _data()
    register_harmonizer("demean", Demean, description="site means removed")
    try:
        assert harmonizer_names()[-1] == "demean"
        out = make_harmonizer("demean").fit_transform(X, sites)
        for s in ("a", "b", "c"):
            np.testing.assert_allclose(out[sites == s].mean(axis=0), 0, atol=1e-12)
        with pytest.raises(ValueError, match="'demean' is already registered"):
            register_harmonizer("demean", Demean, description="again")
        with pytest.raises(ValueError, match="harmonizer 'demean' has no option 'eb'"):
            make_harmonizer("demean", eb=False)
    finally:
        unregister_harmonizer("demean")
    assert "demean" not in harmonizer_names()
    with pytest.raises(ValueError, match="unknown harmonizer 'demean'"):
        make_harmonizer("demean")


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown harmonizer 'x'; choose one of: none, combat,"):
        make_harmonizer("x")
    with pytest.raises(ValueError, match="unknown harmonizer 'x'"):
        unregister_harmonizer("x")


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="harmonizer 'combat' has no option 'smooth'"):
        make_harmonizer("combat", smooth=("age",))
    with pytest.raises(ValueError, match="has no option 'ref_site' .*use 'combat-ref'"):
        make_harmonizer("combat-gam", ref_site="a")
    with pytest.raises(ValueError, match="harmonizer 'none' has no option 'eb'"):
        make_harmonizer("none", eb=True)


def test_combat_ref_requires_ref_site():
    with pytest.raises(ValueError, match="harmonizer 'combat-ref' needs the option 'ref_site'"):
        make_harmonizer("combat-ref")
    with pytest.raises(ValueError, match="needs the option 'ref_site'"):
        make_harmonizer("combat-ref", ref_site=None)


def test_bad_option_value_is_reported_at_fit():
    X, sites, cov = _data()
    est = make_harmonizer("combat", engine="gpu")  # stored unchanged, as sklearn requires
    assert est.get_params()["engine"] == "gpu"
    with pytest.raises(ValueError, match="engine must be one of"):
        est.fit(X, sites, cov)
    with pytest.raises(ValueError, match="not the address 'tcp://"):
        make_harmonizer("combat", engine="dask", client="tcp://10.0.0.1:8786").fit(X, sites, cov)


def test_combat_gam_equals_library_gam_combat():
    X, sites, cov = _data()
    got = make_harmonizer("combat-gam").fit_transform(X, sites, cov)
    expected = GAMComBat(smooth_terms=("age",)).fit_transform(X, sites, cov)
    np.testing.assert_array_equal(got, expected)
    got = make_harmonizer("combat-gam", smooth="age", eb=False).fit_transform(X, sites, cov)
    np.testing.assert_array_equal(got, GAMComBat(eb=False).fit_transform(X, sites, cov))


def test_combat_and_combat_ref_equal_library_combat():
    X, sites, cov = _data()
    got = make_harmonizer("combat").fit_transform(X, sites, cov)
    np.testing.assert_array_equal(got, ComBat().fit_transform(X, sites, cov))
    got = make_harmonizer("combat-ref", ref_site="b").fit_transform(X, sites, cov)
    np.testing.assert_array_equal(got, ComBat(ref_site="b").fit_transform(X, sites, cov))
    np.testing.assert_array_equal(got[sites == "b"], X[sites == "b"])


def test_dask_engine_through_the_registry_equals_numpy():
    da = pytest.importorskip("dask.array")
    X, sites, cov = _data()
    for name, options in (("combat", {}), ("combat-gam", {}), ("combat-ref", {"ref_site": "c"})):
        expected = make_harmonizer(name, **options).fit_transform(X, sites, cov)
        est = make_harmonizer(name, engine="dask", chunk=5, **options)
        got = est.fit_transform(da.from_array(X, chunks=(-1, 5)), sites, cov)
        assert isinstance(got, da.Array)
        np.testing.assert_allclose(got.compute(), expected, rtol=0, atol=1e-11)


def test_none_is_identity_and_checks_shapes():
    X, sites, cov = _data()
    est = make_harmonizer("none")
    out = est.fit_transform(X.astype(np.float32), sites, cov)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, X.astype(np.float32).astype(np.float64))
    assert clone(est).get_params() == {"engine": "numpy", "chunk": None, "client": None}
    with pytest.raises(ValueError, match="sites has 3 labels but X has 90 subjects"):
        est.fit(X, sites[:3])
    with pytest.raises(ValueError, match="X has 5 features, but IdentityHarmonizer is expecting"):
        est.transform(X[:, :5], sites)


def test_registry_import_is_cheap():
    code = (
        "import sys, harmonization.registry as r; r.harmonizer_names(); "
        "heavy = [m for m in ('dask', 'distributed', 'sklearn', 'scipy') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_harmonization_imports_neither_sites_nor_consortium():
    files = sorted(PACKAGE.glob("*.py"))
    assert len(files) > 5
    offenders = {f.name: _imported_roots(f) & {"sites", "consortium"} for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}
