"""Adaptive Guidance: the CFG combination and cosine in float64, the switch to one pass once
cos(eps_c, eps_u) >= gamma_bar (NFE drops, per-step), reset per trajectory, diffusers API, bad input."""
import copy

import pytest
import torch

pytest.importorskip("diffusers")

from gradwise.diffusion import AdaptiveGuidance, guided_prediction, guided_sample, prediction_cosine  # noqa: E402,F401

from .guidance_cases import ScriptedModel, TinyEpsNet  # noqa: E402


def scripted_run(guider, preds):
    model = ScriptedModel(preds)
    outs, nfes = [], []
    for i in range(len(preds)):
        model.step = i
        o, nfe = guided_prediction(guider, model, preds[i][0], 999 - i, step=i, num_inference_steps=len(preds),
                                   inputs={"label": ("c", "u")})
        outs.append(o.pred)
        nfes.append(nfe)
    return outs, nfes, model.calls


def aligned_preds(cosines, shape=(2, 5), seed=0):
    """Per step, (c, u) with cos(c, u) = the given value for every sample (u = cos * c_hat + sin * orth)."""
    g = torch.Generator().manual_seed(seed)
    preds = []
    for cos in cosines:
        c = torch.randn(shape, generator=g, dtype=torch.float64)
        o = torch.randn(shape, generator=g, dtype=torch.float64)
        o = o - (o * c).sum(1, keepdim=True) / (c * c).sum(1, keepdim=True) * c
        u = 2.0 * (cos * c / c.norm(dim=1, keepdim=True)
                   + (1 - cos ** 2) ** 0.5 * o / o.norm(dim=1, keepdim=True))
        preds.append((c, u))
    return preds


def test_prediction_cosine_matches_the_definition():
    g = torch.Generator().manual_seed(1)
    c, u = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    want = torch.nn.functional.cosine_similarity(c.double().flatten(1), u.double().flatten(1), dim=1)
    torch.testing.assert_close(prediction_cosine(c, u), want, rtol=1e-12, atol=1e-14)
    assert prediction_cosine(c, u).dtype == torch.float64


def test_cfg_steps_combine_as_cfg_in_float64():
    preds = aligned_preds([0.2, 0.5, 0.7])
    outs, nfes, _ = scripted_run(AdaptiveGuidance(4.0, gamma_bar=0.99), preds)
    assert nfes == [2, 2, 2]
    for (c, u), o in zip(preds, outs):
        torch.testing.assert_close(o, u + 4.0 * (c - u), rtol=1e-12, atol=1e-14)


def test_one_pass_after_the_threshold_is_crossed():
    cosines = [0.3, 0.8, 0.95, 0.5, 0.2, 0.1]  # crosses 0.9 at step 2; later dips do not switch back
    preds = aligned_preds(cosines)
    guider = AdaptiveGuidance(5.0, gamma_bar=0.9)
    outs, nfes, calls = scripted_run(guider, preds)
    assert nfes == [2, 2, 2, 1, 1, 1]
    assert calls == 9  # CFG would take 12
    torch.testing.assert_close(torch.tensor(guider.cosines, dtype=torch.float64),
                               torch.tensor(cosines[:3], dtype=torch.float64), rtol=1e-10, atol=1e-12)
    assert guider.switch_step == 3
    c2, u2 = preds[2]
    torch.testing.assert_close(outs[2], u2 + 5.0 * (c2 - u2), rtol=1e-12, atol=1e-14)  # crossing step: CFG
    for (c, _), o in zip(preds[3:], outs[3:]):
        torch.testing.assert_close(o, c, rtol=0, atol=0)  # after: the conditional prediction


def test_the_whole_batch_must_align():
    preds = aligned_preds([0.95, 0.95, 0.95])
    c, u = preds[0]
    preds[0] = (c, torch.stack([u[0], -u[1]]))  # second sample anti-aligned at step 0
    _, nfes, _ = scripted_run(AdaptiveGuidance(5.0, gamma_bar=0.9), preds)
    assert nfes == [2, 2, 1]


