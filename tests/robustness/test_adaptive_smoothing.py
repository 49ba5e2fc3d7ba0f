"""Adaptive smoothing (seed 235): against the authors' CompositeModel and CompLoss (tests/data/
adaptive_smoothing_golden.pt, made by tools/golden/make_adaptive_smoothing_golden.py) and by hand."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gradwise.losses import pgd_attack
from gradwise.robustness import AdaptiveSmoothing, adaptive_smoothing_loss, mix_log_probs

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "adaptive_smoothing_golden.pt"
D_IN, C, HIDDEN = 8, 5, 16
TOL = dict(rtol=1e-10, atol=1e-12)
pytestmark = pytest.mark.usefixtures("one_thread")


class Mixer(nn.Module):  # the golden script's mixing MLP on cat(x, std_logits, rob_logits)
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(D_IN + 2 * C, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 1))

    def forward(self, x, s, r):
        return self.net(torch.cat([x, s, r], dim=1))


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=False)


def _models(golden, mixing=True):
    std, rob = nn.Linear(D_IN, C).double(), nn.Linear(D_IN, C).double()
    std.load_state_dict({k[4:]: v for k, v in golden["std"].items()})
    rob.load_state_dict({k[4:]: v for k, v in golden["rob"].items()})
    for p in (*std.parameters(), *rob.parameters()):
        p.requires_grad_(False)
    mixer = None
    if mixing:
        mixer = Mixer().double()
        mixer.load_state_dict(golden["mixer"])
    return std, rob, mixer


def test_fixed_gamma_matches_their_composite_model(golden):
    std, rob, _ = _models(golden, mixing=False)
    g = golden["fixed"]
    for case in g["cases"]:
        model = AdaptiveSmoothing(std, rob, gamma=case["gamma"], std_scale=case["std_scale"],
                                  rob_scale=case["rob_scale"]).double().train(case["mode"] == "train")
        x = g["x"].clone().requires_grad_(True)
        out, gammas = model(x)
        ref = torch.log_softmax(case["out"], 1) if case["logits_only"] else case["out"]  # theirs: logits there
        torch.testing.assert_close(out, ref, **TOL)
        torch.testing.assert_close(gammas, case["gammas"])
        nn.functional.cross_entropy(out, g["y"], reduction="sum").backward()
        torch.testing.assert_close(x.grad, case["x_grad"], **TOL)


def test_mixing_network_training_and_eval_match_theirs(golden):
    std, rob, mixer = _models(golden)
    tr = golden["train"]
    model = AdaptiveSmoothing(std, rob, mixer, gamma_scale=tr["gamma_scale"], gamma_bias=tr["gamma_bias"],
                              alpha_scale=0.75, alpha_bias=0.25).double().train()
    for s in tr["steps"]:
        mixer.zero_grad()
        out, gammas = model(s["x"])
        loss = adaptive_smoothing_loss(out, s["y"], gammas, s["sup"], weight=s["scale"])
        loss.backward()
        torch.testing.assert_close(out, s["out"], **TOL)
        torch.testing.assert_close(gammas, s["gammas"], **TOL)
        torch.testing.assert_close(loss, s["loss"], **TOL)
        torch.testing.assert_close(model.bn.running_mean, s["running_mean"], **TOL)
        torch.testing.assert_close(model.bn.running_var, s["running_var"], **TOL)
        for n, p in mixer.named_parameters():
            torch.testing.assert_close(p.grad, s["grads"][n], **TOL)
    ev = golden["eval"]
    model.eval()
    assert not std.training and not rob.training
    for case in ev["cases"]:
        model.gamma_scale, model.gamma_bias = case["gamma_scale"], case["gamma_bias"]
        model.set_alpha_range(case["alpha_scale"], case["alpha_bias"])
        x = ev["x"].clone().requires_grad_(True)
        out, gammas = model(x)
        torch.testing.assert_close(out, case["out"], **TOL)
        torch.testing.assert_close(gammas, case["gammas"], **TOL)
        nn.functional.cross_entropy(out, ev["y"], reduction="sum").backward()
        torch.testing.assert_close(x.grad, case["x_grad"], **TOL)


def test_loss_matches_their_comp_loss(golden):
    for case in golden["loss"]:
        preds = case["preds"].clone().requires_grad_(True)
        gam = case["gammas"].clone().requires_grad_(True)
        loss = adaptive_smoothing_loss(preds, case["labels"], gam, case["sup"], weight=case["weight"],
                                       **case["consts"])
        loss.backward()
        torch.testing.assert_close(loss, case["loss"], **TOL)
        torch.testing.assert_close(preds.grad, case["preds_grad"], **TOL)
        torch.testing.assert_close(gam.grad, case["gammas_grad"], **TOL)


def test_mix_log_probs_by_hand_and_at_the_ends():
    torch.manual_seed(0)
    a, b = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    for alpha in (0.0, 0.3, 1.0):
        ref = torch.log((1 - alpha) * (2 * a).softmax(1) + alpha * b.softmax(1))
        torch.testing.assert_close(mix_log_probs(a, b, alpha, std_scale=2.0), ref, rtol=1e-13, atol=1e-13)
    assert torch.equal(mix_log_probs(a, b, 0.0), torch.log_softmax(a, 1))
    alpha = torch.tensor([0.0, 0.2, 0.5, 1.0, 0.9, 0.1], dtype=torch.float64, requires_grad=True)
    out = mix_log_probs(a, b, alpha)
    ref = torch.log((1 - alpha[:, None]) * a.softmax(1) + alpha[:, None] * b.softmax(1))
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)
    out.sum().backward()
    assert torch.isfinite(alpha.grad).all()  # no NaN from log(0) at the ends
    # float32 logits far apart: the logsumexp stays finite where log of the mixed probabilities underflows
    far = torch.tensor([[200.0, 0.0]]), torch.tensor([[0.0, 200.0]])
    assert torch.isfinite(mix_log_probs(*far, 0.5)).all()
    assert torch.isnan(mix_log_probs(a.clone().fill_(math.nan), b, 0.5)).all()  # NaN propagates


def test_saturated_gamma_stays_finite_in_float32_and_base_models_stay_in_eval():
    torch.manual_seed(1)
    std, rob = nn.Linear(3, 4), nn.Linear(3, 4)
    model = AdaptiveSmoothing(std, rob, lambda x, s, r: x[:, 0] * 1e3, gamma_scale=50.0, alpha_scale=1.0)
    x = torch.randn(32, 3, requires_grad=True)
    out, gammas = model(x)
    assert not std.training and not rob.training and model.training
    assert torch.isfinite(out).all() and gammas.abs().max() > 60  # sigmoid saturates, log-weights do not
    out.logsumexp(1).sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(out.exp().sum(1), torch.ones(32))


def test_pgd_attacks_the_whole_mixture():
    torch.manual_seed(2)
    std, rob = nn.Linear(6, 3), nn.Linear(6, 3)
    calls = []

    def mixer(x, s, r):
        calls.append(x.requires_grad)
        return x.sum(1)

    model = AdaptiveSmoothing(std, rob, mixer, alpha_scale=0.5, alpha_bias=0.25).eval()
    model.bn.running_var.fill_(4.0)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    x_adv = pgd_attack(lambda z: model(z)[0], x, y, eps=0.3, alpha=0.1, steps=5)
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and any(calls)
    clean = nn.functional.cross_entropy(model(x)[0], y)
    assert nn.functional.cross_entropy(model(x_adv)[0], y) > clean


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha_scale=0.8, alpha_bias=0.3), "alpha_scale \\+ alpha_bias"),
    (dict(alpha_bias=-0.1), "alpha_bias"), (dict(alpha_scale=-0.1), "alpha_scale"),
    (dict(std_scale=0.0), "std_scale"), (dict(rob_scale=math.nan), "rob_scale"),
    (dict(train_clamp=0.0), "train_clamp"), (dict(bn_momentum=0.0), "bn_momentum"),
    (dict(gamma=math.nan), "gamma"), (dict(gamma_scale=math.inf), "gamma_scale"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveSmoothing(nn.Linear(2, 3), nn.Linear(2, 3), **kwargs)


def test_bad_inputs_raise_before_any_change():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    for alpha in (-0.1, 1.1, math.nan, torch.tensor([0.5, 1.2, 0.0, 0.1]), torch.full((3,), 0.5)):
        with pytest.raises(ValueError, match="alpha"):
            mix_log_probs(a, b, alpha)
    with pytest.raises(ValueError, match="rob_logits"):
        mix_log_probs(a, torch.randn(4, 5), 0.5)
    model = AdaptiveSmoothing(nn.Linear(2, 3), nn.Linear(2, 3), lambda x, s, r: x, alpha_scale=0.5, alpha_bias=0.5)
    with pytest.raises(ValueError, match="alpha_scale \\+ alpha_bias"):
        model.alpha_scale = 0.6
    with pytest.raises(ValueError, match="alpha_scale \\+ alpha_bias"):
        model.set_alpha_range(0.7, 0.4)
    assert (model.alpha_scale, model.alpha_bias) == (0.5, 0.5)
    with pytest.raises(ValueError, match="mixing_net output"):
        model(torch.randn(4, 2))  # gamma [4, 2]
    assert model.bn.num_batches_tracked.item() == 0
    lp = torch.log_softmax(torch.randn(4, 3), 1)
    with pytest.raises(ValueError, match="gamma"):
        adaptive_smoothing_loss(lp, torch.zeros(4, dtype=torch.long), torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="is_adv"):
        adaptive_smoothing_loss(lp, torch.zeros(4, dtype=torch.long), torch.zeros(4), torch.zeros(5))
    with pytest.raises(ValueError, match="target"):
        adaptive_smoothing_loss(lp, torch.zeros(5, dtype=torch.long), torch.zeros(4), 1.0)
