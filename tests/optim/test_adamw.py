"""gradwise.optim.AdamW against torch.optim.AdamW: the same trajectory on each path, interchangeable state."""
import inspect

import pytest
import torch

import gradwise.optim as go
from gradwise.registry import get
from optim_problem import make_params, set_grads

# compares a fused kernel with torch's ops: .ci/run repeats it per ATEN_CPU_CAPABILITY
pytestmark = pytest.mark.numerics

PATHS = [pytest.param({"foreach": True}, id="foreach"), pytest.param({"fused": True}, id="fused")]
KW = dict(lr=1e-2, weight_decay=1e-2)


def _params(dtype):
    return [torch.nn.Parameter(p.detach().to(dtype)) for p in make_params()]


def _grads(params, t):
    # the seeded problem's gradients (spikes included), made in float64 and cast
    shadow = [torch.nn.Parameter(p.detach().double()) for p in params]
    set_grads(shadow, t)
    for p, q in zip(params, shadow):
        p.grad = q.grad.to(p.dtype)


def _run(opt, params, steps, start=0):
    for t in range(start, start + steps):
        _grads(params, t)
        opt.step()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("extra", [{}, {"amsgrad": True}, {"maximize": True}, {"weight_decay": 0.0}],
                         ids=["plain", "amsgrad", "maximize", "no-decay"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_trajectory_is_torch_adamws_bit_for_bit(path, extra, dtype):
    # same operations in the same order (foreach) or torch's own kernel (fused): exactly equal
    ours, theirs = _params(dtype), _params(dtype)
    a = go.AdamW(ours, **KW | extra | path)
    b = torch.optim.AdamW(theirs, **KW | extra | path)
    for t in range(60):
        _grads(ours, t)
        _grads(theirs, t)
        a.step()
        b.step()
    start = _params(dtype)
    for p, q, p0 in zip(ours, theirs, start):
        assert torch.equal(p, q) and not torch.equal(p, p0)  # moved, and the same
    for p, q in zip(ours, theirs):
        for k in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if extra.get("amsgrad") else ()):
            assert torch.equal(a.state[p][k], b.state[q][k]), k


def test_defaults_and_signature_are_torchs():
    ours = inspect.signature(go.AdamW.__init__).parameters
    theirs = inspect.signature(torch.optim.AdamW.__init__).parameters
    for name in ("lr", "betas", "eps", "weight_decay", "amsgrad"):
        assert ours[name].default == theirs[name].default, name
    assert go.AdamW([torch.nn.Parameter(torch.zeros(2))]).defaults["maximize"] is False


@pytest.mark.parametrize("amsgrad", [False, True])
def test_state_dicts_are_interchangeable_with_torch(amsgrad):
    # 10 steps in one, saved, loaded into the other, 10 more: the same as 20 steps in torch's alone
    kw = KW | {"amsgrad": amsgrad, "foreach": True}
    ref = _params(torch.float64)
    ref_opt = torch.optim.AdamW(ref, **kw)
    _run(ref_opt, ref, 20)
    for first, second in ((torch.optim.AdamW, go.AdamW), (go.AdamW, torch.optim.AdamW)):
        ps = _params(torch.float64)
        opt = first(ps, **kw)
        _run(opt, ps, 10)
        sd = opt.state_dict()
        qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
        opt2 = second(qs, **kw)
        opt2.load_state_dict(sd)
        _run(opt2, qs, 10, start=10)
        for p, r in zip(qs, ref):
            assert torch.equal(p, r), (first.__name__, second.__name__)


def test_registry_record_and_test_cases():
    rec = get("AdamW")
    assert rec.load() is go.AdamW and rec.family == "optim" and rec.kind == "optimizer"
    assert (rec.arxiv, rec.year, rec.seed) == ("1711.05101", 2019, False)
    assert rec.paper == "Decoupled Weight Decay Regularization"
    assert set(rec.info["test_cases"]) == {"AdamW", "AdamW-amsgrad"}
    assert rec.info["bench"]["peer"] == "torch.optim.AdamW"
    from optim_cases import CASES
    assert {"AdamW", "AdamW-amsgrad"} <= set(CASES)  # so every registry-driven suite runs it


def test_fused_path_steps_a_non_contiguous_parameter_as_its_contiguous_copy():
    # torch 2.13's CPU fused AdamW kernel steps strided tensors wrongly; gradwise's fused path gives
    # the numbers torch's kernel gives on a contiguous copy
    g = torch.Generator().manual_seed(0)
    base = torch.randn(10, 5, 2, generator=g)
    strided = torch.nn.Parameter(base.clone()[..., 0])
    dense = torch.nn.Parameter(base[..., 0].contiguous())
    assert not strided.is_contiguous()
    a = go.AdamW([strided], **KW, fused=True)
    b = torch.optim.AdamW([dense], **KW, fused=True)
    for _ in range(10):
        grad = torch.randn(10, 5, generator=g)
        strided.grad, dense.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
    assert torch.equal(strided, dense)
