"""Each golden-data generator in tools/golden/ says where its reference values come from: the authors'
repository and the commit (or release) it ran, in its docstring, and writes into tests/data/."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "tools" / "golden").glob("make_*_golden.py"))


def test_every_generator_is_in_tools_golden():
    assert len(SCRIPTS) >= 15
    assert not list((ROOT / "tools").glob("make_*_golden.py")), "golden generators belong in tools/golden/"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_generator_names_its_repository_and_commit(script):
    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    assert re.search(r"github\.com/[\w.-]+/[\w.-]+", doc), f"{script.name}: docstring names no repository"
    assert re.search(r"\bcommit\b|@[0-9a-f]{7}|==\d+\.\d+", doc), f"{script.name}: docstring names no commit"
    assert f"tools/golden/{script.name}" in doc or "tests/data/" in doc, f"{script.name}: how to run it, what it writes"
