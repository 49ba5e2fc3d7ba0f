"""The optim package exports like every family: each public module lists ``__all__`` and the package re-exports it
(module size and private imports are checked for every module by tests/test_layout.py)."""
import importlib
from pathlib import Path

import gradwise.optim as go
from gradwise.registry import methods

PKG = Path(go.__file__).parent
MODULES = sorted(PKG.glob("*.py"))


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
