"""Fast paths of the losses agree with their reference formulation."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from gradwise.losses import correctness_aware_loss, ldr
from gradwise._kernels import family

# compares a fused kernel or stored data with torch's ops: .ci/run repeats it per ATEN_CPU_CAPABILITY
pytestmark = pytest.mark.numerics

KERNELS = family("losses")
needs_kernels = pytest.mark.skipif(not KERNELS.available(), reason=f"loss kernels unavailable: {KERNELS.error()}")


@needs_kernels
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_ldr_fused_kernel_matches_torch_ops(dtype, tol):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 13, generator=g, dtype=dtype) * 5)
    x[0, 0], x[1] = 30.0, -40.0  # softplus threshold branch and underflow
    x.requires_grad_(True)
    y = torch.randint(0, 13, (64,), generator=g)
    a = ldr._LDRSoftplusFused.apply(x, y, 3.0, 0.1)
    b = ldr._LDRSoftplus.apply(x, y, 3.0, 0.1)
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    ga, = torch.autograd.grad(a.sum(), x)
    gb, = torch.autograd.grad(b.sum(), x)
    torch.testing.assert_close(ga, gb, rtol=tol, atol=tol)


@needs_kernels
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("margin", [0.1, -2.0])
def test_ldr_fused_extremes_and_no_grad_path(dtype, tol, margin):
    # around the clamps of the kernel (softplus threshold 20, exp clamp 40), huge and tiny
    # logits, an all-negative row, a class count that leaves a vector remainder; and the
    # forward-only path (no gradient written) gives the same loss
    vals = torch.tensor([-1e4, -100.0, -40.0, -20.5, -1.0, 0.0, 19.9, 20.0, 20.1, 39.9, 40.0, 40.1, 88.0, 1e4],
                        dtype=dtype)
    x = vals[torch.randperm(len(vals), generator=torch.Generator().manual_seed(1))].repeat(5, 3)[:, :37]
    x[0] = -50.0 - torch.arange(37, dtype=dtype)
    y = torch.arange(5) * 7
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    a = ldr._LDRSoftplusFused.apply(xa, y, 0.5, margin)
    b = ldr._LDRSoftplus.apply(xb, y, 0.5, margin)
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    ga, = torch.autograd.grad(a.sum(), xa)
    gb, = torch.autograd.grad(b.sum(), xb)
    assert torch.isfinite(ga).all()
    torch.testing.assert_close(ga, gb, rtol=tol, atol=tol)
    with torch.no_grad():
        torch.testing.assert_close(ldr._LDRSoftplusFused.apply(x, y, 0.5, margin), a.detach(), rtol=0, atol=0)


@needs_kernels
def test_ldr_fused_float32_softplus_and_sigmoid_are_accurate_on_a_dense_grid():
    # the float kernel computes softplus/sigmoid with its own polynomial log1p: compare the loss and the
    # gradient with the float64 torch-ops path over logits from -30 to 30 (every branch of the kernel)
    x = torch.linspace(-30.0, 30.0, 64 * 97, dtype=torch.float64)
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))].reshape(64, 97)
    y = torch.randint(0, 97, (64,), generator=torch.Generator().manual_seed(1))
    _fused_float32_vs_torch_float64(x, y, 1.0, 0.1, loss_tol=(2e-6, 2e-6), grad_tol=(1e-5, 1e-7))


def _fused_float32_vs_torch_float64(x, y, lam, margin, *, loss_tol, grad_tol):
    """The kernel in float32 against the torch-ops path in float64 on the same (float32-rounded) logits."""
    x32 = x.float().requires_grad_(True)
    x64 = x32.detach().double().requires_grad_(True)
    a = ldr._LDRSoftplusFused.apply(x32, y, lam, margin)
    b = ldr._LDRSoftplus.apply(x64, y, lam, margin)
    torch.testing.assert_close(a.double(), b, rtol=loss_tol[0], atol=loss_tol[1])
    ga, = torch.autograd.grad(a.sum(), x32)
    gb, = torch.autograd.grad(b.sum(), x64)
    torch.testing.assert_close(ga.double(), gb, rtol=grad_tol[0], atol=grad_tol[1])


@needs_kernels
def test_ldr_fused_float32_small_lam_when_the_target_term_dominates():
    # lam = 0.02 with margin 0.5: exp(margin/lam) = e^25, and the target class dominates the softmax; the
    # kernel must not get the other classes' share by subtracting the target's term from the total
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, 50, generator=g, dtype=torch.float64)
    y = torch.randint(0, 50, (32,), generator=g)
    x[torch.arange(32), y] += 6.0
    _fused_float32_vs_torch_float64(x, y, 0.02, 0.5, loss_tol=(1e-5, 1e-6), grad_tol=(1e-4, 1e-6))


@needs_kernels
def test_ldr_fused_backward_scales_upstream_gradient_and_retains_graph():
    x = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 9, (6,))
    loss = ldr._LDRSoftplusFused.apply(x, y, 3.0, 0.1)
    w = torch.linspace(-2.0, 3.0, 6, dtype=torch.float64)
    g1, = torch.autograd.grad(loss, x, w, retain_graph=True)
    g2, = torch.autograd.grad(loss, x, 2 * w)
    torch.testing.assert_close(g2, 2 * g1)
    ref = ldr._LDRSoftplus.apply(x, y, 3.0, 0.1)
    torch.testing.assert_close(g1, torch.autograd.grad(ref, x, w)[0])


@needs_kernels
def test_ldr_fused_gradcheck():
    x = torch.randn(16, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (16,))
    assert torch.autograd.gradcheck(lambda z: ldr._LDRSoftplusFused.apply(z, y, 3.0, 0.1), (x,))


def test_correctness_aware_custom_backward_gradcheck():
    x = torch.randn(32, 10, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 10, (32,))
    assert torch.autograd.gradcheck(lambda z: correctness_aware_loss(z, y), (x,))
    assert torch.autograd.gradcheck(lambda z: correctness_aware_loss(z, y, balance=False), (x,))


@needs_kernels
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_top_confidence_kernel_matches_torch_ops(dtype, tol, monkeypatch):
    from gradwise.losses import correctness_aware as ca

    g = torch.Generator().manual_seed(1)
    z = torch.randn(50, 9, generator=g, dtype=dtype) * 4
    z[3] = 0.0  # ties: the first maximum wins, as torch.max
    y = torch.randint(0, 9, (50,), generator=g)
    runs = []
    for fused in (True, False):
        monkeypatch.setattr(ca, "_use_fused", lambda t, f=fused: f)
        x = z.clone().requires_grad_(True)
        loss = correctness_aware_loss(x, y)
        loss.backward()
        runs.append((loss.detach(), x.grad))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=tol, atol=tol)
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=tol, atol=tol)


@needs_kernels
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ldr_loss_reduced_in_the_kernel_matches_the_torch_path(reduction, monkeypatch):
    # ldr_loss reduces inside the fused kernel for mean/sum: values and gradients (ignore_index included),
    # an upstream gradient other than 1, and a second backward through a retained graph
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 7, (12,), generator=g)
    y[[2, 5]] = -100
    assert torch.autograd.gradcheck(lambda z: ldr.ldr_loss(z, y, lam=2.0, reduction=reduction),
                                    (x.clone().requires_grad_(True),))
    fused = x.clone().requires_grad_(True)
    a = ldr.ldr_loss(fused, y, lam=2.0, reduction=reduction)
    monkeypatch.setattr(ldr, "_use_fused", lambda t: False)
    plain = x.clone().requires_grad_(True)
    b = ldr.ldr_loss(plain, y, lam=2.0, reduction=reduction)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    (3 * a).backward(retain_graph=True)
    (3 * b).backward()
    torch.testing.assert_close(fused.grad, plain.grad, rtol=1e-12, atol=1e-12)
    assert (fused.grad[[2, 5]] == 0).all()
    first = fused.grad.clone()
    a.backward()  # retained graph: the kernel's gradient is recomputed, not reused
    torch.testing.assert_close(fused.grad, first * (4 / 3), rtol=1e-12, atol=1e-12)


@needs_kernels
def test_ldr_loss_with_every_target_ignored_is_nan_like_the_torch_path():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    out = ldr.ldr_loss(x, torch.full((3,), -100), reduction="mean")
    assert torch.isnan(out)
    out.backward()
    assert (x.grad == 0).all()


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["hinge_limit", "negative_margin", "one_class", "underflowed_row", "minus_inf_row"])
def test_ldr_fused_extreme_hyperparameters_and_rows_match_the_torch_path(dtype, case, monkeypatch):
    # small lam (the hinge limit), a large |margin|/lam, C = 1, and rows whose softplus all underflow: the
    # kernel's shift must be the exact max and its scores formed before dividing by lam
    x, y, lam, margin = {
        "hinge_limit": (torch.tensor([[5.0, 0.0], [0.0, 3.0], [1.0, 1.0]]), torch.tensor([0, 0, 1]), 1e-3, 0.2),
        "negative_margin": (torch.tensor([[0.0, 5.0, 1.0], [4.0, 0.0, 2.0]]), torch.tensor([0, 0]), 1e-3, -0.2),
        "one_class": (torch.tensor([[1.5], [-3.0]]), torch.tensor([0, 0]), 1.0, 200.0),
        "underflowed_row": (torch.full((2, 5), -200.0), torch.tensor([0, 3]), 0.1, 0.1),
        "minus_inf_row": (torch.tensor([[-float("inf")] * 4, [0.5, -1.0, 2.0, 0.0]]), torch.tensor([1, 2]), 0.1, 0.1),
    }[case]
    x = x.to(dtype)
    a = ldr.ldr_loss(x.clone().requires_grad_(True), y, lam=lam, margin=margin, reduction="none")
    fa = x.clone().requires_grad_(True)
    ldr.ldr_loss(fa, y, lam=lam, margin=margin).backward()
    monkeypatch.setattr(ldr, "_use_fused", lambda t: False)
    b = ldr.ldr_loss(x.clone().requires_grad_(True), y, lam=lam, margin=margin, reduction="none")
    fb = x.clone().requires_grad_(True)
    ldr.ldr_loss(fb, y, lam=lam, margin=margin).backward()
    assert torch.isfinite(a).all()
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(a, b.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(fa.grad, fb.grad, rtol=tol, atol=tol, equal_nan=True)


@needs_kernels
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ldr_fused_ignored_rows_with_nan_logits_do_not_leak(reduction):
    # like F.cross_entropy: an ignored row's logits (here NaN, e.g. padding) change neither the loss nor the
    # other rows' gradients, and get a zero gradient
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 5, generator=g)
    x[2] = float("nan")
    y = torch.tensor([1, 2, -100, -100])
    xa = x.clone().requires_grad_(True)
    out = ldr.ldr_loss(xa, y, reduction=reduction)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(xa.grad).all() and (xa.grad[2:] == 0).all()
    ref = ldr.ldr_loss(x[:2], y[:2], reduction=reduction)
    torch.testing.assert_close(out[:2] if reduction == "none" else out, ref[:2] if reduction == "none" else ref)


@needs_kernels
@settings(max_examples=100)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 12), c=st.integers(1, 40),
       log_lam=st.floats(-3.0, 3.0), margin=st.floats(-1.0, 1.0), log_scale=st.floats(-3.0, 3.0),
       reduction=st.sampled_from(["mean", "sum", "none"]))
def test_ldr_fused_float64_matches_the_torch_path_on_random_inputs(seed, n, c, log_lam, margin, log_scale,
                                                                   reduction):
    # the kernel against the torch-ops formulation over lam 1e-3..1e3, margins of both signs, logit scales
    # 1e-3..1e3, C = 1..40 and every reduction, with some targets ignored
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64) * 10.0 ** log_scale
    y = torch.randint(0, c, (n,), generator=g)
    y[torch.rand(n, generator=g) < 0.2] = -100
    lam = 10.0 ** log_lam
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    a = ldr.ldr_loss(xa, y, lam=lam, margin=margin, reduction=reduction)
    with _torch_path():
        b = ldr.ldr_loss(xb, y, lam=lam, margin=margin, reduction=reduction)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * max(1.0, lam), equal_nan=True)
    if bool(torch.isfinite(a).all()):
        a.sum().backward()
        b.sum().backward()
        # small lam multiplies rounding by 1/lam on both paths
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-6, atol=1e-10 / lam)


class _torch_path:
    """Within the block, ldr_loss takes the torch-ops path."""

    def __enter__(self):
        self._orig = ldr._use_fused
        ldr._use_fused = lambda t: False

    def __exit__(self, *exc):
        ldr._use_fused = self._orig
