"""The preference family's layout rules (issue 9): no module over 500 lines, and no private name imported
from another module (what two modules share is a public name of a shared module)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "gradwise"
MODULES = sorted([*(SRC / "preference").rglob("*.py"), *(SRC / "schedules").rglob("*.py")])


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_module_is_short_and_imports_no_private_name(path):
    text = path.read_text()
    assert text.count("\n") <= 500, f"{path.name}: {text.count(chr(10))} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("gradwise")):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{path.name} imports {private} from {node.module}"
