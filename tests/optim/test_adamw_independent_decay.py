"""AdamW(independent_weight_decay=True), Wortsman et al. 2023 (arXiv 2309.14322, §3.2.2): the decay is
s_t * lambda (schedule factor only), not lr_t * lambda, on both paths."""
import copy

import pytest
import torch

import gradwise.optim as go
from optim_problem import make_params, set_grads

PATHS = [pytest.param({"foreach": True}, id="foreach"), pytest.param({"fused": True}, id="fused")]


def _params():
    return [torch.nn.Parameter(p.detach().double()) for p in make_params()]


def _schedule(t):  # warm-up then decay: s_t in (0, 1]
    return min(1.0, (t + 1) / 3) * (0.5 ** max(0, t - 3))


@pytest.mark.parametrize("path", PATHS)
def test_decay_is_schedule_times_lambda_not_lr(path):
    eta, lam, steps = 3e-2, 1e-2, 8
    ours, ref = _params(), _params()
    opt = go.AdamW(ours, lr=eta, weight_decay=lam, independent_weight_decay=True, **path)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule)
    # reference, transcribed from the paper's rule p <- p - s_t eta Delta - s_t lambda p: torch's AdamW without
    # decay for the Adam step, the decay s_t * lambda applied by hand first (torch's AdamW decays first too)
    ref_opt = torch.optim.AdamW(ref, lr=eta, weight_decay=0.0, foreach=True)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref_opt, _schedule)
    for t in range(steps):
        set_grads(ours, t)
        set_grads(ref, t)
        s_t = ref_opt.param_groups[0]["lr"] / eta
        assert s_t == pytest.approx(_schedule(t))
        with torch.no_grad():
            for p in ref:
                p.mul_(1 - s_t * lam)
        opt.step()
        ref_opt.step()
        sched.step()
        ref_sched.step()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert opt.param_groups[0]["peak_lr"] == eta


def test_independent_of_the_peak_lr_size():
    # with no gradient signal (zero grads: Adam's update is 0), the weights shrink by (1 - lambda) a step
    # whatever eta is; torch's rule shrinks by (1 - eta * lambda)
    for eta in (1e-3, 1e-1):
        p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
        opt = go.AdamW([p], lr=eta, weight_decay=0.1, independent_weight_decay=True)
        for _ in range(2):
            p.grad = torch.zeros_like(p)
            opt.step()
        torch.testing.assert_close(p.detach(), torch.full((3,), 0.9 ** 2, dtype=torch.float64))


def test_paths_agree_and_equal_scaled_torch_decay_at_constant_lr():
    eta, lam = 1e-2, 1e-3
    runs = {}
    for name, path in (("foreach", {"foreach": True}), ("fused", {"fused": True})):
        ps = _params()
        opt = go.AdamW(ps, lr=eta, weight_decay=lam, independent_weight_decay=True, **path)
        for t in range(5):
            set_grads(ps, t)
            opt.step()
        runs[name] = ps
    ref = _params()
    ref_opt = torch.optim.AdamW(ref, lr=eta, weight_decay=lam / eta, foreach=True)  # NanoDO's lambda / eta
    for t in range(5):
        set_grads(ref, t)
        ref_opt.step()
    for a, b, c in zip(runs["foreach"], runs["fused"], ref):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(b, c, rtol=1e-12, atol=1e-14)


def test_explicit_peak_lr_per_group_and_default_rule_untouched():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = go.AdamW([{"params": [a]}, {"params": [b], "peak_lr": 0.5, "lr": 0.05}], lr=0.1, weight_decay=0.1,
                   independent_weight_decay=True)
    assert [g["peak_lr"] for g in opt.param_groups] == [0.1, 0.5]
    a.grad, b.grad = torch.zeros(2), torch.zeros(2)
    opt.step()
    torch.testing.assert_close(a.detach(), torch.full((2,), 0.9))              # s = 1
    torch.testing.assert_close(b.detach(), torch.full((2,), 1 - 0.1 * 0.1))    # s = 0.05 / 0.5
    plain = go.AdamW([torch.nn.Parameter(torch.ones(2))], lr=0.1, weight_decay=0.1)
    assert plain.param_groups[0]["independent_weight_decay"] is False and plain.param_groups[0]["peak_lr"] is None


def test_torch_state_dict_loads_as_the_default_rule():
    ps, ref = _params(), _params()
    theirs = torch.optim.AdamW(ref, lr=1e-2, weight_decay=1e-2, foreach=True)
    for t in range(3):
        set_grads(ref, t)
        theirs.step()
    ours = go.AdamW(ps, lr=1e-2, weight_decay=1e-2, foreach=True)
    with torch.no_grad():
        for p, q in zip(ps, ref):
            p.copy_(q)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))  # torch's load shares same-dtype tensors
    assert ours.param_groups[0]["independent_weight_decay"] is False
    set_grads(ps, 3)
    set_grads(ref, 3)
    ours.step()
    theirs.step()
    for p, q in zip(ps, ref):
        assert torch.equal(p, q)


def test_bad_values_name_the_argument():
    p = [torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="Invalid peak_lr"):
        go.AdamW(p, independent_weight_decay=True, peak_lr=0.0)
    with pytest.raises(ValueError, match="Invalid independent_weight_decay"):
        go.AdamW(p, independent_weight_decay=1)
