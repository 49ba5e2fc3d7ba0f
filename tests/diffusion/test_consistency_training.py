"""consistency_training_loss: equal (float64, rel 1e-10) to quandao10/LCT @ 34661b9's consistency_losses run
on tests/data/consistency_training_golden.pt (tools/golden/make_consistency_training_golden.py); the iCT
ingredients (shared noise and dropout, stop-grad teacher, OT, scaling-c) at the equation level; bad input."""
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from gradwise.diffusion import (consistency_sample, consistency_training_loss, karras_sigmas, ot_pair,
                                slct_scaling_c)
from gradwise.diffusion._common import default_c
from gradwise.diffusion.toy import ConsistencyDenoiser, ToyMLP
from gradwise.registry import get

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "consistency_training_golden.pt", weights_only=True)


class Stub(nn.Module):
    """The golden's stub network: tanh(a x_in + b c_noise) s (LCT feeds 1000 c_noise; the stub divides)."""
    num_classes = 0

    def __init__(self, a, b, s):
        super().__init__()
        self.a, self.b, self.s = a, b, s

    def forward(self, x_in, c_noise, labels=None):
        return torch.tanh(self.a * x_in + self.b * c_noise.view((-1,) + (1,) * (x_in.ndim - 1))) * self.s


def _golden_call(case, w):
    n = case["num_scales"]
    den = ConsistencyDenoiser(Stub(**GOLDEN["stub"]), sigma_data=case["sigma_data"])
    sig = karras_sigmas(n)
    student_idx = (case["t"][:, None] - sig[None, :]).abs().argmin(1)
    metric = "pseudo_huber" if case["norm"] == "huber" else "cauchy"
    loss = consistency_training_loss(den, case["x"], step=0, total_steps=10, s0=n - 1, s1=n - 1, metric=metric,
                                     c=case["c"], distance="mean", noise=case["noise"], index=student_idx - 1,
                                     diffusion_loss_weight=w)
    return loss, student_idx


@pytest.mark.parametrize("i", range(len(GOLDEN["cases"])))
def test_matches_lct_consistency_losses(i):
    case = GOLDEN["cases"][i]
    loss, student_idx = _golden_call(case, 0.0)
    torch.testing.assert_close(loss, case["loss"], rtol=1e-10, atol=1e-300)
    loss5, _ = _golden_call(case, 5.0)
    torch.testing.assert_close(loss5.mean(), case["total_w5"], rtol=1e-10, atol=0.0)
    # the subset: LCT's index (n - 1 - student index) >= int(0.75 n)
    n, b = case["num_scales"], loss.shape[0]
    mask = (n - 1 - student_idx) >= int(0.75 * n)
    extra = (loss5 - loss)[mask] * mask.sum() / (5 * b)
    torch.testing.assert_close(extra, case["diff_loss"], rtol=1e-9, atol=1e-12)


def _toy(dropout=0.0, dtype=torch.float64):
    torch.manual_seed(0)
    net = _DropNet(dropout) if dropout else ToyMLP(2, width=16, depth=2)
    return ConsistencyDenoiser(net, sigma_data=1.3).to(dtype)


class _DropNet(nn.Module):
    num_classes = 0

    def __init__(self, p):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.drop = nn.Dropout(p)

    def forward(self, x, c_noise, labels=None):
        return self.lin(self.drop(torch.cat([x, c_noise[:, None]], 1)))


def test_equation_shared_noise_dropout_and_stop_grad():
    den = _toy(dropout=0.5)
    x = torch.randn(32, 2, dtype=torch.float64)
    noise = torch.randn_like(x)
    idx = torch.randint(0, 9, (32,))
    torch.manual_seed(3)
    loss = consistency_training_loss(den, x, step=0, total_steps=10, noise=noise, index=idx, c=0.01)
    after = torch.get_rng_state()
    # written out (diffusers' loop, steps 3-7, and ECT's metric on the whole sample)
    sig = karras_sigmas(11)
    s_t, s_s = sig[idx], sig[idx + 1]
    torch.manual_seed(3)
    state = torch.get_rng_state()
    student = den(x + s_s[:, None] * noise, s_s)
    mid = torch.get_rng_state()
    torch.set_rng_state(state)
    with torch.no_grad():
        target = den(x + s_t[:, None] * noise, s_t)
    want = (((student - target) ** 2).sum(1) + 0.01 ** 2).sqrt() - 0.01
    torch.testing.assert_close(loss, want / (s_s - s_t), rtol=1e-12, atol=0)
    assert torch.equal(after, mid)  # the global RNG is where one forward pass leaves it
    loss.mean().backward()
    assert den.net.lin.weight.grad is not None and den.net.lin.weight.grad.abs().sum() > 0


