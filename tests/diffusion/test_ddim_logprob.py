"""DDIM step log-prob: equal (float64, rel 1e-10) to D3PO's ddim_step_with_logprob (DDPO's) run with
diffusers 0.42.1 (tests/data/d3po_golden.pt, tools/golden/make_d3po_golden.py); behaviour, bad input."""
import math
from pathlib import Path

import pytest
import torch

from gradwise.diffusion import ddim_alphas, ddim_step_logprob
from gradwise.registry import get

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "d3po_golden.pt", weights_only=True)


def _scheduler(case):
    diffusers = pytest.importorskip("diffusers")
    cfg = GOLDEN["schedulers"][case["scheduler"]]
    sched = diffusers.DDIMScheduler(**cfg, prediction_type=case["prediction_type"])
    sched.set_timesteps(case["num_inference_steps"])
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    return sched, cfg


@pytest.mark.parametrize("i", range(len(GOLDEN["ddim"])))
def test_matches_ddpo_d3po_reference(i):
    case = GOLDEN["ddim"][i]
    sched, cfg = _scheduler(case)
    a_t, a_prev = ddim_alphas(sched, case["timesteps"])
    mo = case["model_output"].clone().requires_grad_()
    logp = ddim_step_logprob(mo, case["sample"], case["prev_sample"], a_t, a_prev, eta=case["eta"],
                             prediction_type=case["prediction_type"],
                             clip_sample_range=cfg.get("clip_sample_range") if cfg["clip_sample"] else None)
    # timestep 0 (no steps_offset) has a zero-variance step: NaN in the reference and here. rtol 1e-6, not
    # 1e-10: diffusers builds alphas_cumprod by a float32 cumprod, whose rounding depends on the CPU kernels
    # (ATEN_CPU_CAPABILITY=default differs from AVX512 by ~1e-7 relative on the linear schedule)
    torch.testing.assert_close(logp, case["logp"], rtol=1e-6, atol=1e-300, equal_nan=True)
    logp.sum().backward()
    assert torch.isfinite(mo.grad[:-1]).all()


def test_alphas_clamp_last_step_to_alphas_cumprod_0():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(10)
    a_t, a_prev = ddim_alphas(sched, sched.timesteps)
    assert a_t.shape == (10,) and float(a_prev[-1]) == float(sched.alphas_cumprod[0])
    assert bool((a_prev[:-1] > a_t[:-1]).all())
    assert int(sched.timesteps[-1]) == 0 and float(a_prev[-1]) == float(a_t[-1])  # no steps_offset: zero variance
    with pytest.raises(ValueError, match="Invalid scheduler"):
        ddim_alphas(diffusers.DDIMScheduler(num_train_timesteps=1000), sched.timesteps)
    with pytest.raises(ValueError, match="Invalid timesteps"):
        ddim_alphas(sched, torch.tensor([1000]))
    with pytest.raises(ValueError, match="Invalid timesteps"):
        ddim_alphas(sched, torch.tensor([1.5]))


def test_logprob_is_the_gaussian_density_mean_over_entries():
    g = torch.Generator().manual_seed(0)
    mo, x = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    a_t, a_prev, eta = 0.5, 0.7, 0.8
    x0 = (x - math.sqrt(1 - a_t) * mo) / math.sqrt(a_t)
    std = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    mean = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - std ** 2) * mo
    prev = mean + std * torch.randn(3, 5, generator=g, dtype=torch.float64)
    ref = torch.distributions.Normal(mean, std).log_prob(prev).mean(1)
    got = ddim_step_logprob(mo, x, prev, a_t, a_prev, eta=eta)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    assert ddim_step_logprob(mo.float(), x.float(), prev.float(), a_t, a_prev).dtype == torch.float32


@pytest.mark.parametrize("kw, name", [
    (dict(eta=0.0), "eta"),
    (dict(prediction_type="x0"), "prediction_type"),
    (dict(alpha_prod_t=1.5), "alpha_prod_t"),
    (dict(alpha_prod_t_prev=torch.tensor([0.5, 0.0])), "alpha_prod_t_prev"),
    (dict(alpha_prod_t=torch.tensor([0.5, 0.5, 0.5])), "alpha_prod_t"),
    (dict(prev_sample=torch.zeros(2, 4)), "prev_sample"),
    (dict(clip_sample_range=0.0), "clip_sample_range"),
])
def test_bad_input_names_the_argument(kw, name):
    args = dict(model_output=torch.zeros(2, 3), sample=torch.zeros(2, 3), prev_sample=torch.zeros(2, 3),
                alpha_prod_t=0.5, alpha_prod_t_prev=0.6)
    args.update(kw)
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        ddim_step_logprob(**args)


def test_registered_under_ddpo_not_a_seed():
    for fn in ("ddim_step_logprob", "ddim_alphas"):
        rec = get(fn)
        assert rec.paper == "Training Diffusion Models with Reinforcement Learning" and not rec.seed
        assert rec.family == "diffusion"
