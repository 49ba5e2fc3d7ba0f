"""Write one generated section of a markdown file, leaving the rest alone.

Several scripts write into ``docs/benchmarks.md`` (optimizer steps, loss
steps, ...); each owns the text between ``<!-- BEGIN name -->`` and
``<!-- END name -->`` and replaces only that.
"""
from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

__all__ = ["write_section", "save_results", "cpu_model", "machine_description"]


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


def save_results(res: dict, *, json_path: str | Path | None, markdown_path: str | Path | None, section: str,
                 markdown: str) -> None:
    """What every benchmark script does with its results: ``res`` as JSON to ``json_path`` and ``markdown`` as
    section ``section`` of ``markdown_path`` (each skipped when its path is None)."""
    if json_path:
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(res, indent=2), encoding="utf-8")
    if markdown_path:
        write_section(markdown_path, section, markdown)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for the machine line of a benchmark."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_description() -> str:
    """``"<cpu model>, <n> cores"``."""
    return f"{cpu_model()}, {os.cpu_count()} cores"
