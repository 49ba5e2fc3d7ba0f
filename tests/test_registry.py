"""Every registered method carries its paper and code, in its record and its docstring."""
import re

import pytest

from gradwise.registry import KINDS, methods

RECORDS = methods()


def test_registry_is_not_empty_and_names_are_unique():
    names = [m.name.lower() for m in RECORDS]
    assert len(names) >= 13 and len(names) == len(set(names))


@pytest.mark.parametrize("m", RECORDS, ids=lambda m: m.name)
def test_record_and_docstring_cite_the_paper(m):
    assert m.kind in KINDS
    assert 1990 <= m.year <= 2026
    assert m.paper and m.summary
    assert m.code is None or re.match(r"https?://\S+$", m.code), m.code
    obj = m.load()
    doc = obj.__doc__ or ""
    assert len(doc.strip()) > 80, f"{m.name}: docstring too short to state the math"
    if m.arxiv:
        assert re.fullmatch(r"\d{4}\.\d{4,5}", m.arxiv), m.arxiv
        assert m.arxiv in doc, f"{m.name}: docstring does not cite arXiv {m.arxiv}"
