"""Calibration metrics, temperature scaling, correctness-aware calibration, multi-sample dropout,
loss-based reweighting, temperature sampling and hard-sample selection."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gradwise.losses.calibration import (TemperatureScaler, adaptive_calibration_error,
                                         classwise_calibration_error, expected_calibration_error, reliability_bins)
from gradwise.losses.correctness_aware import (CorrectnessAwareCalibrator, CorrectnessAwareLoss,
                                               correctness_aware_loss, fit_correctness_aware_calibrator,
                                               transformation_features)

DATA = Path(__file__).parent / "data"


def _random_case(seed, n=500, c=7, scale=2.5, acc=0.6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    y = torch.where(torch.rand(n, generator=g) < acc, logits.argmax(1), torch.randint(0, c, (n,), generator=g))
    return logits, y


# ---------------------------------------------------------------- brute-force references (loops over bins)

def _ece_loop(probs, y, n_bins, norm="l1"):
    conf, pred = probs.max(1)
    acc = (pred == y).double()
    edges = torch.linspace(0, 1, n_bins + 1)
    total, sq, worst = 0.0, 0.0, 0.0
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        inb = (conf.float() > lo) & (conf.float() <= hi)
        if inb.any():
            gap = abs(acc[inb].mean().item() - conf[inb].mean().item())
            w = inb.double().mean().item()
            total += w * gap
            sq += w * gap ** 2
            worst = max(worst, gap)
    return {"l1": total, "l2": math.sqrt(sq), "max": worst}[norm]


def _adaptive_loop(probs, y, n_bins):
    conf, pred = probs.max(1)
    acc = (pred == y).double()
    order = torch.sort(conf, stable=True).indices
    n = len(conf)
    total = 0.0
    for b in range(n_bins):
        idx = order[(b * n + n_bins - 1) // n_bins:((b + 1) * n + n_bins - 1) // n_bins]
        if len(idx):
            total += len(idx) / n * abs(acc[idx].mean().item() - conf[idx].mean().item())
    return total


def _classwise_loop(probs, y, n_bins):
    n, k = probs.shape
    edges = torch.linspace(0, 1, n_bins + 1)
    out = 0.0
    for c in range(k):
        p = probs[:, c]
        hit = (y == c).double()
        for b, (lo, hi) in enumerate(zip(edges[:-1].tolist(), edges[1:].tolist())):
            inb = (p.float() <= hi) & ((p.float() > lo) | (b == 0))
            if inb.any():
                out += inb.double().sum().item() / n * abs(hit[inb].mean().item() - p[inb].mean().item())
    return out / k


# ---------------------------------------------------------------- calibration metrics

def test_ece_of_perfectly_calibrated_predictions_is_near_zero():
    g = torch.Generator().manual_seed(0)
    n, c = 200_000, 4
    probs = torch.softmax(torch.randn(n, c, generator=g, dtype=torch.float64) * 2, 1)
    y = torch.multinomial(probs, 1, generator=g).squeeze(1)  # labels drawn from the predicted distribution
    assert expected_calibration_error(probs, y).item() < 0.01
    assert adaptive_calibration_error(probs, y).item() < 0.01
    assert classwise_calibration_error(probs, y).item() < 0.005
    # an overconfident version of the same predictions is visibly miscalibrated
    sharp = torch.softmax(torch.log(probs) * 3, 1)
    assert expected_calibration_error(sharp, y).item() > 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [1, 10, 15])
@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_ece_matches_loop_over_bins(seed, n_bins, norm):
    logits, y = _random_case(seed)
    probs = logits.softmax(1)
    got = expected_calibration_error(logits, y, n_bins=n_bins, norm=norm).item()
    assert got == pytest.approx(_ece_loop(probs, y, n_bins, norm), abs=1e-12)
    assert expected_calibration_error(probs, y, n_bins=n_bins, norm=norm).item() == pytest.approx(got, abs=1e-12)


def test_ece_hand_computed_example():
    # confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct), 0.3+ rows; 5 bins of width 0.2
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.45, 0.55]], dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 0])
    # bin (0.8,1]: conf .9, acc .5 -> 2/4*0.4 = 0.2 ; bin (0.4,0.6]: conf (.6+.55)/2=.575, acc .5 -> 2/4*.075
    assert expected_calibration_error(probs, y, n_bins=5).item() == pytest.approx(0.2 + 0.0375, abs=1e-12)
    assert expected_calibration_error(probs, y, n_bins=5, norm="max").item() == pytest.approx(0.4, abs=1e-12)
    # adaptive with 2 bins: sorted conf [.55 (wrong), .6 (ok)], [.9, .9] -> .5*|.5-.575| + .5*|.5-.9|
    assert adaptive_calibration_error(probs, y, n_bins=2).item() == pytest.approx(0.5 * 0.075 + 0.5 * 0.4, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_bins", [3, 10, 15])
def test_adaptive_and_classwise_match_loops(seed, n_bins):
    logits, y = _random_case(seed, n=301)
    probs = logits.softmax(1)
    assert adaptive_calibration_error(logits, y, n_bins=n_bins).item() == pytest.approx(
        _adaptive_loop(probs, y, n_bins), abs=1e-12)
    assert classwise_calibration_error(logits, y, n_bins=n_bins).item() == pytest.approx(
        _classwise_loop(probs, y, n_bins), abs=1e-12)


def test_ece_matches_authors_code_golden():
    gold = torch.load(DATA / "correctness_aware_golden.pt", weights_only=True)["ece"]
    for nb, value in gold["values"].items():
        got = expected_calibration_error(gold["logits"], gold["labels"], n_bins=int(nb))
        assert got.item() == pytest.approx(value, abs=2e-6)


def test_reliability_bins_sum_to_ece():
    logits, y = _random_case(3)
    conf, acc, count = reliability_bins(logits, y, n_bins=10)
    ok = count > 0
    ece = ((count[ok] / count.sum()) * (acc[ok] - conf[ok]).abs()).sum()
    assert ece.item() == pytest.approx(expected_calibration_error(logits, y, n_bins=10).item(), abs=1e-12)
    assert torch.isnan(conf[~ok]).all()


def test_metrics_reject_bad_arguments():
    logits, y = _random_case(0, n=10)
    for fn in (expected_calibration_error, adaptive_calibration_error, classwise_calibration_error):
        with pytest.raises(ValueError, match="n_bins"):
            fn(logits, y, n_bins=0)
        with pytest.raises(ValueError, match="norm"):
            fn(logits, y, norm="l3")
        with pytest.raises(ValueError, match="target"):
            fn(logits, y + 10)
        with pytest.raises(ValueError, match="probs_or_logits"):
            fn(logits[0], y)
        with pytest.raises(ValueError, match="probs_or_logits"):
            fn(-logits.softmax(1), y, from_logits=False)


# ---------------------------------------------------------------- temperature scaling

@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_temperature_scaling_recovers_the_generating_temperature(t_true):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(20_000, 5, generator=g) * 3
    y = torch.multinomial(torch.softmax(z / t_true, 1), 1, generator=g).squeeze(1)
    ts = TemperatureScaler().fit(z, y)
    assert ts.temperature == pytest.approx(t_true, rel=0.05)
    assert torch.equal(ts(z).argmax(1), z.argmax(1))
    nll_fit = F.cross_entropy(ts(z), y).item()
    for t in (ts.temperature * 0.9, ts.temperature * 1.1):  # it is the minimum
        assert F.cross_entropy(z / t, y).item() > nll_fit


def test_temperature_scaler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        TemperatureScaler(0.0)
    with pytest.raises(ValueError, match="target"):
        TemperatureScaler().fit(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))


# ---------------------------------------------------------------- correctness-aware loss

def _ca_reference(logits, y, balance=True):
    conf, pred = logits.softmax(1).max(1)
    c = (pred == y).double()
    per = (conf - c) ** 2
    if not balance:
        return per.mean()
    a = c.mean()
    w = torch.where(c.bool(), 1 - a, a)  # the authors' weights
    return (w * per).sum() / w.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("balance", [True, False])
def test_ca_loss_matches_closed_form(seed, balance):
    logits, y = _random_case(seed, n=64)
    got = correctness_aware_loss(logits, y, balance=balance)
    assert got.item() == pytest.approx(_ca_reference(logits, y, balance).item(), abs=1e-12)
    none = correctness_aware_loss(logits, y, balance=balance, reduction="none")
    assert none.mean().item() == pytest.approx(got.item(), abs=1e-12)
    assert correctness_aware_loss(logits, y, balance=balance, reduction="sum").item() == pytest.approx(
        none.sum().item(), abs=1e-10)
    assert torch.allclose(CorrectnessAwareLoss(balance=balance)(logits, y), got)


def test_ca_loss_limiting_cases():
    # confident and correct -> 0; confident and wrong -> 1; uniform over C classes, correct -> (1-1/C)^2
    big = torch.tensor([[50.0, 0.0, 0.0], [0.0, 50.0, 0.0]], dtype=torch.float64)
    assert correctness_aware_loss(big, torch.tensor([0, 1])).item() == pytest.approx(0.0, abs=1e-12)
    assert correctness_aware_loss(big, torch.tensor([1, 0])).item() == pytest.approx(1.0, abs=1e-12)
    flat = torch.zeros(4, 3, dtype=torch.float64)  # argmax 0 everywhere
    loss = correctness_aware_loss(flat, torch.tensor([0, 0, 0, 0]))
    assert loss.item() == pytest.approx((1 - 1 / 3) ** 2, abs=1e-12)
    # balanced = average of the correct-group mean and the wrong-group mean, whatever the group sizes
    logits, y = _random_case(5, n=40)
    c = logits.argmax(1) == y
    per = correctness_aware_loss(logits, y, balance=False, reduction="none")
    assert correctness_aware_loss(logits, y).item() == pytest.approx(
        0.5 * (per[c].mean() + per[~c].mean()).item(), abs=1e-12)
    # the gradient raises confidence on correct and lowers it on wrong predictions (temperature view)
    t = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    mid = big / 25  # logits 2 and 0: not saturated
    correctness_aware_loss(mid / t, torch.tensor([0, 1]), balance=False).backward()
    assert t.grad > 0  # all correct: lowering T (sharper, more confident) lowers the loss
    t.grad = None
    correctness_aware_loss(mid / t, torch.tensor([1, 0]), balance=False).backward()
    assert t.grad < 0  # all wrong: raising T (less confident) lowers the loss


def test_ca_loss_ignore_index():
    logits, y = _random_case(6, n=30)
    y2 = y.clone()
    y2[::3] = -100
    keep = y2 != -100
    a = correctness_aware_loss(logits, y2)
    b = correctness_aware_loss(logits[keep], y[keep])
    assert a.item() == pytest.approx(b.item(), abs=1e-12)
    none = correctness_aware_loss(logits, y2, reduction="none")
    assert (none[~keep] == 0).all() and none[keep].mean().item() == pytest.approx(a.item(), abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([torch.float32, torch.bfloat16]), st.sampled_from([1.0, 1e2, 1e4]))
def test_ca_loss_finite_for_extreme_logits(seed, dtype, scale):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(16, 5, generator=g) * scale).to(dtype).requires_grad_()
    y = torch.randint(0, 5, (16,), generator=g)
    loss = correctness_aware_loss(logits, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_ca_loss_rejects_bad_arguments():
    logits, y = _random_case(0, n=8)
    with pytest.raises(ValueError, match="reduction"):
        correctness_aware_loss(logits, y, reduction="avg")
    with pytest.raises(ValueError, match="target"):
        correctness_aware_loss(logits, y.float())
    with pytest.raises(ValueError, match="balance"):
        correctness_aware_loss(logits, y, balance=1)


def test_ca_calibrator_training_matches_authors_code():
    gold = torch.load(DATA / "correctness_aware_golden.pt", weights_only=True)["calibrator"]
    names = {"embed.0.weight": "embed_layer.0.weight", "embed.0.bias": "embed_layer.0.bias",
             "temperature_layer.weight": "temperature_layer.weight", "temperature_layer.bias": "temperature_layer.bias"}
    for case in gold:
        cal = CorrectnessAwareCalibrator(12, 5)
        cal.load_state_dict({k: case["init"][v] for k, v in names.items()})
        if case["optimizer"] == "adam":
            fit_correctness_aware_calibrator(cal, case["logits"], case["features"], case["labels"],
                                             epochs=case["epochs"], lr=case["lr"], batch_size=case["batch_size"])
        else:  # the golden run swapped their Adam for SGD to expose the gradient's size
            opt = torch.optim.SGD(cal.parameters(), lr=case["lr"])
            for _ in range(case["epochs"]):
                opt.zero_grad()
                correctness_aware_loss(cal(case["logits"], case["features"]), case["labels"]).backward()
                opt.step()
        for k, v in names.items():
            moved = (case["final"][v] - case["init"][v]).abs().max()
            err = (cal.state_dict()[k] - case["final"][v]).abs().max()
            assert err <= 1e-6 + 1e-4 * moved, (case["optimizer"], k, err, moved)


def test_transformation_features_and_calibrator_shapes():
    logits, y = _random_case(0, n=20, c=6)
    logits = logits.float()
    views = [logits + 0.1, logits.flip(1), logits * 0.5]
    f = transformation_features(logits, views, k=4)
    assert f.shape == (20, 12)
    idx = logits.topk(4, 1).indices
    assert torch.allclose(f[:, 4:8], views[1].softmax(1).gather(1, idx))
    cal = CorrectnessAwareCalibrator(12)
    out = cal(logits, f)
    assert torch.equal(out.argmax(1), logits.argmax(1))
    t = cal.temperature(f)
    assert ((t >= 0.1) & (t <= 10)).all()
    with pytest.raises(ValueError, match="k"):
        transformation_features(logits, views, k=7)


# ---------------------------------------------------------------- multi-sample dropout

from torch import nn  # noqa: E402

from gradwise.losses.multi_sample_dropout import MultiSampleDropout  # noqa: E402


def _msd(p=0.5, s=4, reduction="mean"):
    torch.manual_seed(0)
    return MultiSampleDropout(nn.Linear(6, 3), num_samples=s, p=p, reduction=reduction)


def test_msd_eval_and_p0_equal_head():
    x = torch.randn(5, 6)
    y = torch.randint(0, 3, (5,))
    m = _msd().eval()
    assert torch.equal(m(x), m.head(x))
    assert torch.equal(m.loss(x, y, F.cross_entropy), F.cross_entropy(m.head(x), y))
    m0 = _msd(p=0.0).train()
    assert torch.allclose(m0(x), m0.head(x), atol=1e-6)
    assert torch.allclose(m0.loss(x, y, F.cross_entropy), F.cross_entropy(m0.head(x), y), atol=1e-6)
    assert torch.allclose(_msd(p=0.0, reduction="sum").train().loss(x, y, F.cross_entropy),
                          4 * F.cross_entropy(m0.head(x), y), atol=1e-5)
    calls = []
    m0.head.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    m0.loss(x, y, F.cross_entropy)
    assert calls == [5]  # p=0: one pass over the batch, not S


def test_msd_loss_is_mean_of_per_sample_losses_under_a_fixed_seed():
    x = torch.randn(5, 6)
    y = torch.randint(0, 3, (5,))
    m = _msd(p=0.5, s=4).train()
    torch.manual_seed(123)
    got = m.loss(x, y, F.cross_entropy)
    torch.manual_seed(123)  # the same masks: one dropout call on the stacked [S*N, D] batch
    masked = F.dropout(x.repeat(4, 1), 0.5, training=True).view(4, 5, 6)
    ref = torch.stack([F.cross_entropy(m.head(masked[s]), y) for s in range(4)]).mean()
    assert torch.allclose(got, ref, atol=1e-6)
    torch.manual_seed(123)
    out = m(x)
    assert torch.allclose(out, torch.stack([m.head(masked[s]) for s in range(4)]).mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="num_samples"):
        MultiSampleDropout(nn.Identity(), num_samples=0)
    with pytest.raises(ValueError, match="p"):
        MultiSampleDropout(nn.Identity(), p=1.0)


# ---------------------------------------------------------------- loss-based reweighting

from gradwise.losses.hard_samples import select_hard_samples  # noqa: E402
from gradwise.losses.loss_reweighting import ReweightedLoss, loss_reweighting_weights, reweighted_loss  # noqa: E402
from gradwise.losses.temperature_sampling import (TemperatureSampler, class_weights,  # noqa: E402
                                                  cooldown_temperature, temperature_probabilities)


def test_reweighting_matches_authors_code_golden():
    gold = torch.load(DATA / "loss_reweighting_golden.pt", weights_only=True)["cases"]
    for c in gold:
        w = loss_reweighting_weights(c["losses"], strategy=c["strategy"], temperature=c["temperature"])
        assert torch.allclose(w / len(w), c["weights"], rtol=1e-12, atol=1e-15), c["strategy"]


@pytest.mark.parametrize("strategy", ["linupper", "quadratic", "extremes", "upper", "uniform"])
def test_reweighting_weights_normalised_and_detached(strategy):
    losses = (torch.rand(50, dtype=torch.float64) * 4).requires_grad_()
    w = loss_reweighting_weights(losses, strategy=strategy, temperature=0.5)
    assert not w.requires_grad and (w > 0).all()
    assert w.mean().item() == pytest.approx(1.0, abs=1e-12)
    loss = reweighted_loss(losses, strategy=strategy, temperature=0.5)
    loss.backward()
    assert torch.allclose(losses.grad, w / 50)  # gradient through the losses only
    assert torch.allclose(ReweightedLoss(strategy=strategy, temperature=0.5)(losses), loss)
    none = reweighted_loss(losses, strategy=strategy, temperature=0.5, reduction="none")
    assert torch.allclose(none.mean(), loss) and torch.allclose(
        reweighted_loss(losses, strategy=strategy, temperature=0.5, reduction="sum"), none.sum())


def test_reweighting_orderings_and_limits():
    losses = torch.linspace(0.1, 3.0, 30, dtype=torch.float64)
    up = loss_reweighting_weights(losses, strategy="upper", temperature=0.3)
    assert (up.diff() > 0).all()  # higher loss -> higher weight
    lin = loss_reweighting_weights(losses, strategy="linupper", temperature=0.3)
    mid = losses.median()
    assert (lin[losses < mid].diff() > 0).all() and torch.allclose(lin[losses > mid + 0.1], lin[-1])
    ext = loss_reweighting_weights(losses, strategy="extremes", temperature=0.3)
    assert ext[0] > ext[15] and ext[-1] > ext[15]
    quad = loss_reweighting_weights(losses, strategy="quadratic", temperature=0.3)
    assert quad[15] > quad[0] and quad[15] > quad[-1]
    hot = loss_reweighting_weights(losses, strategy="extremes", temperature=1e9)
    assert torch.allclose(hot, torch.ones_like(hot))  # T -> inf: uniform
    same = loss_reweighting_weights(torch.full((7,), 2.0), strategy="linupper")
    assert torch.allclose(same, torch.ones(7))  # all equal losses: uniform, no NaN
    with pytest.raises(ValueError, match="strategy"):
        loss_reweighting_weights(losses, strategy="mid")
    with pytest.raises(ValueError, match="temperature"):
        loss_reweighting_weights(losses, temperature=0)
    with pytest.raises(ValueError, match="per_sample_losses"):
        loss_reweighting_weights(losses.view(5, 6))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([torch.float32, torch.bfloat16]), st.sampled_from([1.0, 1e4]))
def test_reweighting_finite_for_extreme_losses(seed, dtype, scale):
    g = torch.Generator().manual_seed(seed)
    losses = (torch.rand(16, generator=g) * scale).to(dtype).requires_grad_()
    loss = reweighted_loss(losses, strategy="extremes", temperature=0.4)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(losses.grad).all()


# ---------------------------------------------------------------- temperature sampling

def test_temperature_probability_limits():
    counts = [500, 100, 20, 5]
    c = torch.tensor(counts, dtype=torch.float64)
    assert torch.allclose(temperature_probabilities(counts, 1.0), c / c.sum())
    assert torch.allclose(temperature_probabilities(counts, math.inf), torch.full((4,), 0.25, dtype=torch.float64))
    assert torch.allclose(temperature_probabilities(counts, 2.0), c.sqrt() / c.sqrt().sum())
    assert torch.allclose(class_weights(counts, 1.0), torch.ones(4, dtype=torch.float64))
    w = class_weights(counts, math.inf)
    assert torch.allclose(w * c, (w * c)[0].expand(4))  # w ∝ 1/n
    assert (w * c / c.sum()).sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="temperature"):
        temperature_probabilities(counts, 0.0)
    with pytest.raises(ValueError, match="counts"):
        class_weights([3, 0], 1.0)


def test_cooldown_default_is_the_papers_step_schedule():
    # Li et al. section 4: tau = 5 for the first 30k of 60k iterations, then tau = 1 at once (a step, not a ramp)
    ts = [cooldown_temperature(s, 60_000) for s in (0, 29_999, 30_000, 45_000, 59_999)]
    assert ts == [5.0, 5.0, 1.0, 1.0, 1.0]
    assert cooldown_temperature(45_000, 60_000, schedule="linear") == pytest.approx(3.0, abs=1e-3)  # the old default
    # Theorem 1: the scalarization weights are p(i; tau) / p(i; 1)
    counts = [600_000, 1_000_000, 83_000]
    c = torch.tensor(counts, dtype=torch.float64)
    torch.testing.assert_close(class_weights(counts, 5.0), temperature_probabilities(counts, 5.0) / (c / c.sum()))


def test_cooldown_schedule():
    ts = [cooldown_temperature(s, 100, t_start=5.0, t_end=1.0, cooldown_start=0.5) for s in range(100)]
    assert ts[0] == ts[49] == 5.0 and ts[-1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(ts, ts[1:]))
    assert cooldown_temperature(60, 100, schedule="step") == 1.0
    with pytest.raises(ValueError, match="schedule"):
        cooldown_temperature(0, 10, schedule="cosine")


def test_sampler_draws_match_probabilities():
    groups = torch.tensor([0] * 400 + [1] * 80 + [2] * 16 + [3] * 4)
    s = TemperatureSampler(groups, temperature=3.0, generator=torch.Generator().manual_seed(0))
    p = s.group_probabilities()
    assert torch.allclose(p, temperature_probabilities([400, 80, 16, 4], 3.0))
    assert s.sample_probabilities().sum().item() == pytest.approx(1.0)
    n = 200_000
    drawn = torch.bincount(groups[s.draw(n)], minlength=4).double()
    chi2 = ((drawn - n * p) ** 2 / (n * p)).sum().item()
    assert chi2 < 16.3  # chi-square, 3 dof, p = 0.001
    # within a group every sample is equally likely
    per_sample = torch.bincount(s.draw(n), minlength=500).double()
    within = per_sample[496:]  # the four samples of group 3 share its probability evenly
    assert within.min() > 0.85 * within.mean() and within.sum() == pytest.approx(n * p[3].item(), rel=0.05)
    s.temperature = 1.0
    assert torch.allclose(s.group_probabilities(), torch.tensor([400, 80, 16, 4], dtype=torch.float64) / 500)
    assert len(list(iter(s))) == len(s) == 500
    with pytest.raises(ValueError, match="groups"):
        TemperatureSampler(torch.tensor([0.5, 1.0]))


# ---------------------------------------------------------------- hard-sample selection

def test_select_hard_samples_returns_the_k_largest():
    losses = torch.rand(100, generator=torch.Generator().manual_seed(0))
    idx = select_hard_samples(losses, fraction=0.25)
    assert len(idx) == 25
    assert set(idx.tolist()) == set(torch.argsort(losses, descending=True)[:25].tolist())
    assert (losses[idx].diff() <= 0).all()  # largest first
    assert losses[idx].min() >= losses[~torch.isin(torch.arange(100), idx)].max()
    assert len(select_hard_samples(losses, k=3)) == 3 and len(select_hard_samples(losses, fraction=1.0)) == 100
    assert len(select_hard_samples(losses, fraction=0.001)) == 1
    with pytest.raises(ValueError, match="fraction"):
        select_hard_samples(losses, fraction=0.0)
    with pytest.raises(ValueError, match="k"):
        select_hard_samples(losses, k=101)


# ---------------------------------------------------------------- arena smoke tests

def _run_study(name, tmp_path, argv):
    import argparse

    from rich.console import Console

    from gradwise.arena import load_study

    study = load_study(name)
    parser = argparse.ArgumentParser()
    study.add_arguments(parser)
    args = parser.parse_args([*argv, "--out", str(tmp_path)])
    console = Console(record=True, width=160)
    out = study.run(args, console)
    return out, console.export_text()


def test_calibration_study_smoke(tmp_path):
    out, text = _run_study("calibration", tmp_path, ["--seeds", "1", "--epochs", "2", "--ca-epochs", "2"])
    for f in ("results.csv", "results.json", "reliability.png"):
        assert (out / f).stat().st_size > 0
    assert "temperature scaling" in text and "CA balanced" in text


def test_imbalance_study_smoke(tmp_path):
    out, text = _run_study("imbalance", tmp_path, ["--seeds", "1", "--steps", "5"])
    for f in ("results.csv", "results.json", "per_class_recall.png"):
        assert (out / f).stat().st_size > 0
    assert "cooldown" in text and "upweight" in text


def _dirichletcal_classwise_ece(probs, y, bins):
    """Transcription of classwise_ECE / binary_ECE (power=1) in calib/utils/functions.py of
    dirichletcal/experiments_neurips, the code classwise_calibration_error cites."""
    import numpy as np

    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.eye(probs.shape[1])[np.asarray(y)]  # label_binarize
    out = []
    for c in range(probs.shape[1]):
        p, t = probs[:, c], y_true[:, c]
        idx = np.digitize(p, np.linspace(0, 1, bins)) - 1
        out.append(sum(np.abs(np.mean(p[idx == i]) - np.mean(t[idx == i])) * np.sum(idx == i) / len(p)
                       for i in np.unique(idx)))
    return float(np.mean(out))


@pytest.mark.parametrize("n_bins", [1, 2, 3, 5, 15])
def test_classwise_dirichletcal_binning_matches_the_cited_code(n_bins):
    g = torch.Generator().manual_seed(n_bins)
    probs = torch.softmax(torch.randn(200, 3, generator=g, dtype=torch.float64) * 3, 1)
    # rows that hit the code's special cases: p = 1 exactly (its own bin) and p on a bin edge
    probs[:3] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.25, 0.25]], dtype=torch.float64)
    y = torch.randint(0, 3, (200,), generator=g)
    want = _dirichletcal_classwise_ece(probs.numpy(), y.numpy(), n_bins)
    got = classwise_calibration_error(probs, y, n_bins=n_bins, binning="dirichletcal").item()
    assert got == pytest.approx(want, abs=1e-12)


def test_classwise_default_binning_and_the_documented_mapping():
    """Default binning, n_bins = M - 1, equals the code's bins=M where no probability is 1 or on an edge,
    and differs where one is exactly 1 (the code gives p = 1 a bin of its own)."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(300, 4, generator=g, dtype=torch.float64), 1)
    y = torch.randint(0, 4, (300,), generator=g)
    for m in (4, 11, 16):
        assert classwise_calibration_error(probs, y, n_bins=m - 1).item() == pytest.approx(
            _dirichletcal_classwise_ece(probs.numpy(), y.numpy(), m), abs=1e-12)
    # confidently wrong at p = 1 and right at p = 0.95: one bin in the default (0.9, 1], two in the code
    probs[:20] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    y[:20] = 0
    probs[20:40] = torch.tensor([0.0, 0.0, 0.05, 0.95], dtype=torch.float64)
    y[20:40] = 3
    assert classwise_calibration_error(probs, y, n_bins=10).item() != pytest.approx(
        _dirichletcal_classwise_ece(probs.numpy(), y.numpy(), 11), abs=1e-6)
    assert classwise_calibration_error(probs, y, n_bins=11, binning="dirichletcal").item() == pytest.approx(
        _dirichletcal_classwise_ece(probs.numpy(), y.numpy(), 11), abs=1e-12)
    with pytest.raises(ValueError, match=r"Invalid binning: 'numpy' \(accepted: 'equal_width', 'dirichletcal'\)"):
        classwise_calibration_error(probs, y, binning="numpy")
