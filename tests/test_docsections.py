import pytest

from gradwise.docsections import write_section


def test_sections_are_replaced_independently(tmp_path):
    p = tmp_path / "b.md"
    write_section(p, "a", "alpha 1")
    write_section(p, "b", "beta 1")
    write_section(p, "a", "alpha 2")
    text = p.read_text()
    assert "alpha 2" in text and "alpha 1" not in text and "beta 1" in text
    assert text.index("alpha 2") < text.index("beta 1")
    with pytest.raises(ValueError, match="name"):
        write_section(p, "bad name", "x")
