"""Bad input and faults, run for every optimizer in the registry (issue 8, items 1, 8, 9).

In the spirit of torch's OptimizerInfo matrix: the cases are generated from
``gradwise.registry.methods(kind="optimizer")``, so an optimizer is covered
the day it is registered (with its tests/optim_cases.py configuration when it
has one, else its defaults). What is promised:

* a step whose state does not fit its parameter (resized parameter, state of
  another shape or dtype, gradient of another shape) raises a RuntimeError
  naming the parameter index and the state key, and changes nothing:
  parameters, state tensors, step counters, group counters;
* every constructor argument given a bad value is refused with a ValueError
  that names that argument (not another one), also through ``add_param_group``;
* ``load_state_dict`` of another optimizer's state_dict (another class, other
  hyperparameter names, other state keys, invalid values) raises a ValueError
  naming what differs and leaves the optimizer as it was.
"""
from __future__ import annotations

import copy
import inspect
import math
import re

import pytest
import torch

from gradwise.registry import methods
from optim_cases import CASES, NO_FUSED_KERNEL

OPTIMIZERS = sorted(m.name for m in methods(kind="optimizer"))
CLASSES = {m.name: m.load() for m in methods(kind="optimizer")}


pytestmark = pytest.mark.usefixtures("one_thread")


def build(name, params, **extra):
    """The registered optimizer ``name`` with its test configuration (or its defaults)."""
    kwargs = CASES.get(name, {})
    if name in NO_FUSED_KERNEL and extra.get("fused") is True:
        extra = {**extra, "fused": None}
    return CLASSES[name](params, **{**kwargs, **extra})


def trained(name, fused, steps=2):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 4))
    b = torch.nn.Parameter(torch.randn(4))
    opt = build(name, [w, b], fused=fused)
    for _ in range(steps):
        w.grad, b.grad = torch.randn(6, 4), torch.randn(4)
        opt.step()
    return w, b, opt


def everything(opt, params):
    """Parameters, state (tensors and counters) and groups, copied."""
    return (
        [p.detach().clone() for p in params],
        [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()} for p in params],
        [{k: (v.clone() if torch.is_tensor(v) else copy.deepcopy(v)) for k, v in g.items() if k != "params"}
         for g in opt.param_groups],
    )


def same(a, b):
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype \
            and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _resized(w, b, opt):
    w.data = torch.randn(12, 4)
    w.grad, b.grad = torch.randn(12, 4), torch.randn(4)
    return "parameter 0"


def _reshaped(w, b, opt):
    sd = opt.state_dict()
    for st in sd["state"].values():
        for k, v in list(st.items()):
            if torch.is_tensor(v) and v.shape == (6, 4):
                st[k] = v.reshape(4, 6).clone()
    opt.load_state_dict(sd)
    w.grad, b.grad = torch.randn(6, 4), torch.randn(4)
    return "parameter 0"


def _param_dtype(w, b, opt):
    # what module.double() does to a parameter: its .data replaced by another dtype, state left as it was
    b.data = b.data.double()
    b.grad = torch.randn(4, dtype=torch.float64)
    return "of parameter 1 has shape (4,), dtype torch.float32"


def _grad_shape(w, b, opt):
    # the gradient of the old shape stays when .data is swapped (autograd refuses to assign one directly)
    w.grad, b.grad = torch.randn(6, 4), torch.randn(4)
    w.data = torch.randn(4, 6)
    return "parameter 0"


FAULTS = {"resized-param": _resized, "reshaped-state": _reshaped, "param-dtype": _param_dtype,
          "grad-shape": _grad_shape}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_mismatched_state_raises_and_changes_nothing(name, fused, fault):
    w, b, opt = trained(name, fused)
    where = FAULTS[fault](w, b, opt)
    before = everything(opt, [w, b])
    with pytest.raises(RuntimeError, match=re.escape(where)):
        opt.step()
    after = everything(opt, [w, b])
    assert same(before[0], after[0]), f"{name}: a parameter was written before the error"
    assert same(before[1], after[1]), f"{name}: state (tensors or step counters) changed before the error"
    assert same(before[2], after[2]), f"{name}: a group counter moved before the error"


