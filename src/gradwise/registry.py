"""The method registry: one record per method, the single source of truth.

The CLI's ``methods`` table, ``docs/methods.md`` and the implemented column of
``docs/coverage.md`` are all generated from these records. A method registers
itself where it is defined::

    @register(kind="optimizer", paper="AdaBelief Optimizer: ...", year=2020,
              arxiv="2010.07468", code="https://github.com/juntang-zhuang/Adabelief-Optimizer")
    class AdaBelief(GradwiseOptimizer): ...
"""
from __future__ import annotations

import importlib
import re
import unicodedata
from dataclasses import dataclass, field

__all__ = ["Method", "register", "methods", "get", "KINDS", "registered_kinds", "normalize_text"]

# Every kind a record may have, including kinds planned for future families that have no
# method yet; the CLI offers only the kinds that have records (`registered_kinds`).
KINDS = ("optimizer", "optimizer-wrapper", "grad-transform", "loss", "metric", "calibration", "module",
         "sample-weighting", "training-helper", "preference", "stability")

# Packages whose import registers methods; `methods()` imports them all so the
# registry is complete no matter what the caller imported first.
_PACKAGES = ("gradwise.optim", "gradwise.losses", "gradwise.preference")

_REGISTRY: dict[str, "Method"] = {}


@dataclass(frozen=True)
class Method:
    """A registry record.

    name:   public name (the class or function name users call)
    kind:   one of KINDS
    paper:  the paper's title, as published
    year:   publication year
    arxiv:  arXiv id, or None when the paper has none
    code:   the authors' released code (URL), or None
    entry:  import path, ``module:attribute``
    summary: one line saying what it does
    seed:   True when the paper is one of the seed pages' papers
    """

    name: str
    kind: str
    paper: str
    year: int
    arxiv: str | None
    code: str | None
    entry: str
    summary: str
    seed: bool = True
    aliases: tuple[str, ...] = field(default=())

    def load(self):
        module, _, attr = self.entry.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def search_fields(self) -> tuple[str, ...]:
        """The texts :meth:`matches` searches: name, aliases, kind, paper title, summary, the arXiv id
        (also as ``arXiv:ID`` and its abs URL) and the authors' code URL."""
        fields = [self.name, *self.aliases, self.kind, self.paper, self.summary]
        if self.arxiv:
            fields += [self.arxiv, f"arXiv:{self.arxiv}", f"https://arxiv.org/abs/{self.arxiv}"]
        if self.code:
            fields.append(self.code)
        return tuple(fields)

    def matches(self, text: str) -> bool:
        """Whether ``text`` occurs in one of :meth:`search_fields`, ignoring case; a title also matches
        ignoring punctuation and accents (``"lion symbolic discovery"`` finds "Symbolic Discovery of ...")."""
        t = text.strip().lower()
        if not t:
            return True
        fields = self.search_fields()
        if any(t in f.lower() for f in fields):
            return True
        key = normalize_text(t)
        return bool(key) and key in normalize_text(self.paper)


def register(*, kind: str, paper: str, year: int, arxiv: str | None, code: str | None,
             summary: str | None = None, name: str | None = None, seed: bool = True,
             aliases: tuple[str, ...] = ()):
    """Class/function decorator adding a record for the decorated object."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def deco(obj):
        nm = name or obj.__name__
        doc = (obj.__doc__ or "").strip().splitlines()
        rec = Method(
            name=nm, kind=kind, paper=paper, year=year, arxiv=arxiv, code=code,
            entry=f"{obj.__module__}:{obj.__qualname__}",
            summary=summary or (doc[0] if doc else ""), seed=seed, aliases=aliases,
        )
        if nm in _REGISTRY and _REGISTRY[nm].entry != rec.entry:
            raise ValueError(f"method name {nm!r} registered twice ({_REGISTRY[nm].entry}, {rec.entry})")
        _REGISTRY[nm] = rec
        return obj

    return deco


def methods(text: str | None = None, kind: str | None = None) -> list[Method]:
    """All records (sorted by kind, then name), optionally filtered by text and kind."""
    for pkg in _PACKAGES:
        importlib.import_module(pkg)
    out = [m for m in _REGISTRY.values() if (kind is None or m.kind == kind) and (not text or m.matches(text))]
    return sorted(out, key=lambda m: (KINDS.index(m.kind), m.name.lower()))


def registered_kinds() -> tuple[str, ...]:
    """The kinds that have at least one record, in KINDS order."""
    present = {m.kind for m in methods()}
    return tuple(k for k in KINDS if k in present)


def normalize_text(text: str) -> str:
    """Lower case, without accents and punctuation, spaces collapsed: ``"Lion: Symbolic"`` -> ``"lion symbolic"``."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", ascii_text).split())


def get(name: str) -> Method:
    """The record for ``name`` (case-insensitive)."""
    for m in methods():
        if m.name.lower() == name.lower():
            return m
    raise KeyError(f"no method named {name!r}; see `gradwise methods`")
