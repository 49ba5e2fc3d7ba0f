"""The generated docs are current, the seed table is sound, and registry records cite their papers."""
from __future__ import annotations

import re
from pathlib import Path

from gradwise.docs import (
    check_docs, coverage_markdown, methods_markdown, normalize_title, seed_matches, seed_papers,
)
from gradwise.registry import methods

ROOT = Path(__file__).resolve().parents[1]
ARXIV_ID = re.compile(r"^\d{4}\.\d{4,5}$")
URL = re.compile(r"^https?://\S+$")


def test_generated_docs_are_current():
    stale = check_docs(ROOT)
    assert not stale, f"stale generated docs {stale}: run `python tools/docs/gen_docs.py`"


def test_docs_are_deterministic():
    assert methods_markdown() == methods_markdown()
    assert coverage_markdown() == coverage_markdown()
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", methods_markdown() + coverage_markdown())


def test_seed_table_has_261_rows_with_idx_0_to_260():
    papers = seed_papers()
    assert len(papers) == 261
    assert [p.idx for p in papers] == list(range(261))


def test_seed_rows_are_valid():
    for p in seed_papers():
        where = f"seed {p.idx} ({p.title[:40]}...)"
        assert p.title.strip(), where
        assert p.status in ("planned", "out-of-scope"), f"{where}: status {p.status!r}"
        assert p.priority in ("A", "B", "C"), f"{where}: priority {p.priority!r}"
        assert (p.status == "planned") == (p.priority in ("A", "B")), f"{where}: status/priority disagree"
        assert p.issue in ("", "2", "3", "4"), f"{where}: issue {p.issue!r}"
        assert not (p.issue and p.status != "planned"), f"{where}: issue set on an out-of-scope paper"
        assert p.reason.strip(), f"{where}: no reason"
        assert not p.arxiv or ARXIV_ID.match(p.arxiv), f"{where}: bad arXiv id {p.arxiv!r}"


def test_seed_titles_are_unique_after_normalization():
    keys = [normalize_title(p.title) for p in seed_papers()]
    assert len(set(keys)) == len(keys)


def test_normalize_title_ignores_case_whitespace_and_punctuation():
    assert normalize_title("From $r$ to $Q^*$:  Your LM") == normalize_title("from r to Q^*: your lm")
    assert normalize_title("AdamP: Slowing Down") == "adamp slowing down"


def test_every_seed_record_matches_exactly_one_seed_title():
    papers = seed_papers()
    bad = []
    for m in methods():
        if m.seed:
            hits = seed_matches(m, papers)
            if len(hits) != 1:
                bad.append(f"{m.name}: paper {m.paper!r} matches {len(hits)} seed titles")
    assert not bad, "fix the paper title (or set seed=False):\n" + "\n".join(bad)


def test_every_record_has_year_and_code_url_or_none():
    bad = []
    for m in methods():
        if not isinstance(m.year, int) or not 1950 <= m.year <= 2100:
            bad.append(f"{m.name}: year {m.year!r}")
        if m.code is not None and not URL.match(m.code):
            bad.append(f"{m.name}: code must be a bare URL or None, got {m.code!r}")
        if m.arxiv is not None and not ARXIV_ID.match(m.arxiv):
            bad.append(f"{m.name}: arxiv must be an id like 2010.07468 or None, got {m.arxiv!r}")
    assert not bad, "\n".join(bad)
