"""Regenerate docs/methods.md and docs/coverage.md from the registry.

Usage: ``python tools/docs/gen_docs.py`` (from anywhere; works without installing gradwise).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from gradwise.docs import write_docs  # noqa: E402


def main() -> None:
    """Write both generated docs and list them."""
    for path in write_docs(ROOT):
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
