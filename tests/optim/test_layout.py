"""The optim package's layout rules (issue 9): small modules, no private imports, one export mechanism."""
import ast
import importlib
from pathlib import Path

import gradwise.optim as go
from gradwise.registry import methods

PKG = Path(go.__file__).parent
MODULES = sorted(PKG.glob("*.py"))


def test_no_module_over_500_lines():
    sizes = {m.name: len(m.read_text(encoding="utf-8").splitlines()) for m in MODULES}
    assert not {n: s for n, s in sizes.items() if s > 500}


def test_no_private_name_is_imported_from_another_module():
    # what two modules share is a public name (of an underscore module, such as _adam or _state)
    bad = []
    for m in MODULES:
        for node in ast.walk(ast.parse(m.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gradwise"):
                bad += [f"{m.name}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not (node.module == "gradwise.optim" and a.name in
                                                             {"_adam", "_functional", "_fused", "_state"})]
    assert not bad


def test_every_public_module_lists_all_and_the_package_exports_it():
    for m in MODULES:
        if m.stem.startswith("_"):
            continue
        mod = importlib.import_module(f"gradwise.optim.{m.stem}")
        assert hasattr(mod, "__all__"), m.name
        assert all(getattr(go, n) is getattr(mod, n) for n in mod.__all__), m.name
    for rec in methods(family="optim"):
        assert getattr(go, rec.name) is rec.load(), rec.name
    # the names users have always imported from the package
    for name in ("create", "param_groups", "GradwiseOptimizer", "GradTransform"):
        assert name in go.__all__
