"""PowerNorm's kernels (nn/csrc/power_norm.cpp) against its torch path: random inputs in training across the
warm-up boundary and in eval, with and without a pad mask, in groups; and clear errors for bad tensors."""
import pytest
import torch

from gradwise._kernels import family
from gradwise.nn import PowerNorm, power_norm

# compares a fused kernel with torch's ops: .ci/run repeats it per ATEN_CPU_CAPABILITY
pytestmark = [pytest.mark.numerics, pytest.mark.skipif(not family("nn").available(),
                                                      reason=f"nn kernels unavailable: {family('nn').error()}")]

OPS = torch.ops.gradwise_nn if family("nn").available() else None
TOL = {torch.float64: 1e-11, torch.float32: 2e-5}


def _close(a, b, dtype, what):
    """Relative per element plus the tolerance times the largest magnitude (sums cancel to near zero)."""
    tol = TOL[dtype]
    scale = float(b.abs().max()) if b.numel() else 0.0
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(scale, 1e-30), msg=lambda m: f"{what}: {m}")


def _run(fused, monkeypatch, dtype, t, b, c, groups, masked, steps, warmup, seed=0):
    """Trains a PowerNorm on the path asked for; returns per-step results and eval outputs (no grad and grad)."""
    with monkeypatch.context() as mp:
        if not fused:
            mp.setattr(power_norm, "_use_fused", lambda *args: False)
        g = torch.Generator().manual_seed(seed)
        m = PowerNorm(c, warmup_iters=warmup, group_num=groups).to(dtype)
        with torch.no_grad():
            m.weight.copy_(1 + 0.5 * torch.randn(c, generator=g, dtype=dtype))
            m.bias.copy_(0.5 * torch.randn(c, generator=g, dtype=dtype))
        out = []
        for _ in range(steps):
            x = (torch.randn(t, b, c, generator=g, dtype=dtype) * 2 + 0.3).requires_grad_(True)
            pad = None
            if masked:
                lengths = torch.randint(1, t + 1, (b,), generator=g)
                pad = torch.arange(t)[None, :] >= lengths[:, None]
            m.weight.grad = m.bias.grad = None
            y = m(x, pad_mask=pad)
            y.backward(torch.randn(t, b, c, generator=g, dtype=dtype))
            out.append(dict(y=y.detach(), grad_x=x.grad, grad_w=m.weight.grad, grad_b=m.bias.grad,
                            running_phi=m.running_phi.clone(), ema_gz=m.ema_gz.clone()))
        m.eval()
        x = torch.randn(t, b, c, generator=g, dtype=dtype).requires_grad_(True)
        with torch.no_grad():
            y_ng = m(x)
        y_g = m(x)
        y_g.sum().backward()
        out.append(dict(eval_no_grad=y_ng, eval_grad=y_g.detach(), eval_grad_x=x.grad))
        return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("t,b,c,groups", [(7, 5, 24, 1), (9, 3, 13, 1), (6, 4, 32, 4), (40, 32, 64, 2)])
def test_fused_matches_torch_path_across_warmup_and_in_eval(dtype, masked, t, b, c, groups, monkeypatch):
    # warm-up of 2 steps, 5 steps: batch statistic, cumulative running mean, then the running statistic
    kw = dict(dtype=dtype, t=t, b=b, c=c, groups=groups, masked=masked, steps=5, warmup=2)
    fused, ref = _run(True, monkeypatch, **kw), _run(False, monkeypatch, **kw)
    for step, (a, r) in enumerate(zip(fused, ref)):
        for key in r:
            _close(a[key], r[key], dtype, f"step {step} {key}")


def test_the_fused_path_is_taken_and_falls_back_for_other_dtypes(monkeypatch):
    taken = []
    real = power_norm._use_fused
    monkeypatch.setattr(power_norm, "_use_fused", lambda *a: taken.append(real(*a)) or taken[-1])
    m = PowerNorm(8)
    m(torch.randn(3, 2, 8, requires_grad=True)).sum().backward()
    m.to(torch.bfloat16)
    y = m(torch.randn(3, 2, 8, dtype=torch.bfloat16))  # the kernels are float32/float64: the torch path runs
    assert taken == [True, False] and y.dtype == torch.bfloat16


