"""Drop-in behaviour of every gradwise optimizer: state_dict, validation, dtypes, non-finite steps."""
import copy

import pytest
import torch

import gradwise.optim as go
from gradwise.registry import methods
from optim_cases import CASES, make
from optim_problem import make_params, set_grads

NAMES = list(CASES)


def test_every_registered_optimizer_has_a_case():
    assert {m.name for m in methods(kind="optimizer")} <= {n.split("-")[0] for n in NAMES}


def _model_params(dtype=torch.float64):
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, dtype=dtype)) for s in [(8, 4, 3, 3), (8,), (16, 8), (1,)]]


def _grads(params, t):
    g = torch.Generator().manual_seed(100 + t)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g, dtype=torch.float64) * (50.0 if t == 5 else 1.0)
                  + 0.3 * p.detach().double()).to(p.dtype)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_is_bit_identical(name, fused):
    params = _model_params()
    opt = make(name, params, fused=fused)
    for t in range(9):
        _grads(params, t)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    snapshot = [p.detach().clone() for p in params]
    for t in range(9, 20):
        _grads(params, t)
        opt.step()
    # fresh parameters and optimizer, loaded from the checkpoint
    fresh = [torch.nn.Parameter(s.clone()) for s in snapshot]
    opt2 = make(name, fresh, fused=fused)
    opt2.load_state_dict(saved)
    for t in range(9, 20):
        _grads(fresh, t)
        opt2.step()
    for a, b in zip(params, fresh):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes_and_state_dtype(name, dtype):
    params = _model_params(dtype)
    opt = make(name, params)
    for t in range(4):
        _grads(params, t)
        opt.step()
    for p in params:
        assert p.dtype == dtype and torch.isfinite(p).all()
        for k, v in opt.state[p].items():
            if torch.is_tensor(v) and v.is_floating_point():
                assert v.dtype == dtype, (name, k)


@pytest.mark.parametrize("name", NAMES)
def test_step_moves_parameters_and_leaves_grad_alone(name):
    params = _model_params()
    opt = make(name, params)
    _grads(params, 0)
    grads = [p.grad.clone() for p in params]
    before = [p.detach().clone() for p in params]
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(params, before))
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g), "step() must not write into p.grad"


@pytest.mark.parametrize("name", NAMES)
def test_skip_nonfinite_leaves_params_and_state_untouched(name):
    params = _model_params()
    opt = make(name, params, skip_nonfinite=True)
    for t in range(3):
        _grads(params, t)
        opt.step()
    before_p = [p.detach().clone() for p in params]
    before_s = copy.deepcopy(opt.state_dict())
    _grads(params, 3)
    params[1].grad[0] = float("nan")
    params[2].grad[1, 1] = float("inf")
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, before_p))
    after_s = opt.state_dict()
    for k, st in before_s["state"].items():
        for key, v in st.items():
            w = after_s["state"][k][key]
            assert torch.equal(v, w) if torch.is_tensor(v) else v == w, (name, key)
    assert all(g["skipped_steps"] == 1 for g in opt.param_groups)
    _grads(params, 4)
    opt.step()  # a finite step still goes through
    assert any(not torch.equal(a, b) for a, b in zip(params, before_p))
    assert opt.param_groups[0]["skipped_steps"] == 1


def test_skip_nonfinite_does_not_skip_large_finite_gradients():
    # finite float32 gradients whose max-norms would overflow if summed are still finite
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(2)]
    opt = go.Lion(params, lr=1e-3, skip_nonfinite=True)
    for p in params:
        p.grad = torch.full((3,), 3e38)
    opt.step()
    assert "skipped_steps" not in opt.param_groups[0]
    for p in params:
        assert torch.equal(p.detach(), torch.full((3,), -1e-3))


@pytest.mark.parametrize("name", NAMES)
def test_without_skip_nonfinite_nan_propagates_like_torch(name):
    params = _model_params()
    opt = make(name, params)
    _grads(params, 0)
    params[2].grad.fill_(float("nan"))
    opt.step()
    ref = [torch.nn.Parameter(p.detach().clone()) for p in _model_params()]
    torch_opt = torch.optim.Adam(ref)
    _grads(ref, 0)
    ref[2].grad.fill_(float("nan"))
    torch_opt.step()
    assert not torch.isfinite(ref[2]).all()
    # no silent guard: the NaN reaches the parameter or the state (Lion's sign maps NaN to 0)
    tensors = [params[2]] + [v for v in opt.state[params[2]].values() if torch.is_tensor(v)]
    assert any(not torch.isfinite(t).all() for t in tensors)


