"""Write one generated section of a markdown file, leaving the rest alone.

Several scripts write into ``docs/benchmarks.md`` (optimizer steps, loss
steps, ...); each owns the text between ``<!-- BEGIN name -->`` and
``<!-- END name -->`` and replaces only that.
"""
from __future__ import annotations

import re
from pathlib import Path

__all__ = ["write_section"]


def write_section(path: str | Path, name: str, markdown: str, title: str = "# Benchmarks") -> None:
    """Replace section ``name`` of ``path`` with ``markdown`` (appended when absent; file created with ``title``)."""
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"Invalid name: {name!r} (accepted: letters, digits, '_', '.', '-')")
    path = Path(path)
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else f"{title}\n\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
