"""StableMax cross-entropy (arXiv 2501.04697): closed forms, the authors' code (golden data), gradients,
the float32 case that motivates it, reductions and bad input, on the kernel path and the torch path."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

import gradwise.losses.stablemax as sm
from gradwise.losses import StableMaxCrossEntropyLoss, log_stablemax, stablemax_cross_entropy, \
    stablemax_probabilities

torch.set_num_threads(1)
GOLDEN = torch.load(os.path.join(os.path.dirname(__file__), "..", "data", "stablemax_golden.pt"))


@pytest.fixture(params=["kernel", "torch"])
def path(request, monkeypatch):
    """Run a test on the fused kernel (where it loads) and on the torch composition."""
    if request.param == "torch":
        monkeypatch.setattr(sm, "_use_fused", lambda x: False)
    else:
        from gradwise._kernels import family
        if not family("losses").available():
            pytest.skip("losses kernels unavailable")
    return request.param


def reference(x, y):
    """The paper's formula, transcribed (float64): -log(s(x_t) / sum_j s(x_j))."""
    x = x.double()
    s = torch.where(x < 0, 1 / (1 - x), x + 1)
    return -torch.log(s / s.sum(1, keepdim=True)).gather(1, y[:, None]).squeeze(1)


def test_closed_form(path):
    x = torch.tensor([[1.0, 0.0, -1.0], [-3.0, 2.0, 0.5]])
    y = torch.tensor([0, 0])
    # s = [2, 1, 1/2] and [1/4, 3, 3/2]
    want = torch.tensor([math.log(3.5 / 2), math.log(4.75 / 0.25)])
    torch.testing.assert_close(stablemax_cross_entropy(x, y, reduction="none"), want)
    torch.testing.assert_close(stablemax_probabilities(x)[0], torch.tensor([2 / 3.5, 1 / 3.5, 0.5 / 3.5]))
    torch.testing.assert_close(log_stablemax(x), stablemax_probabilities(x).log())


@pytest.mark.parametrize("case", [c["name"] for c in GOLDEN["cross_entropy"]])
def test_matches_the_authors_code(case, path):
    """Loss (both reductions) and gradient of their utils.stablemax_cross_entropy, float32 logits."""
    g = next(c for c in GOLDEN["cross_entropy"] if c["name"] == case)
    x = g["logits"].clone().requires_grad_(True)
    mean = stablemax_cross_entropy(x, g["target"])
    grad, = torch.autograd.grad(mean, x)
    assert mean.dtype == torch.float32
    torch.testing.assert_close(mean.double(), g["mean"], rtol=2e-6, atol=1e-12)
    none = stablemax_cross_entropy(g["logits"], g["target"], reduction="none")
    torch.testing.assert_close(none.double(), g["none"].squeeze(1), rtol=2e-6, atol=1e-12)  # theirs is [N, 1]
    torch.testing.assert_close(grad, g["grad"], rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(log_stablemax(g["logits"].double()), g["log_stablemax"], rtol=1e-12, atol=1e-12)


def test_golden_data_names_its_source():
    assert GOLDEN["reference"].startswith("LucasPrietoAl/grokking-at-the-edge-of-numerical-stability@0cc9e8d")


def test_gradcheck_float64(path):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 5, generator=gen, dtype=torch.float64) * 4)
    x[0, :3] = torch.tensor([1e-3, -1e-3, 50.0], dtype=torch.float64)  # both sides of the kink, a large logit
    x.requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3, 4, 2])
    w = torch.rand(6, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: stablemax_cross_entropy(a, y, reduction="none") * w, (x,))
    # and equals autograd through the paper's formula
    g1, = torch.autograd.grad(stablemax_cross_entropy(x, y), x)
    g2, = torch.autograd.grad(reference(x, y).mean(), x)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-15)