def test_results_do_not_depend_on_the_thread_count():
    x = torch.randn(64, 32, 48)
    gy = torch.randn_like(x)
    res = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            m = PowerNorm(48, group_num=3)
            xr = x.clone().requires_grad_(True)
            m(xr).backward(gy)
            res.append((xr.grad, m.weight.grad, m.running_phi.clone(), m.ema_gz.clone()))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*res):
        assert torch.equal(a, b)


def _args(dtype=torch.float32, t=3, b=2, c=4):
    x = torch.randn(t, b, c, dtype=dtype)
    return dict(x=x, weight=torch.ones(c, dtype=dtype), bias=torch.zeros(c, dtype=dtype),
                running_phi=torch.ones(1, c, 1, 1, dtype=dtype), iters=torch.ones(1, dtype=torch.long),
                pad_mask=torch.zeros(b, t, dtype=torch.bool), eps=1e-5, alpha_fwd=0.9, warmup_iters=10, groups=1)


@pytest.mark.parametrize("change, match", [
    (dict(x=torch.randn(6, 4)), r"x must be \(T, B, C\)"),
    (dict(x=torch.randn(3, 2, 4, dtype=torch.float16)), "x must be float32 or float64"),
    (dict(x=torch.randn(3, 4, 2).transpose(1, 2)), "x must be contiguous"),
    (dict(weight=torch.ones(4, dtype=torch.float64)), "weight must be Float, got Double"),
    (dict(bias=torch.zeros(5)), r"bias must have C = 4 elements .* got shape \[5\]"),
    (dict(running_phi=torch.ones(8)[::2]), "running_phi must be contiguous"),
    (dict(iters=torch.ones(1)), "iters must be Long"),
    (dict(iters=torch.ones(2, dtype=torch.long)), "iters must have one element"),
    (dict(pad_mask=torch.zeros(3, 2, dtype=torch.bool)), r"pad_mask must be \(B, T\) = \(2, 3\)"),
    (dict(pad_mask=torch.zeros(2, 3)), "pad_mask must be Bool"),
    (dict(groups=3), "groups = 3 must divide C = 4"),
])
def test_forward_kernel_rejects_bad_tensors_before_writing(change, match):
    args = {**_args(), **change}
    phi_before = args["running_phi"].clone()
    with pytest.raises(RuntimeError, match=match):
        OPS.power_norm_forward(*args.values())
    assert torch.equal(args["running_phi"], phi_before)  # nothing written


def _bwd_args(c=4):
    a = _args(c=c)
    y, r, stats = OPS.power_norm_forward(*a.values())
    return dict(grad_y=torch.randn_like(y), x=a["x"], r=r, stats=stats, weight=a["weight"],
                ema_gz=torch.zeros(1, c, 1, 1), alpha_bkw=0.9, groups=1)


@pytest.mark.parametrize("change, match", [
    (dict(grad_y=torch.randn(3, 2, 5)), r"grad_y must have x's shape"),
    (dict(grad_y=torch.randn(3, 2, 4, dtype=torch.float64)), "grad_y must be Float"),
    (dict(r=torch.ones(6, 2)), r"r must be \(T\*B, groups\) = \(6, 1\)"),
    (dict(stats=torch.ones(2, 4)), r"stats must be \(3, C\)"),
    (dict(ema_gz=torch.zeros(4, dtype=torch.float64)), "ema_gz must be Float"),
    (dict(weight=torch.ones(3)), "weight must have C = 4 elements"),
])
def test_backward_kernel_rejects_bad_tensors_before_writing(change, match):
    args = {**_bwd_args(), **change}
    ema_before = args["ema_gz"].clone()
    with pytest.raises(RuntimeError, match=match):
        OPS.power_norm_backward(*args.values())
    assert torch.equal(args["ema_gz"], ema_before)


def test_eval_kernel_rejects_bad_tensors():
    a = _args()
    with pytest.raises(RuntimeError, match="running_phi must have C = 4 elements"):
        OPS.power_norm_eval(a["x"], a["weight"], a["bias"], torch.ones(3), 1e-5, 1)
    with pytest.raises(RuntimeError, match="groups = 0 must divide C = 4"):
        OPS.power_norm_eval(a["x"], a["weight"], a["bias"], a["running_phi"], 1e-5, 0)