def test_switch_resets_with_a_new_trajectory_and_nan_never_switches():
    guider = AdaptiveGuidance(5.0, gamma_bar=0.9)
    scripted_run(guider, aligned_preds([0.95, 0.95]))
    _, nfes, _ = scripted_run(guider, aligned_preds([0.1, 0.1]))
    assert nfes == [2, 2]
    zero = [(torch.zeros(2, 5, dtype=torch.float64), torch.ones(2, 5, dtype=torch.float64))] * 2
    _, nfes, _ = scripted_run(AdaptiveGuidance(5.0, gamma_bar=-1.0), zero)
    assert nfes == [2, 2]


def test_start_stop_and_unit_scale_use_one_pass():
    preds = aligned_preds([0.1] * 4)
    _, nfes, _ = scripted_run(AdaptiveGuidance(5.0, gamma_bar=0.99, start=0.25, stop=0.75), preds)
    assert nfes == [1, 2, 2, 1]
    _, nfes, _ = scripted_run(AdaptiveGuidance(1.0, gamma_bar=0.99), preds)
    assert nfes == [1, 1, 1, 1]


def test_nfe_drops_on_a_denoiser_whose_predictions_align_late():
    # a stand-in eps-net whose label pull fades with t: CFG for the early steps, one pass after
    from diffusers import DDIMScheduler
    net = TinyEpsNet()
    y = torch.tensor([0, 1, 2, 0])
    null = torch.full_like(y, 3)
    noise = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    inputs = {"class_labels": (y, null)}

    def sample(guider):
        return guided_sample(guider, net, DDIMScheduler(), noise, num_inference_steps=20, inputs=inputs)

    from diffusers.guiders import ClassifierFreeGuidance
    with torch.no_grad():
        x_cfg, nfe_cfg = sample(ClassifierFreeGuidance(guidance_scale=3.0))
        ag = AdaptiveGuidance(3.0, gamma_bar=0.8)
        x_ag, nfe_ag = sample(ag)
        x_cond, _ = sample(ClassifierFreeGuidance(guidance_scale=1.0))
    assert nfe_cfg == 40
    k = ag.switch_step
    assert k is not None and 0 < k < 20 and nfe_ag == 2 * k + (20 - k) < 40
    assert all(c < 0.8 for c in ag.cosines[:-1]) and ag.cosines[-1] >= 0.8
    assert ag.cosines[0] < ag.cosines[-1]
    # the late conditional-only steps leave the sample close to the full-CFG one
    rel = ((x_ag - x_cfg).norm() / x_cfg.norm()).item()
    rel_cond = ((x_cond - x_cfg).norm() / x_cfg.norm()).item()
    assert rel < 0.05 and rel < rel_cond / 5  # measured: switch at step 16, NFE 36, rel 0.006


def test_diffusers_guider_api_round_trips():
    g = AdaptiveGuidance(3.0, gamma_bar=0.97, stop=0.8)
    h = g.new(guidance_scale=2.0)
    assert (h.guidance_scale, h.gamma_bar, h._stop) == (2.0, 0.97, 0.8)
    assert AdaptiveGuidance.from_config(g.config).gamma_bar == 0.97
    k = copy.deepcopy(g)
    assert k.gamma_bar == 0.97 and k is not g


@pytest.mark.parametrize("kwargs,name", [
    (dict(gamma_bar=1.5), "gamma_bar"), (dict(gamma_bar=float("nan")), "gamma_bar"),
    (dict(guidance_scale=float("inf"), gamma_bar=0.9), "guidance_scale"),
    (dict(gamma_bar=0.9, start=1.0), "start"), (dict(gamma_bar=0.9, start=0.5, stop=0.4), "stop"),
])
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        AdaptiveGuidance(**kwargs)


def test_guided_prediction_bad_input():
    g = AdaptiveGuidance(3.0, gamma_bar=0.9)
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="Invalid step"):
        guided_prediction(g, lambda *a, **k: x, x, 0, step=3, num_inference_steps=3, inputs={"y": (0, 1)})
    with pytest.raises(ValueError, match="Invalid inputs"):
        guided_prediction(g, lambda *a, **k: x, x, 0, step=0, num_inference_steps=3, inputs={"y": 0})
    with pytest.raises(ValueError, match="Invalid pred_uncond"):
        prediction_cosine(torch.zeros(2, 3), torch.zeros(2, 4))
