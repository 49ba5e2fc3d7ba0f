"""The layout rules of docs/architecture.md, checked on the source tree.

No module under src/ is over MAX_LINES lines, and no module imports a private name (a name starting
with "_") from another module: what two modules share is a public name of a shared module
(``_common``-style modules are fine; their names are public).
"""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "gradwise"
MAX_LINES = 500
MODULES = sorted(p for p in SRC.rglob("*.py"))


def _rel(p: Path) -> str:
    return str(p.relative_to(SRC.parent))


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_module_is_small(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{_rel(path)} has {n} lines (at most {MAX_LINES}): split it"


def _is_module(package: str, name: str) -> bool:
    """Whether ``package.name`` is a module or package of gradwise (importing an underscore *module*
    is fine: its names are its public interface)."""
    parts = package.split(".")
    if parts[0] != "gradwise":
        return False
    base = SRC.joinpath(*parts[1:], name)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _private_imports(tree: ast.AST, module: str) -> list[str]:
    """``from X import _name`` lines where ``X._name`` is not a module; ``module`` is the dotted name."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            source = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                source = ".".join(package + ([node.module] if node.module else []))
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__") \
                        and not _is_module(source, alias.name):
                    out.append(f"line {node.lineno}: from {source} import {alias.name}")
    return out


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_no_private_name_imported_across_modules(path):
    dotted = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
    if path.name == "__init__.py":
        dotted += ".__init__"  # so that its package is itself
    found = _private_imports(ast.parse(path.read_text()), dotted)
    assert not found, f"{_rel(path)} imports private names: " + "; ".join(found)


# Which families each family may import (docs/architecture.md, "What may import what"). Shared modules
# (registry, _validate, _autoexport, _deprecation, _kernels, docsections) may be imported by any; no family
# imports arena, cli, docs or bench. Imports inside functions count too.
SHARED = {"registry", "_validate", "_autoexport", "_deprecation", "_kernels", "docsections", "__init__"}
ALLOWED = {
    "optim": set(),
    "losses": set(),
    "metrics": {"losses"},
    "calibration": {"losses", "metrics"},
    "data_weighting": {"losses", "schedules"},
    "nn": {"losses"},
    "schedules": set(),
    "preference": set(),
    "distributed": set(),
    "federated": set(),
    "tta": set(),
    "unlearning": set(),
    "continual": {"metrics"},
    "diffusion": set(),
    "rl": set(),
    "bandits": set(),
    "peft": set(),
    "compression": set(),
    "sciml": set(),
    "diagnostics": set(),
    "robustness": {"losses"},
}


def _gradwise_imports(path: Path) -> set[str]:
    """The top-level gradwise packages/modules ``path`` imports (``gradwise.losses.ldr`` -> ``losses``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "gradwise" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("family", sorted(ALLOWED))
def test_family_imports_only_what_the_layout_allows(family):
    from gradwise.registry import FAMILIES

    assert set(ALLOWED) == set(FAMILIES), "a new family needs its line in ALLOWED (and docs/architecture.md)"
    bad = {}
    for path in sorted((SRC / family).rglob("*.py")):
        extra = _gradwise_imports(path) - SHARED - ALLOWED[family] - {family}
        if extra:
            bad[_rel(path)] = sorted(extra)
    assert not bad, f"{family} imports families it may not: {bad}"
