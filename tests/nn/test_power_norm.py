"""PowerNorm against golden data from the authors' MaskPowerNorm (training across the warm-up boundary, eval), its
buffers' semantics, errors, state_dict round trip and torch.compile."""
from pathlib import Path

import pytest
import torch

from gradwise._kernels import family
from gradwise.nn import PowerNorm, power_norm
from gradwise.registry import get
from numerics import assert_close_to_stored

GOLDEN = torch.load(Path(__file__).resolve().parents[1] / "data" / "powernorm_golden.pt")
KEYS = ("y", "grad_x", "grad_weight", "grad_bias", "running_phi", "ema_gz")


def _replay(case):
    """Train a PowerNorm through the case's steps; yield (step, {quantity: ours}) after each, then the eval output."""
    m = PowerNorm(case["c"], warmup_iters=case["warmup_iters"], **case["kwargs"]).to(case["dtype"])
    with torch.no_grad():
        m.weight.copy_(case["init"]["weight"])
        m.bias.copy_(case["init"]["bias"])
    st = case["steps"]
    for s in range(st["x"].shape[0]):
        x = st["x"][s].clone().requires_grad_(True)
        mask = None if st["pad_mask"] is None else st["pad_mask"][s]
        m.weight.grad = m.bias.grad = None
        y = m(x, pad_mask=mask)
        y.backward(st["grad_output"][s])
        yield s, dict(y=y.detach(), grad_x=x.grad, grad_weight=m.weight.grad, grad_bias=m.bias.grad,
                      running_phi=m.running_phi.clone(), ema_gz=m.ema_gz.clone(), iters=m.iters.clone())
    m.eval()
    with torch.no_grad():
        yield "eval", dict(y=m(case["eval"]["x"], pad_mask=case["eval"]["pad_mask"]))


@pytest.mark.parametrize("path", ["fused", "torch"])
@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_matches_authors_mask_powernorm(case, path, monkeypatch):
    """Every step's output, gradients and buffers, across the warm-up boundary, then eval mode. float64 within a
    few ulps of the stored values; float32 within a loose relative tolerance (a chain of reductions). Both the
    kernels (nn/csrc/power_norm.cpp, where built) and the torch ops."""
    if path == "fused":
        if not family("nn").available():
            pytest.skip(f"nn kernels unavailable: {family('nn').error()}")
    else:
        monkeypatch.setattr(power_norm, "_use_fused", lambda *args: False)
    f64 = case["dtype"] == torch.float64
    assert case["steps"]["x"].shape[0] > case["warmup_iters"] + 1  # the case does cross the boundary
    for s, ours in _replay(case):
        expected = case["eval"] if s == "eval" else {k: v[s] for k, v in case["steps"].items() if v is not None}
        for key, val in ours.items():
            if key == "iters":
                assert torch.equal(val, expected[key])
            elif f64:
                assert_close_to_stored(val, expected[key], ulps=64)
            else:
                scale = float(expected[key].abs().max())
                torch.testing.assert_close(val, expected[key], rtol=2e-5, atol=2e-5 * scale)


