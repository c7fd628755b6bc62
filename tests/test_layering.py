"""The layering of the package, read from the imports of every module (static, no import).

core < interface < operators | linalg < compare, plot < report, landscapes < cli: operators
know nothing of the algorithms, algorithms nothing of the operators, nothing below the top
imports cli / plot / compare / report / landscapes, the report and landscape layers do not
import cli, track and integrations (the tracker and its training-loop callbacks) sit on top
and do not import cli, and no package imports another package's private module or private name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "curvops"
TRACKING = ("curvops.track", "curvops.integrations")  # on top: operators, linalg, compare, plot
TOP = (
    "curvops.cli", "curvops.plot", "curvops.compare", "curvops.report", "curvops.landscapes",
    *TRACKING,
)  # fmt: skip
ABOVE_COMPARE = ("curvops.cli", "curvops.report", "curvops.landscapes", *TRACKING)

# importer prefix -> module prefixes it must never import
FORBIDDEN = {
    "curvops.core": ("curvops.operators", "curvops.linalg", "curvops.interface", *TOP),
    "curvops.interface": ("curvops.operators", "curvops.linalg", *TOP),
    "curvops.operators": ("curvops.linalg", *TOP),
    "curvops.linalg": ("curvops.operators", *TOP),
    "curvops.distributed": ("curvops.operators", "curvops.linalg", *TOP),
    "curvops.compare": ABOVE_COMPARE,
    "curvops.plot": ABOVE_COMPARE,
    "curvops.report": ("curvops.cli",),
    "curvops.landscapes": ("curvops.cli",),
    "curvops.track": ("curvops.cli", "curvops.integrations"),
    "curvops.integrations": ("curvops.cli",),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name or None) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out += [(node.module, a.name) for a in node.names]
    return [(m, n) for m, n in out if m.startswith("curvops")]


MODULES = sorted(ROOT.rglob("*.py"))


def _package(module: str) -> str:
    """The package a module belongs to (curvops.operators.exact, curvops.core, ...)."""
    path = ROOT.parent / Path(*module.split("."))
    return module if path.is_dir() else module.rpartition(".")[0]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_layers(path):
    me = _module_name(path)
    banned = next((v for k, v in FORBIDDEN.items() if me == k or me.startswith(k + ".")), ())
    for module, _ in _imports(path):
        assert not module.startswith(banned), f"{me} imports {module}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_module_or_name_across_packages(path):
    me = _module_name(path)
    mine = _package(me)
    for module, name in _imports(path):
        private_module = any(part.startswith("_") for part in module.split(".")[1:])
        private_name = name is not None and name.startswith("_") and name != "__all__"
        if private_module or private_name:
            assert _package(module) == mine, f"{me} imports private {module}:{name}"


def test_cli_jobs_and_demo_do_not_import_each_other():
    for a, b in (("jobs", "demo"), ("demo", "jobs")):
        imported = {m for m, _ in _imports(ROOT / "cli" / f"{a}.py")}
        assert f"curvops.cli.{b}" not in imported, f"cli/{a}.py imports cli/{b}.py"


def test_the_rules_see_real_imports():
    """The parser finds the imports that exist (a rule over nothing would pass anything)."""
    found = {m for m, _ in _imports(ROOT / "operators" / "kronecker" / "ekfac.py")}
    assert "curvops.core.eigh" in found and "curvops.operators.kronecker.kfac" in found
