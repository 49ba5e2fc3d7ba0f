"""Every ``nn.Module`` the families define shows its real arguments: no ``**kwargs`` in ``__init__``, and a
loss module's keyword arguments are its functional twin's, with the same names and defaults.

The modules are found from the registry: every module file that registers a method (in any family: a
``LossModule`` twin also lives in ``gradwise.data_weighting``) is scanned for the ``nn.Module`` classes it
defines, so a new method file is covered without editing this test.
"""
from __future__ import annotations

import importlib
import inspect
import pydoc

import pytest
import torch
from torch import nn

from gradwise.losses._common import LossModule
from gradwise.registry import FAMILIES, methods

# Keyword parameters of a functional twin that its module deliberately does not take, and why.
EXCLUDED = {
    "ALDRLoss": {"return_lambdas"},  # the module always takes the new temperatures, to store them
}


def _method_files() -> list[str]:
    return sorted({m.entry.partition(":")[0] for m in methods()})


def _module_classes() -> list[type]:
    found = []
    for name in _method_files():
        mod = importlib.import_module(name)
        for attr, obj in vars(mod).items():
            if (isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == name
                    and not attr.startswith("_")):
                found.append(obj)
    return found


CLASSES = _module_classes()
TWINS = [c for c in CLASSES if getattr(c, "function", None) is not None]


def _kw_only(fn) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]


def test_the_scan_finds_every_loss_module():
    def subclasses(c):
        for s in c.__subclasses__():
            yield s
            yield from subclasses(s)

    ours = {c for c in subclasses(LossModule) if c.__module__.startswith(tuple(f"gradwise.{f}." for f in FAMILIES))}
    assert ours and ours <= set(CLASSES), sorted(c.__name__ for c in ours - set(CLASSES))
    assert len(TWINS) >= 20  # CompSumLoss, LDRLoss, ... : the scan is not silently empty


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_init_has_no_var_keyword(cls):
    params = inspect.signature(cls).parameters.values()
    assert not [p.name for p in params if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)], inspect.signature(cls)


@pytest.mark.parametrize("cls", TWINS, ids=lambda c: c.__name__)
def test_module_takes_its_functions_keyword_arguments(cls):
    fn = cls.function
    excluded = EXCLUDED.get(cls.__name__, set())
    assert set(getattr(cls, "excluded_arguments", ())) == excluded  # what its docstring leaves out
    expected = [(p.name, p.default) for p in _kw_only(fn) if p.name not in excluded]
    got = [(p.name, p.default) for p in _kw_only(cls)]
    assert got == expected, f"{cls.__name__}{inspect.signature(cls)} vs {fn.__name__}{inspect.signature(fn)}"
    # anything else the module takes (a dataset size, class centers) comes before the keyword arguments
    others = [p for p in inspect.signature(cls).parameters.values() if p.kind is not p.KEYWORD_ONLY]
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in others)
    assert not {p.name for p in others} & {n for n, _ in expected}


@pytest.mark.parametrize("cls", TWINS, ids=lambda c: c.__name__)
def test_help_shows_the_arguments(cls):
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    signature_line = next(line for line in text.splitlines() if line.lstrip(" |").startswith(f"{cls.__name__}("))
    for name, _ in ((p.name, p.default) for p in _kw_only(cls)):
        assert f"{name}:" in signature_line or f"{name}=" in signature_line, (name, signature_line)
        assert f"``{name}=" in (cls.__doc__ or ""), f"{cls.__name__} docstring does not list {name}"


def test_unknown_and_positional_hyperparameters_are_refused():
    from gradwise.losses import ALDRLoss, CompSumLoss, NDLoss, UNPGLoss

    with pytest.raises(TypeError, match="tua"):
        CompSumLoss(tua=1.5)
    with pytest.raises(TypeError):
        CompSumLoss(1.5)  # hyperparameters are keyword-only, as in the function
    with pytest.raises(TypeError, match="return_lambdas"):
        ALDRLoss(10, return_lambdas=True)
    with pytest.raises(TypeError, match="bogus"):
        NDLoss(torch.randn(3, 4), bogus=1)
    with pytest.raises(TypeError, match="bogus"):
        UNPGLoss(3, 4, bogus=1)
    with pytest.raises(ValueError, match="reduction"):
        CompSumLoss(reduction="avg")


def test_module_equals_its_function_with_defaults_and_with_arguments():
    from gradwise.losses import BDKDLoss, CompSumLoss, KDLoss, ZLoss, bdkd_loss, comp_sum_loss, kd_loss, z_loss

    g = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    target = torch.randint(0, 5, (6,), generator=g)
    assert torch.equal(CompSumLoss()(logits, target), comp_sum_loss(logits, target))
    assert torch.equal(CompSumLoss(tau=1.7, reduction="none")(logits, target),
                       comp_sum_loss(logits, target, tau=1.7, reduction="none"))
    assert torch.equal(BDKDLoss(temperature=2.0)(logits, teacher), bdkd_loss(logits, teacher, temperature=2.0))
    assert torch.equal(ZLoss(a=0.5)(logits, target), z_loss(logits, target, a=0.5))
    assert torch.equal(KDLoss(temperature=2.0)(logits, teacher), kd_loss(logits, teacher, temperature=2.0))
    assert repr(CompSumLoss()) == "CompSumLoss()" and repr(CompSumLoss(tau=1.7)) == "CompSumLoss(tau=1.7)"