@pytest.mark.parametrize("name", NAMES)
def test_sparse_gradient_is_rejected(name):
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = make(name, [p])
    p.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


BAD = [
    ("lr", -1.0), ("lr", float("nan")), ("weight_decay", -0.1),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("arg,value", BAD)
def test_invalid_hyperparameters_name_the_argument(name, arg, value):
    with pytest.raises(ValueError, match=arg):
        make(name, _model_params(), **{arg: value})


@pytest.mark.parametrize("cls,kw,arg", [
    (go.AdaBelief, dict(betas=(1.0, 0.999)), r"betas\[0\]"),
    (go.AdaBelief, dict(betas=(0.9,)), "betas"),
    (go.AdaBelief, dict(eps=-1e-8), "eps"),
    (go.AdamP, dict(delta=-0.1), "delta"),
    (go.AdamP, dict(wd_ratio=-1), "wd_ratio"),
    (go.SGDP, dict(momentum=1.0), "momentum"),
    (go.SGDP, dict(dampening=2.0), "dampening"),
    (go.Lion, dict(betas=(0.9, -0.1)), r"betas\[1\]"),
    (go.LionK, dict(k="nope"), "k"),
    (go.LionK, dict(k="lp", p=3.0), "p"),
    (go.SPAM, dict(reset_interval=0), "reset_interval"),
    (go.SPAM, dict(spike_threshold=-1), "spike_threshold"),
    (go.SPAM, dict(clip_delay=1.5), "clip_delay"),
    (go.StableSPAM, dict(gamma1=1.5), "gamma1"),
    (go.StableSPAM, dict(beta1_schedule_steps=0), "beta1_schedule_steps"),
    (go.SGDSaI, dict(momentum=-0.1), "momentum"),
    (go.OrthoAdamW, dict(eps=-1.0), "eps"),
])
def test_specific_invalid_arguments(cls, kw, arg):
    with pytest.raises(ValueError, match=arg):
        cls(_model_params(), **kw)


def test_bad_param_group_is_not_added():
    params = _model_params()
    opt = go.AdaBelief(params[:2])
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": params[2:], "lr": -1.0})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_scheduler_closure_zero_grad(name):
    params = _model_params()
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 1e-4}]
    opt = make(name, groups)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    lr0 = opt.param_groups[0]["lr"]

    def closure():
        opt.zero_grad()
        loss = sum((p.double() ** 2).sum() for p in params)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss) and loss > 0
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr0 / 2)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5e-4)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("name", NAMES)
def test_params_without_grad_are_left_alone(name):
    params = _model_params()
    opt = make(name, params)
    _grads(params, 0)
    params[0].grad = None
    before = params[0].detach().clone()
    opt.step()
    assert torch.equal(params[0], before)
    assert len(opt.state[params[0]]) == 0


def test_conformance_problem_float32_close_to_float64():
    # the float64 golden problem run in float32 stays close: no precision-losing paths
    for name in ["AdaBelief", "AdamP", "SPAM", "StableSPAM"]:
        p64 = make_params()
        p32 = [torch.nn.Parameter(p.detach().float()) for p in p64]
        o64, o32 = make(name, p64), make(name, p32)
        for t in range(20):
            set_grads(p64, t)
            for a, b in zip(p32, p64):
                a.grad = b.grad.float()
            o64.step()
            o32.step()
        for a, b in zip(p32, p64):
            torch.testing.assert_close(a.double(), b.detach(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_fused_and_foreach_paths_agree(name):
    runs = []
    for fused in (True, False):
        params = _model_params()
        opt = make(name, params, fused=fused)
        for t in range(12):
            _grads(params, t)
            if t == 3:  # a non-contiguous gradient goes through a contiguous copy
                params[2].grad = params[2].grad.t().contiguous().t()
                assert not params[2].grad.is_contiguous()
            opt.step()
        runs.append(params)
    for a, b in zip(*runs):  # OrthoAdamW's one-element tensor included: both paths define its ⊥ part as 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_true_needs_a_supported_dtype():
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.bfloat16))
    opt = go.AdaBelief([p], fused=True)
    p.grad = torch.randn(3, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="fused=True"):
        opt.step()
    with pytest.raises(ValueError, match="fused"):
        go.AdaBelief([p], fused="yes")