def test_float32_softmax_collapses_where_stablemax_does_not(path):
    """The paper's point: scaled logits make softmax CE exactly 0 in float32 (no gradient); StableMax's is not."""
    x = torch.tensor([[1.0, -0.5, 0.25, 0.0]] * 3) * torch.tensor([[40.0], [120.0], [1000.0]])
    y = torch.zeros(3, dtype=torch.long)
    xs = x.clone().requires_grad_(True)
    ce = F.cross_entropy(xs, y, reduction="none")
    g_ce, = torch.autograd.grad(ce.sum(), xs)
    assert (ce[1:] == 0).all() and (g_ce[1:, 0] == 0).all()  # the target gets no push at all
    xs = x.clone().requires_grad_(True)
    loss = stablemax_cross_entropy(xs, y, reduction="none")
    g, = torch.autograd.grad(loss.sum(), xs)
    assert (loss > 0).all() and (g[:, 0] < 0).all()
    torch.testing.assert_close(loss.double(), reference(x, y), rtol=1e-6, atol=0)
    # far beyond float32's resolution of R / s_t the loss is still positive (log1p of a tiny ratio)
    huge = torch.tensor([[3e30, 1.0, -2.0]])
    assert stablemax_cross_entropy(huge, torch.tensor([0])) > 0
    # and a very negative target logit: R / s_t overflows float32, the loss (about log 1e60) does not
    far = torch.tensor([[-1e30, 1e30]], requires_grad=True)
    loss = stablemax_cross_entropy(far, torch.tensor([0]))
    torch.testing.assert_close(loss.double(), torch.tensor(60 * math.log(10.0), dtype=torch.float64), rtol=1e-6,
                               atol=0)
    g, = torch.autograd.grad(loss, far)
    assert torch.isfinite(g).all() and g[0, 0] < 0  # -(R / S) s_t = -1e-30, not an underflowed 0


def test_reductions_and_ignore_index(path):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, -100, 3, 2, -100, 1])
    keep = y != -100
    per = stablemax_cross_entropy(x, y, reduction="none")
    assert per.shape == (7,) and (per[~keep] == 0).all()
    torch.testing.assert_close(per[keep], reference(x[keep], y[keep]))
    torch.testing.assert_close(stablemax_cross_entropy(x, y, reduction="sum"), per.sum())
    torch.testing.assert_close(stablemax_cross_entropy(x, y), per[keep].mean())
    module = StableMaxCrossEntropyLoss(reduction="sum")
    torch.testing.assert_close(module(x, y), per.sum())


def test_half_precision_is_computed_in_float32_and_cast_back():
    x = torch.tensor([[3.0, -2.0, 0.5]], dtype=torch.float16, requires_grad=True)
    y = torch.tensor([0])
    loss = stablemax_cross_entropy(x, y)
    assert loss.dtype == torch.float16
    loss.backward()
    assert x.grad.dtype == torch.float16
    torch.testing.assert_close(loss.double(), reference(x.detach(), y)[0], rtol=1e-3, atol=0)


def test_masked_logits_and_nan(path):
    x = torch.tensor([[2.0, -math.inf, 0.0], [1.0, math.nan, 0.0]], requires_grad=True)
    loss = stablemax_cross_entropy(x, torch.tensor([0, 0]), reduction="none")
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1])
    g, = torch.autograd.grad(loss[0], x)
    assert torch.isfinite(g[0]).all() and g[0, 1] == 0  # (row 1: 0 * NaN, as in F.cross_entropy)
    # a -inf target logit has StableMax probability 0: infinite loss, as the authors' (and softmax CE)
    assert stablemax_cross_entropy(torch.tensor([[-math.inf, 1.0]]), torch.tensor([0])) == math.inf


@pytest.mark.parametrize("bad, match", [
    (dict(reduction="avg"), "Invalid reduction"),
    (dict(target=torch.tensor([0, 5])), "Invalid target: label 5 out of range"),
    (dict(target=torch.tensor([0.0, 1.0])), "Invalid target"),
    (dict(logits=torch.zeros(3)), "Invalid logits"),
    (dict(logits=torch.zeros(2, 3, dtype=torch.long)), "Invalid logits"),
])
def test_bad_input_names_the_argument(bad, match):
    args = dict(logits=torch.zeros(2, 3), target=torch.tensor([0, 1]))
    kw = {k: bad.pop(k) for k in list(bad) if k in args}
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        stablemax_cross_entropy(args["logits"], args["target"], **bad)
    with pytest.raises(ValueError, match="Invalid logits"):
        stablemax_probabilities(torch.zeros(2, 3, dtype=torch.long))


def test_kernel_checks_its_target():
    from gradwise._kernels import family
    if not family("losses").available():
        pytest.skip("losses kernels unavailable")
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.gradwise_losses.stablemax_ce_forward(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_torch_compile():
    x = torch.randn(5, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0])
    fn = torch.compile(lambda a, b: stablemax_cross_entropy(a, b, validate=False), backend="eager")
    got = fn(x, y)
    torch.testing.assert_close(got, stablemax_cross_entropy(x, y))
    got.backward()
    assert torch.isfinite(x.grad).all()
