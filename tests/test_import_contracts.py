"""Import contracts between the three packages, and a light command-line start.

Layers, lowest first: ``harmonization`` (the statistics library) imports neither
``sites`` nor ``consortium``; ``sites`` (the site agent a hospital runs)
never imports ``consortium``. The check walks the syntax tree of every module,
so imports inside functions, ``TYPE_CHECKING`` blocks and modules named by a
string (``importlib.import_module("...")``, ``__import__``, a lazy CLI command's
``LazyCommand("module", ...)``) count as much as top-level ones.

The start-up contract: ``confed --help`` and ``confed-site --help`` import none
of the heavy libraries (a deterministic proxy for "starts in well under 0.5 s";
the timing itself is ``benchmarks/bench_startup.py``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("harmonization", "sites", "consortium")
#: package -> packages it must never import
FORBIDDEN = {"harmonization": ("sites", "consortium"), "sites": ("consortium",)}
#: callables whose first (string) argument names a module they import
DYNAMIC_IMPORTERS = {"import_module", "__import__", "LazyCommand"}
HEAVY = (
    "numpy",
    "pandas",
    "scipy",
    "sklearn",
    "nibabel",
    "nilearn",
    "fastapi",
    "sqlalchemy",
    "dask",
    "matplotlib",
)


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    imported: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.imported}"


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` inside ``module``."""
    if level == 0:
        return name or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    base = parts[: len(parts) - (level - 1)] if level > 1 else parts
    return ".".join([*base, name] if name else base)


def imported_modules(source: str, module: str, is_package: bool = False):
    """Yield ``(line, imported module)`` for every import in ``source``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.level, node.module)
            yield node.lineno, base
            for alias in node.names:  # `from consortium import api` imports consortium.api
                yield node.lineno, f"{base}.{alias.name}" if base else alias.name
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if name in DYNAMIC_IMPORTERS and isinstance(first, ast.Constant):
                if isinstance(first.value, str):
                    yield node.lineno, first.value


def violations(source: str, module: str, is_package: bool = False) -> list[Violation]:
    """Imports in ``source`` (the code of ``module``) that break :data:`FORBIDDEN`."""
    banned = FORBIDDEN.get(module.split(".")[0], ())
    found = sorted(set(imported_modules(source, module, is_package)))  # in line order
    return [Violation(module, line, name) for line, name in found if name.split(".")[0] in banned]


def _modules() -> list[tuple[str, Path]]:
    out = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out.append((name, path))
    return out


def test_walk_sees_every_package():
    names = {name for name, _ in _modules()}
    assert {"harmonization", "sites.cli", "sites.agent", "consortium.cli.main"} <= names


def test_layers_are_respected():
    found = [
        str(v)
        for name, path in _modules()
        for v in violations(path.read_text(), name, path.name == "__init__.py")
    ]
    assert not found, "forbidden imports:\n" + "\n".join(found)


SYNTHETIC = '''\
import os
import consortium.api as api

def later():
    from consortium.simulate import to_toml
    import importlib
    importlib.import_module("consortium.report")
    return __import__("consortium")

from .. import consortium
from ..consortium.cli import main
from . import agent
'''


def test_synthetic_forbidden_imports_are_reported():
    found = violations(SYNTHETIC, "sites.fake")
    assert [(v.line, v.imported) for v in found] == [
        (2, "consortium.api"),
        (5, "consortium.simulate"),
        (5, "consortium.simulate.to_toml"),
        (7, "consortium.report"),
        (8, "consortium"),
        (10, "consortium"),
        (11, "consortium.cli"),
        (11, "consortium.cli.main"),
    ]
    assert str(found[0]) == "sites.fake:2 imports consortium.api"


def test_harmonization_may_import_neither_package():
    source = "from sites.atlas import Atlas\nimport numpy\nfrom consortium import errors\n"
    found = violations(source, "harmonization.combat")
    assert [str(v) for v in found] == [
        "harmonization.combat:1 imports sites.atlas",
        "harmonization.combat:1 imports sites.atlas.Atlas",
        "harmonization.combat:3 imports consortium",
        "harmonization.combat:3 imports consortium.errors",
    ]
    assert violations(source, "consortium.cli.main") == []  # the top layer may import all


def test_lazy_cli_commands_are_imports():
    source = 'LazyCommand("consortium.cli.coord", "init", "help")\n'
    assert [str(v) for v in violations(source, "sites.cli")] == [
        "sites.cli:1 imports consortium.cli.coord"
    ]


HELP_PROBE = """
import sys
from typer.testing import CliRunner
from {module} import app
result = CliRunner().invoke(app, {args!r})
assert result.exit_code == 0, result.output
print(" ".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("consortium.cli.main", ["--help"]),
        ("sites.cli", ["--help"]),
        *(
            ("consortium.cli.main", [group, "--help"])
            for group in ("site", "coord", "analyze", "predict", "proposal", "report", "demo")
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else " ".join(value),
)
def test_help_imports_no_heavy_library(module, args):
    probe = HELP_PROBE.format(module=module, args=args, heavy=HEAVY)
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"--help imported: {result.stdout.strip()}"