def test_teacher_none_is_the_student_and_teacher_gets_no_grad():
    den = _toy()
    x = torch.randn(16, 2, dtype=torch.float64)
    a = consistency_training_loss(den, x, generator=torch.Generator().manual_seed(1), step=5, total_steps=10)
    teacher = copy.deepcopy(den)
    b = consistency_training_loss(den, x, teacher=teacher, generator=torch.Generator().manual_seed(1),
                                  step=5, total_steps=10)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    b.mean().backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_ot_scaling_c_and_l2_options():
    den = _toy()
    x = torch.randn(16, 2, dtype=torch.float64)
    noise = torch.randn_like(x)
    idx = torch.randint(0, 39, (16,))
    kw = dict(step=0, total_steps=10, s0=40, s1=40, index=idx, metric="cauchy")
    torch.testing.assert_close(consistency_training_loss(den, x, noise=noise, ot=True, **kw),
                               consistency_training_loss(den, x, noise=ot_pair(x, noise), **kw), rtol=0, atol=0)
    c = slct_scaling_c(41, start_scales=20, c_init=default_c(x))
    assert c != default_c(x)  # N = 41 is past the first stage (s0 = 20): the schedule's c
    stage2 = dict(kw, step=9, s0=20)
    torch.testing.assert_close(consistency_training_loss(den, x, noise=noise, c="scaling", **stage2),
                               consistency_training_loss(den, x, noise=noise, c=c, **stage2), rtol=0, atol=0)
    sig = karras_sigmas(41)
    with torch.no_grad():
        d = den(x + sig[idx + 1][:, None] * noise, sig[idx + 1]) - den(x + sig[idx][:, None] * noise, sig[idx])
        want = (d ** 2).sum(1) / (sig[idx + 1] - sig[idx])
    kw["metric"] = "l2"
    torch.testing.assert_close(consistency_training_loss(den, x, noise=noise, **kw).detach(), want, rtol=1e-12,
                               atol=0)


def test_diffusion_loss_empty_subset_is_zero_and_dtype_kept():
    den = _toy(dtype=torch.float32)
    x = torch.randn(8, 2)
    noise = torch.randn_like(x)
    top = torch.full((8,), 9)  # the highest pair of N = 11: LCT's index 0, outside the low-noise quarter
    kw = dict(step=0, total_steps=10, noise=noise, index=top)
    a = consistency_training_loss(den, x, **kw)
    b = consistency_training_loss(den, x, diffusion_loss_weight=5.0, **kw)
    assert a.dtype == torch.float32 and a.shape == (8,)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    low = consistency_training_loss(den, x, diffusion_loss_weight=5.0, step=0, total_steps=10, noise=noise,
                                    index=torch.zeros(8, dtype=torch.long))
    assert torch.isfinite(low).all()


def test_uniform_and_lognormal_sampling_differ():
    den = _toy()
    x = torch.zeros(4096, 2, dtype=torch.float64)
    # with x = 0 and a frozen pass the loss depends on the levels only; compare their means
    la = consistency_training_loss(den, x, step=0, total_steps=10, metric="l2",
                                   generator=torch.Generator().manual_seed(0)).detach()
    lb = consistency_training_loss(den, x, step=0, total_steps=10, metric="l2", sigma_sampling="uniform",
                                   generator=torch.Generator().manual_seed(0)).detach()
    assert not torch.allclose(la.mean(), lb.mean())


def test_consistency_sample():
    den = _toy()
    z = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(consistency_sample(den, z), den(z * 80.0, 80.0).detach())
    two = consistency_sample(den, z, sigmas=(80.0, 0.8), generator=torch.Generator().manual_seed(0))
    assert two.shape == z.shape and torch.isfinite(two).all()
    with pytest.raises(ValueError, match="sigmas"):
        consistency_sample(den, z, sigmas=(0.8, 80.0))


@pytest.mark.parametrize("kw,name", [
    (dict(metric="huber"), "metric"), (dict(sigma_sampling="beta"), "sigma_sampling"), (dict(c="auto"), "c"),
    (dict(c=0.0), "c"), (dict(distance="max"), "distance"), (dict(diffusion_loss_weight=-1.0), "diffusion_loss_weight"),
    (dict(step=-1), "step"), (dict(total_steps=1), "total_steps"), (dict(index=torch.zeros(3, dtype=torch.long)), "index"),
    (dict(index=torch.full((4,), 10)), "index"), (dict(noise=torch.zeros(4, 3)), "noise"),
    (dict(teacher=object()), "teacher"),
])
def test_bad_input(kw, name):
    den = _toy()
    args = dict(step=0, total_steps=10)
    args.update(kw)
    with pytest.raises(ValueError, match=name):
        consistency_training_loss(den, torch.zeros(4, 2, dtype=torch.float64), **args)
    with pytest.raises(ValueError, match="x"):
        consistency_training_loss(den, torch.zeros(4), step=0, total_steps=10)


def test_registered_under_ict():
    assert get("consistency_training_loss").paper == "Improved Techniques for Training Consistency Models"
