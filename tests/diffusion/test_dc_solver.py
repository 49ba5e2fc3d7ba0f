"""DC-Solver: ratios and samples equal to the authors' DCSolverMultistepScheduler (wl-zhao/DC-Solver@95125cc,
tests/data/dc_solver_golden.pt, made by tools/golden/make_dc_solver_golden.py), the compensation formula,
the fitted sampler closer to the reference than UniPC, and bad input."""
import copy
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from gradwise.diffusion import DCSolverScheduler, reference_trajectory  # noqa: E402

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "dc_solver_golden.pt")
# diffusers' schedulers build their sigmas and timesteps in float32 (numpy/torch), whose rounding depends on the
# CPU kernels (ATEN_CPU_CAPABILITY=default differs from AVX512 by ~1e-6 relative here): not bit-level tolerances
TOL = dict(rtol=1e-5, atol=1e-5)


def eps(x, t):
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.tanh(x @ GOLDEN["W"].T + (t / 1000.0) * GOLDEN["b"]) * 0.8 + 0.1 * x


def make(**kw):
    return DCSolverScheduler(**{**GOLDEN["config"], **kw})


def run(s, nfe, x=None):
    s.set_timesteps(nfe)
    x = (GOLDEN["noise"] if x is None else x) * s.init_noise_sigma
    for t in s.timesteps:
        x = s.step(eps(x, t), t, x, return_dict=False)[0]
    return x


@pytest.mark.parametrize("i", range(len(GOLDEN["cases"])))
def test_sampling_with_given_ratios_matches_the_authors(i):
    case = GOLDEN["cases"][i]
    s = make()
    s.dc_ratios = case["ratios"].tolist()
    torch.testing.assert_close(run(s, case["nfe"]), case["sample"], **TOL)
    assert torch.equal(s.timesteps, case["timesteps"])


@pytest.mark.parametrize("i", [0, 2])
def test_search_finds_the_authors_ratios(i):
    case = GOLDEN["cases"][i]
    s = make()
    ratios = s.fit_compensation(eps, GOLDEN["noise"], GOLDEN["reference"], num_inference_steps=case["nfe"])
    torch.testing.assert_close(torch.tensor(ratios, dtype=torch.float64), case["ratios"], rtol=1e-4, atol=1e-4)
    assert ratios[:2] == [1.0, 1.0] and s.dc_ratios == ratios
    torch.testing.assert_close(run(s, case["nfe"]), case["sample"], rtol=1e-4, atol=1e-4)


def test_unit_ratios_are_unipc():
    from diffusers import UniPCMultistepScheduler
    s = make()
    s.dc_ratios = [1.0] * 5
    cfg = {k: v for k, v in GOLDEN["config"].items() if k != "dc_order"}
    ref = UniPCMultistepScheduler(**cfg, final_sigmas_type="sigma_min")
    torch.testing.assert_close(run(s, 5), run(ref, 5), rtol=0, atol=0)
    torch.testing.assert_close(run(s, 5), GOLDEN["no_dc_sample"], **TOL)


def test_compensation_is_lagrange_extrapolation_in_time():
    # outputs that are a quadratic in t are reproduced exactly at any tau by the order-2 compensation
    s = make()
    ts = [torch.tensor(801), torch.tensor(601), torch.tensor(401)]
    a, b, c = (torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(k)) for k in range(3))
    q = lambda t: a + b * (t / 1000.0) + c * (t / 1000.0) ** 2  # noqa: E731
    s._dc_outputs, s._dc_times = [q(t.double()) for t in ts], ts
    for ratio in (0.5, 1.0, 1.7):
        tau = 601 + ratio * (401 - 601)
        # tau is float32 (int timesteps times a float, as the authors compute it): float32-level agreement
        torch.testing.assert_close(s.compensate(ratio), q(torch.tensor(tau, dtype=torch.float64)),
                                   rtol=1e-6, atol=1e-6)


def test_fitted_ratios_bring_nfe5_closer_to_the_reference():
    case = GOLDEN["cases"][0]
    s = make()
    s.dc_ratios = case["ratios"].tolist()
    final = GOLDEN["reference"]["intermediates"][:, -1]
    err_dc = (run(s, 5) - final).norm()
    err_unipc = (GOLDEN["no_dc_sample"] - final).norm()
    assert err_dc < err_unipc  # measured: 59.2 vs 60.7 (a toy denoiser whose samples are far from data scale)


def test_reference_trajectory_records_each_step():
    from diffusers import DDIMScheduler
    ref = reference_trajectory(eps, DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
                               GOLDEN["noise"], num_inference_steps=200)
    torch.testing.assert_close(ref["intermediates"], GOLDEN["reference"]["intermediates"], **TOL)
    assert torch.equal(ref["ts"], GOLDEN["reference"]["ts"])


def test_config_round_trip_and_deepcopy():
    s = make(dc_order=3)
    t = DCSolverScheduler.from_config(s.config)
    assert t.config.dc_order == 3 and t.disable_corrector == [0] and t.config.final_sigmas_type == "sigma_min"
    s.dc_ratios = [1.0] * 5
    assert copy.deepcopy(s).dc_ratios == [1.0] * 5


def test_bad_input():
    with pytest.raises(ValueError, match="Invalid dc_order"):
        make(dc_order=0)
    s = make()
    s.dc_ratios = [1.0, 0.5, 1.0, 1.0, 1.0]  # too early: only two outputs at step 1
    with pytest.raises(ValueError, match="Invalid dc_ratios"):
        run(s, 5)
    s.dc_ratios = [1.0] * 3
    with pytest.raises(ValueError, match="Invalid dc_ratios"):
        run(s, 5)
    with pytest.raises(ValueError, match="Invalid reference_trajectories"):
        make().fit_compensation(eps, GOLDEN["noise"], {"ts": GOLDEN["reference"]["ts"]}, num_inference_steps=5)
    bad = dict(GOLDEN["reference"], intermediates=GOLDEN["reference"]["intermediates"][:2])
    with pytest.raises(ValueError, match="Invalid reference_trajectories"):
        make().fit_compensation(eps, GOLDEN["noise"], bad, num_inference_steps=5)
    with pytest.raises(ValueError, match="Invalid num_iters"):
        make().fit_compensation(eps, GOLDEN["noise"], GOLDEN["reference"], num_inference_steps=5, num_iters=0)