def test_warmup_uses_batch_statistic_then_running_statistic():
    """During warm-up the output does not depend on running_phi; after it, the output is x-scaled by it."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4) * 3
    m = PowerNorm(4, warmup_iters=2)
    m.running_phi.fill_(100.0)
    y1 = m(x)
    xs = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(y1, xs / torch.sqrt((xs * xs).mean((0, 1)) + 1e-5))
    assert torch.allclose(m.running_phi.flatten(), (xs * xs).mean((0, 1)))  # step 1: the cumulative mean is var
    m(x)
    phi = m.running_phi.flatten().clone()
    y3 = m(x)  # step 3 > warmup_iters: normalizes by the running statistic of before this step
    torch.testing.assert_close(y3, xs / torch.sqrt(phi + 1e-5))


def test_padding_positions_do_not_enter_the_statistic():
    torch.manual_seed(1)
    x = torch.randn(6, 2, 4)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 3:] = True
    x2 = x.clone()
    x2[3:, 1] = 1e3  # garbage at the padded positions
    a, b = PowerNorm(4), PowerNorm(4)
    ya, yb = a(x, pad), b(x2, pad)
    torch.testing.assert_close(a.running_phi, b.running_phi)
    torch.testing.assert_close(ya[~pad.t()], yb[~pad.t()])


def test_no_host_sync_and_iters_counts_training_steps_only():
    m = PowerNorm(4, warmup_iters=3)
    x = torch.randn(3, 2, 4)
    for _ in range(4):
        m(x).sum().backward()
    m.eval()
    m(x)
    assert int(m.iters) == 4
    assert m.ema_gz.abs().sum() > 0


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(2)
    xs = [torch.randn(4, 3, 8) for _ in range(6)]
    a = PowerNorm(8, warmup_iters=2)
    for x in xs[:3]:
        a(x).square().sum().backward()
    b = PowerNorm(8, warmup_iters=2)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"weight", "bias", "running_phi", "ema_gz", "iters"}
    for x in xs[3:]:
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = a(xa), b(xb)
        ya.square().sum().backward()
        yb.square().sum().backward()
        assert torch.equal(ya, yb) and torch.equal(xa.grad, xb.grad)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_features=0), "num_features"), (dict(num_features=6, eps=0.0), "eps"),
    (dict(num_features=6, alpha_fwd=1.5), "alpha_fwd"), (dict(num_features=6, alpha_bkw=-0.1), "alpha_bkw"),
    (dict(num_features=6, warmup_iters=-1), "warmup_iters"), (dict(num_features=6, warmup_iters=2.5), "warmup_iters"),
    (dict(num_features=6, group_num=4), "group_num"), (dict(num_features=6, group_num=0), "group_num"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"Invalid {match}"):
        PowerNorm(**kwargs)


def test_bad_inputs():
    m = PowerNorm(4)
    with pytest.raises(ValueError, match=r"Invalid x: shape \(3, 2, 5\)"):
        m(torch.randn(3, 2, 5))
    with pytest.raises(ValueError, match="Invalid x"):
        m(torch.randn(4))
    with pytest.raises(ValueError, match=r"Invalid pad_mask.*\(2, 3\)"):
        m(torch.randn(3, 2, 4), torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="Invalid pad_mask"):
        m(torch.randn(3, 2, 4), torch.zeros(2, 3))


def test_registered():
    rec = get("PowerNorm")
    assert rec.kind == "module" and rec.arxiv == "2003.07845" and "sIncerass/powernorm" in rec.code


@pytest.mark.parametrize("warmup", [2, 1, 0])
def test_compiles_and_matches_eager(warmup):
    # warmup 0 and 1: the first compiled call is already past warm-up (wrong weight grads and ema_gz were seen
    # there when the training step was traced)
    torch._dynamo.reset()
    torch.manual_seed(3)
    x = torch.randn(4, 3, 8)
    pad = torch.zeros(3, 4, dtype=torch.bool)
    pad[2, 2:] = True
    a, b = PowerNorm(8, warmup_iters=warmup), PowerNorm(8, warmup_iters=warmup)
    fn = torch.compile(b, backend="aot_eager")
    w = torch.randn(4, 3, 8)
    for _ in range(4):
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = a(xa, pad), fn(xb, pad)
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        torch.testing.assert_close(yb, ya)
        torch.testing.assert_close(xb.grad, xa.grad)
        torch.testing.assert_close(b.weight.grad, a.weight.grad)
        torch.testing.assert_close(b.bias.grad, a.bias.grad)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v)
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(fn(x, pad), a(x, pad))
    torch._dynamo.reset()


@pytest.mark.parametrize("path", ["fused", "torch"])
def test_an_all_padding_batch_leaves_the_running_statistic_unchanged(path, monkeypatch):
    if path == "torch":
        monkeypatch.setattr(power_norm, "_use_fused", lambda *args: False)
    norm = PowerNorm(8, warmup_iters=3)
    norm(torch.randn(5, 2, 8)).sum().backward()
    phi = norm.running_phi.clone()
    for _ in range(4):  # inside warm-up and after it
        x = torch.randn(5, 2, 8, requires_grad=True)
        norm(x, pad_mask=torch.ones(2, 5, dtype=torch.bool)).sum().backward()
        torch.testing.assert_close(norm.running_phi, phi, rtol=1e-6, atol=0)
        assert torch.isfinite(x.grad).all() and torch.isfinite(norm.ema_gz).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_leaves_warmup_on_time(dtype):
    # 10002 is not a float16/bfloat16 number: the step count must not be compared in the input's dtype
    norm = PowerNorm(8).to(dtype)
    norm.iters.fill_(10_001)
    norm.running_phi.fill_(100.0)
    y = norm(torch.randn(6, 4, 8, dtype=dtype))
    assert y.dtype == dtype
    assert float(y.detach().float().std()) < 0.3  # normalized by running_phi = 100, not by the batch statistic (std 1)


def test_bad_dtype_empty_batch_and_double_backward_are_refused():
    norm = PowerNorm(8)
    with pytest.raises(ValueError, match=r"Invalid x: dtype torch.float16 \(accepted: the layer's dtype"):
        norm(torch.randn(3, 2, 8, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"Invalid x: dtype torch.int64"):
        norm(torch.ones(3, 2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"Invalid x: shape \(0, 3, 8\) has no positions"):
        norm(torch.randn(0, 3, 8))
    assert torch.equal(norm.running_phi, torch.ones(1, 8, 1, 1)) and int(norm.iters) == 0  # untouched
    for fused in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            if not fused:
                mp.setattr(power_norm, "_use_fused", lambda *args: False)
            x = torch.randn(3, 2, 8, requires_grad=True)
            (g,) = torch.autograd.grad(norm(x).pow(2).sum(), x, create_graph=True)
            with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
                g.sum().backward()