# ----------------------------------------------------------------- validation names the argument
def _arguments(cls):
    """(name, default) of every hyperparameter ``cls.__init__`` takes."""
    sig = inspect.signature(cls.__init__)
    return [(n, p.default) for n, p in sig.parameters.items()
            if n not in ("self", "params") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def _bad_values(default):
    """Values no hyperparameter with this default accepts."""
    if isinstance(default, bool):
        return ["yes", None, 1.5]
    if isinstance(default, (int, float)):
        return ["x", float("nan"), -1e30, [1]]
    if default == ():  # a sequence of objects (grad_transforms)
        return ["x", 3, [1]]
    if isinstance(default, tuple):
        return ["x", (float("nan"),) * len(default), (2.0,) * len(default), tuple(default[:1])]
    if isinstance(default, str):
        return ["no-such-value", 3, [1]]
    return ["x"]


# (class, argument, value) a documented meaning makes valid
_DOCUMENTED = {("StableSPAM", "gamma1", -1e30): "never"}  # gamma1=-1 means betas[0]; other negatives are bad
CONSTRUCTOR_CASES = [(name, arg, bad) for name in OPTIMIZERS for arg, d in _arguments(CLASSES[name])
                     for bad in _bad_values(d) if d is not inspect.Parameter.empty]


@pytest.mark.parametrize("name,arg,bad", CONSTRUCTOR_CASES,
                         ids=[f"{n}-{a}-{b!r}" for n, a, b in CONSTRUCTOR_CASES])
def test_a_bad_argument_is_refused_naming_it(name, arg, bad):
    with pytest.raises(ValueError) as err:
        CLASSES[name]([torch.nn.Parameter(torch.randn(3, 2))], **{arg: bad})
    first = str(err.value).splitlines()[0]
    # the message names this argument first ("Invalid betas[0]: ..." for an entry of betas), not another
    assert re.match(rf"Invalid {re.escape(arg)}\b", first), first
    assert "accepted" in first, first


# gradient transforms and optimizer wrappers are held to the same rule
OTHER_KINDS = {m.name: (m.kind, m.load()) for m in methods(kind="grad-transform") + methods(kind="optimizer-wrapper")}
OTHER_CASES = [(name, arg, bad) for name, (_, cls) in sorted(OTHER_KINDS.items()) for arg, d in _arguments(cls)
               for bad in _bad_values(d) if d is not inspect.Parameter.empty]


@pytest.mark.parametrize("name,arg,bad", OTHER_CASES, ids=[f"{n}-{a}-{b!r}" for n, a, b in OTHER_CASES])
def test_a_bad_transform_or_wrapper_argument_is_refused_naming_it(name, arg, bad):
    kind, cls = OTHER_KINDS[name]
    args = ([torch.nn.Parameter(torch.randn(3, 2))],) if kind == "optimizer-wrapper" else ()
    with pytest.raises(ValueError) as err:
        cls(*args, **{arg: bad})
    first = str(err.value).splitlines()[0]
    assert re.match(rf"Invalid {re.escape(arg)}\b", first) and "accepted" in first, first


GROUP_CASES = [(name, arg, bad) for name, arg, bad in CONSTRUCTOR_CASES
               if arg in CLASSES[name]([torch.nn.Parameter(torch.randn(2))], **CASES.get(name, {})).defaults]


@pytest.mark.parametrize("name,arg,bad", GROUP_CASES, ids=[f"{n}-{a}-{b!r}" for n, a, b in GROUP_CASES])
def test_a_bad_group_value_is_refused_naming_it(name, arg, bad):
    opt = build(name, [torch.nn.Parameter(torch.randn(3, 2))])
    with pytest.raises(ValueError, match=rf"Invalid {re.escape(arg)}\b"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], arg: bad})
    assert len(opt.param_groups) == 1


# ----------------------------------------------------------------- load_state_dict
PAIRS = [(a, b) for a in OPTIMIZERS for b in OPTIMIZERS if a != b]


@pytest.mark.parametrize("src,dst", PAIRS)
def test_another_optimizers_state_dict_fails_at_load(src, dst):
    _, _, other = trained(src, False)
    w, b, opt = trained(dst, False)
    before = everything(opt, [w, b])
    with pytest.raises(ValueError, match=rf"saved by {src}.*expected a state_dict of {dst}"):
        opt.load_state_dict(copy.deepcopy(other.state_dict()))
    assert same(before, everything(opt, [w, b]))


def _stripped(opt):
    """The state_dict as torch.optim would save it (no gradwise class name)."""
    sd = copy.deepcopy(opt.state_dict())
    sd.pop("gradwise_optimizer")
    return sd


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_missing_hyperparameters_fail_at_load_naming_them(name):
    w, b, opt = trained(name, False)
    sd = _stripped(opt)
    sd["param_groups"][0].pop("lr")
    before = everything(opt, [w, b])
    with pytest.raises(ValueError, match=r"parameter group 0 lacks the hyperparameters \['lr'\]"):
        opt.load_state_dict(sd)
    assert same(before, everything(opt, [w, b]))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_other_state_keys_fail_at_load_naming_them(name):
    w, b, opt = trained(name, False)
    before = everything(opt, [w, b])
    sd = _stripped(opt)
    key = sorted(k for k in sd["state"][0] if k != "step")[0]
    sd["state"][0]["exp_avg_of_another_optimizer"] = sd["state"][0].pop(key)
    with pytest.raises(ValueError, match=rf"parameter 0 lacks \['{key}'\] and has keys {name} does not use "
                                         r"\['exp_avg_of_another_optimizer'\]"):
        opt.load_state_dict(sd)
    assert same(before, everything(opt, [w, b]))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_an_invalid_saved_value_fails_at_load_naming_it(name):
    w, b, opt = trained(name, False)
    before = everything(opt, [w, b])
    sd = _stripped(opt)
    sd["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match=r"parameter group 0: Invalid lr: -1.0"):
        opt.load_state_dict(sd)
    assert same(before, everything(opt, [w, b]))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_own_state_dict_still_loads_with_and_without_the_class_name(name):
    w, b, opt = trained(name, False)
    for sd in (copy.deepcopy(opt.state_dict()), _stripped(opt)):
        opt.load_state_dict(sd)
        w.grad, b.grad = torch.randn(6, 4), torch.randn(4)
        opt.step()
        assert all(torch.isfinite(p).all() for p in (w, b))


def test_lion_state_dict_without_class_name_fails_in_adabelief():
    # a torch-format (unmarked) state_dict of another algorithm is caught by its hyperparameters
    _, _, lion = trained("Lion", False)
    w, b, opt = trained("AdaBelief", False)
    with pytest.raises(ValueError, match=r"lacks the hyperparameters \[.*'eps'.*\]"):
        opt.load_state_dict(_stripped(lion))
