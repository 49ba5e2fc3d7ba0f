"""Every registered method carries its paper and code, in its record and its docstring."""
import re

import pytest

from gradwise.registry import FAMILIES, KINDS, methods, register

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


@pytest.mark.parametrize("m", RECORDS, ids=lambda m: m.name)
def test_family_is_the_package_the_method_lives_in(m):
    # the folder layout follows the records: gradwise.<family>.<module>
    assert m.family in FAMILIES
    assert m.entry.startswith(f"gradwise.{m.family}."), (m.entry, m.family)
    assert m in methods(family=m.family)


def test_every_family_package_registers_something():
    assert {m.family for m in RECORDS} == set(FAMILIES)


def test_register_outside_a_family_package_needs_a_family():
    def made_up():
        """A made-up method."""

    with pytest.raises(ValueError, match="not in a family package"):
        register(kind="loss", paper="x", year=2020, arxiv=None, code=None)(made_up)
    with pytest.raises(ValueError, match="Invalid family"):
        register(kind="loss", paper="x", year=2020, arxiv=None, code=None, family="nope")(made_up)
    with pytest.raises(ValueError, match="Invalid family"):
        methods(family="nope")


def test_info_is_read_only():
    rec = RECORDS[0]
    with pytest.raises(TypeError):
        rec.info["x"] = 1  # type: ignore[index]
