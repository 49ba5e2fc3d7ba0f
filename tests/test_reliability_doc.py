"""docs/reliability.md is there and names what it measured: each suite tools/docs/gen_reliability.py runs, and
only test modules and functions that exist. (Fast: nothing is rerun; `python tools/docs/gen_reliability.py`
regenerates the figures.)"""
from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"


def _script():
    spec = importlib.util.spec_from_file_location("gen_reliability", ROOT / "tools" / "docs" / "gen_reliability.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)  # module level: dataclasses and tables only, no torch, no pytest run
    return mod


def _doc() -> str:
    assert DOC.is_file(), "docs/reliability.md is missing: run `python tools/docs/gen_reliability.py`"
    return DOC.read_text(encoding="utf-8")


def test_doc_names_every_suite_the_script_runs():
    text = _doc()
    suites = _script().SUITES
    assert suites
    missing = [m for m in suites if f"`{m}`" not in text]
    assert not missing, f"docs/reliability.md does not name {missing}: run `python tools/docs/gen_reliability.py`"


def test_every_test_module_the_doc_names_exists():
    named = set(re.findall(r"\btests/[\w/]+\.py\b", _doc()))
    assert named
    assert not [m for m in sorted(named) if not (ROOT / m).is_file()]


def test_every_test_function_the_script_selects_exists():
    missing = []
    for area in _script().AREAS:
        for module, funcs in area.select.items():
            tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
            defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            missing += [f"{module}::{f}" for f in funcs or () if f not in defined]
    assert not missing, f"tools/docs/gen_reliability.py selects tests that do not exist: {missing}"


def test_doc_has_the_runs_figures_and_is_linked_from_the_readme():
    text = _doc()
    assert re.search(r"^- Machine: .+", text, re.M) and re.search(r"^- Date: \d{4}-\d\d-\d\d", text, re.M)
    assert re.search(r"^\| \*\*total\*\* \| \d+ \|", text, re.M)
    assert "(docs/reliability.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
