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
import types
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Method", "register", "methods", "get", "KINDS", "FAMILIES", "family_of", "registered_kinds",
           "normalize_text"]

# Every kind a record may have, including kinds planned for future families that have no
# method yet; the CLI offers only the kinds that have records (`registered_kinds`).
KINDS = ("optimizer", "optimizer-wrapper", "grad-transform", "loss", "metric", "calibration", "module",
         "sample-weighting", "schedule", "training-helper", "preference", "stability", "comm-hook", "fl-strategy",
         "test-time-adaptation",
         "unlearning", "continual-learning", "diffusion-objective", "guidance", "sampler",
         "rl-objective", "rl-component", "bandit", "adapter",
         "quantizer", "pruning", "sciml-objective", "ode-solver", "diagnostic", "robustness")

# The families: each is the package ``gradwise.<family>`` and every record's family is the package
# its entry lives in. This tuple is the one list of them: `methods()` imports each package so the
# registry is complete no matter what the caller imported first, and the docs, the CLI and the test
# suites derive theirs from the records.
FAMILIES = ("optim", "losses", "metrics", "calibration", "data_weighting", "nn", "schedules", "preference",
            "distributed", "federated", "tta", "unlearning", "continual", "diffusion", "rl", "bandits", "peft", "compression",
            "sciml", "diagnostics", "robustness")
_PACKAGES = tuple(f"gradwise.{f}" for f in FAMILIES)

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
    aliases: other names the CLI and ``gradwise.optim.create`` accept
    info:   family-specific fields, read-only (as timm's ``OptimInfo``): what the family's test suites,
            benchmarks and loops need to know about the method, so no list of method names is kept
            by hand outside the records. Each family documents its keys in docs/architecture.md.
    family: the package the entry lives in (``optim``, ``losses``, ...), one of FAMILIES
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
    info: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}), hash=False, compare=False)
    family: str = ""

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


def family_of(module: str) -> str:
    """The family of a module path: ``gradwise.losses.ldr`` -> ``losses``."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "gradwise" or parts[1] not in FAMILIES:
        raise ValueError(f"module {module!r} is not in a family package (gradwise.<family>, family one of "
                         f"{FAMILIES})")
    return parts[1]


def register(*, kind: str, paper: str, year: int, arxiv: str | None, code: str | None,
             summary: str | None = None, name: str | None = None, seed: bool = True,
             aliases: tuple[str, ...] = (), info: Mapping[str, Any] | None = None, family: str | None = None):
    """Class/function decorator adding a record for the decorated object.

    The decorated object must live in a family package (``gradwise.<family>.<module>``), which gives
    the record its family; only an object defined elsewhere (a test's made-up method) names its
    ``family``. ``info`` holds the family-specific fields its test suites and tools read (see :class:`Method`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def deco(obj):
        nm = name or obj.__name__
        if family is None:
            fam = family_of(obj.__module__)
        elif family in FAMILIES:
            fam = family
        else:
            raise ValueError(f"Invalid family: {family!r} (accepted: one of {FAMILIES})")
        doc = (obj.__doc__ or "").strip().splitlines()
        rec = Method(
            name=nm, kind=kind, paper=paper, year=year, arxiv=arxiv, code=code,
            entry=f"{obj.__module__}:{obj.__qualname__}",
            summary=summary or (doc[0] if doc else ""), seed=seed, aliases=aliases,
            info=types.MappingProxyType(dict(info or {})), family=fam,
        )
        if nm in _REGISTRY and _REGISTRY[nm].entry != rec.entry:
            raise ValueError(f"method name {nm!r} registered twice ({_REGISTRY[nm].entry}, {rec.entry})")
        _REGISTRY[nm] = rec
        return obj

    return deco


def methods(text: str | None = None, kind: str | None = None, family: str | None = None) -> list[Method]:
    """All records (sorted by kind, then name), optionally filtered by text, kind and family."""
    for pkg in _PACKAGES:
        importlib.import_module(pkg)
    if family is not None and family not in FAMILIES:
        raise ValueError(f"Invalid family: {family!r} (accepted: one of {FAMILIES})")
    out = [m for m in _REGISTRY.values() if (kind is None or m.kind == kind) and (not text or m.matches(text))
           and (family is None or m.family == family)]
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
