"""AdjointDPM: the authors' torchdiffeq solver reproduced (float64, rel 1e-10, tests/data/adjoint_dpm_golden.pt);
the discrete scheme equals autograd through the Euler sampler; memory flat in the number of steps; bad input."""
import weakref
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gradwise.diffusion import adjoint_sample_grad, karras_sigmas
from gradwise.registry import get

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "adjoint_dpm_golden.pt", weights_only=True)


def golden_denoiser(case):
    """The authors' toy UNet eps(x / sqrt(sigma^2 + 1), t(sigma)) as an EDM denoiser x - sigma eps."""
    def den(x, sigma, y=None):
        t = case["timesteps"][(case["sigmas"].reshape(1, -1) - sigma.reshape(-1, 1)).abs().argmin(1)]
        s = sigma.reshape(-1, 1)
        eps = torch.tanh((x / (s ** 2 + 1).sqrt()) @ GOLDEN["W"] + (t.reshape(-1, 1) / 1000.0) * GOLDEN["b"])
        return x - s * (eps * 0.8 + 0.1 * x / (s ** 2 + 1).sqrt())
    return den


@pytest.mark.parametrize("checkpoint", ["all", "log"])
@pytest.mark.parametrize("i", [0, 1])
def test_torchdiffeq_scheme_matches_authors_solver(i, checkpoint):
    case = GOLDEN["cases"][i]
    out = adjoint_sample_grad(golden_denoiser(case), case["x_T"], case["sigmas"],
                              lambda x: (x - 0.5).square().sum(), wrt=("x_T",), scheme="torchdiffeq",
                              checkpoint=checkpoint)
    torch.testing.assert_close(out["sample"], case["sample"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out["x_T"], case["grad_x_T"], rtol=1e-10, atol=1e-12)


class Den(torch.nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Tanh(), torch.nn.Linear(width, 2))

    def forward(self, x, sigma, y=None):
        v = sigma[:, None] ** 2 + 0.25
        h = torch.cat([x / v.sqrt(), sigma.log()[:, None] / 4], 1)
        return 0.25 / v * x + sigma[:, None] * 0.5 / v.sqrt() * self.net(h)


def autograd_reference(den, x_T, sig, loss_fn):
    x = x_T.clone().requires_grad_(True)
    z = x
    for k in range(1, len(sig)):
        z = z + (sig[k] - sig[k - 1]) * (z - den(z, sig[k - 1].expand(len(z)))) / sig[k - 1]
    return torch.autograd.grad(loss_fn(z), [x] + list(den.parameters()))


@pytest.mark.parametrize("checkpoint", ["all", "log"])
def test_discrete_scheme_is_autograd_through_the_sampler_at_100_steps(checkpoint):
    torch.manual_seed(0)
    den = Den().double()
    sig = karras_sigmas(100, sigma_max=80.0).flip(0)
    x_T = torch.randn(6, 2, dtype=torch.float64) * 80
    loss_fn = lambda x: (x - 1).square().sum()
    ref = autograd_reference(den, x_T, sig, loss_fn)
    out = adjoint_sample_grad(den, x_T, sig, loss_fn, checkpoint=checkpoint)
    for got, want in zip((out["x_T"],) + out["params"], ref):
        assert ((got - want).norm() / want.norm()) < 1e-3
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    for p, g in zip(den.parameters(), out["params"]):   # accumulated as backward() would
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


def test_torchdiffeq_scheme_error_shrinks_with_steps():
    torch.manual_seed(1)
    den = Den().double()
    errs = []
    for n in (10, 40):
        sig = karras_sigmas(n, sigma_min=0.5, sigma_max=20.0).flip(0)
        x_T = torch.ones(4, 2, dtype=torch.float64) * 10
        ref = autograd_reference(den, x_T, sig, lambda x: x.sum())
        out = adjoint_sample_grad(den, x_T, sig, lambda x: x.sum(), wrt=("x_T",), scheme="torchdiffeq")
        errs.append(float((out["x_T"] - ref[0]).norm() / ref[0].norm()))
    assert errs[1] < errs[0] / 2


class LiveBytes(TorchDispatchMode):
    """Peak bytes of live tensor storages created while active (each storage counted once, released when its
    last reference dies): what the CPU allocator holds for the run, without the profiler's overhead."""

    def __init__(self):
        super().__init__()
        self.cur = self.peak = 0
        self.seen = {}

    def _free(self, key, n):
        self.seen.pop(key, None)
        self.cur -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                if st._cdata not in self.seen:
                    n = st.nbytes()
                    self.seen[st._cdata] = n
                    self.cur += n
                    self.peak = max(self.peak, self.cur)
                    weakref.finalize(st, self._free, st._cdata, n)
        return out


def peak_bytes(fn):
    with LiveBytes() as m:
        fn()
    return m.peak


def profiler_peak_bytes(fn):
    """Peak of live CPU tensor bytes during fn from the torch profiler's memory events, in time order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = best = 0
    for e in sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start):
        cur += e.self_cpu_memory_usage
        best = max(best, cur)
    return best


def memory_ratio(lo, hi, width, batch, checkpoint="log", measure=peak_bytes):
    torch.manual_seed(0)
    den = Den(width)
    x_T = torch.randn(batch, 2) * 10
    run = lambda n: measure(lambda: adjoint_sample_grad(den, x_T, karras_sigmas(n, sigma_max=10.0).flip(0).float(),
                                                           lambda x: x.square().mean(), checkpoint=checkpoint))
    return run(hi) / run(lo)


def test_memory_flat_in_steps_fast():
    assert memory_ratio(4, 32, width=16, batch=64) <= 1.3


@pytest.mark.slow
def test_stored_states_grow_with_steps():
    assert memory_ratio(8, 64, width=16, batch=64, checkpoint="all") > 1.3


@pytest.mark.slow
def test_memory_at_200_steps_within_1_3x_of_20():
    assert memory_ratio(20, 200, width=512, batch=64) <= 1.3
    assert memory_ratio(20, 200, width=512, batch=64, measure=profiler_peak_bytes) <= 1.3


def test_registered_under_seed_title():
    m = get("AdjointDPM")
    assert m.paper.startswith("AdjointDPM: Adjoint Sensitivity Method") and m.family == "diffusion"


@pytest.mark.parametrize("kw,match", [
    (dict(sigmas=torch.tensor([1.0, 2.0])), "sigmas"), (dict(sigmas=torch.tensor([2.0, 0.0])), "sigmas"),
    (dict(sigmas=torch.tensor([2.0])), "sigmas"), (dict(wrt=("x_T", "labels")), "wrt"), (dict(wrt=()), "wrt"),
    (dict(wrt="x_T"), "wrt"), (dict(scheme="rk4"), "scheme"), (dict(checkpoint="none"), "checkpoint"),
    (dict(loss_fn=lambda x: x.sum(1)), "loss_fn"), (dict(x_T=torch.arange(4)), "x_T"),
])
def test_bad_input(kw, match):
    args = dict(denoiser=Den(), x_T=torch.randn(4, 2), sigmas=torch.tensor([2.0, 1.0]), loss_fn=lambda x: x.sum())
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        adjoint_sample_grad(args.pop("denoiser"), args.pop("x_T"), args.pop("sigmas"), args.pop("loss_fn"), **args)


def test_params_needed_for_a_plain_callable():
    with pytest.raises(ValueError, match="params"):
        adjoint_sample_grad(lambda x, s, y: x * 0.5, torch.randn(4, 2), torch.tensor([2.0, 1.0]), lambda x: x.sum())
    out = adjoint_sample_grad(lambda x, s, y: x * 0.5, torch.randn(4, 2), torch.tensor([2.0, 1.0]), lambda x: x.sum(),
                              wrt=("x_T",))
    assert set(out) == {"loss", "sample", "x_T"}
