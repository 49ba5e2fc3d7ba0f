"""The Multi-Power Law (Luo et al. 2025): golden data from the authors' code, invariants, fitting, bad inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gradwise.schedules import MultiPowerLaw
from gradwise.schedules import multi_power_law as mpl

GOLDEN = torch.load(Path(__file__).resolve().parents[1] / "data" / "multi_power_law_golden.pt")
STEPS = GOLDEN["steps0"].numpy() + 1  # their 0-based step index i is gradwise's step i + 1
P400 = GOLDEN["params"].tolist()


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["constant", "cosine", "wsd", "wsdld", "step"])
def test_prediction_matches_the_authors_evaluate_mpl(name):
    law = MultiPowerLaw().set_params(*P400)
    got = law.predict(GOLDEN["lrs"][name], STEPS)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, GOLDEN["pred"][name], rtol=1e-12, atol=0)
    # numpy and float32 torch schedules give the same (float64) numbers
    lrs32 = GOLDEN["lrs"][name].float()
    torch.testing.assert_close(law.predict(lrs32, torch.from_numpy(STEPS)),
                               law.predict(lrs32.double().numpy(), STEPS))


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["constant", "cosine", "wsd", "wsdld", "step"])
def test_objective_and_gradient_match_the_authors_mpl_forward(name):
    law = MultiPowerLaw()
    arr, idx = law._prepare(GOLDEN["lrs"][name], STEPS)
    terms = mpl._torch_terms([(arr, idx, GOLDEN["curves"][name].numpy())], 0)
    p = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in GOLDEN["p_eval"].tolist()]
    value = mpl._objective(p, terms)
    value.backward()
    assert float(value.detach()) == pytest.approx(GOLDEN["objective"][name], rel=1e-10)
    torch.testing.assert_close(torch.stack([q.grad for q in p]), GOLDEN["grad"][name], rtol=1e-10, atol=0)


def _golden_fit_data():
    law = MultiPowerLaw()
    return [law._prepare(GOLDEN["lrs"][n], STEPS) + (GOLDEN["curves"][n].numpy(),) for n in GOLDEN["fit_train"]]


@pytest.mark.slow  # 135 L-BFGS-B runs with numerical gradients: 10-20 s
@pytest.mark.numerics
def test_initialization_matches_the_authors_initialize_params():
    init = mpl._initialize(_golden_fit_data())
    torch.testing.assert_close(torch.from_numpy(init), GOLDEN["fit_init"], rtol=1e-8, atol=0)


@pytest.mark.slow  # about 20 s alone, a minute on a busy 2-core machine
@pytest.mark.numerics
@pytest.mark.slow  # 270 L-BFGS-B runs: about a minute
def test_initialization_survives_curves_where_every_start_predicts_a_negative_loss():
    """At a peak LR of 0.03 (100x their runs') the surrogate's drop term B * (peak - eta) with their B grid
    (100..1000) exceeds the loss at every start: their objective is NaN everywhere and their fit stops; here
    stage 1 retries with the prediction floored and returns a finite start that predicts a positive loss."""
    import math

    lrs = np.array([0.03 * (0.1 + 0.45 * (1 + math.cos(math.pi * i / 300))) for i in range(300)])
    idx = np.arange(20, 300, 10)
    y = 2.0 + np.cumsum(lrs)[idx] ** -0.5 + np.random.default_rng(0).normal(0, 0.01, idx.size)
    p = mpl._initialize([(lrs, idx, y)])
    assert np.all(np.isfinite(p)) and np.all(p >= 0)
    L0, A, alpha, B = p
    pred = L0 + A * np.cumsum(lrs)[idx] ** -alpha - B * (lrs.max() - lrs[idx])
    assert np.all(pred > 0) and abs(float(np.mean(np.log(pred) - np.log(y)))) < 0.05


def test_adamw_stage_matches_the_authors_mpl_adam_fit():
    # their bookkeeping (parameters after the step) and float32 log losses, from their stage-1 result
    start = (*GOLDEN["fit_init"].tolist(), 1.0, 0.5, 0.5)
    best, loss = mpl._adamw_fit(_golden_fit_data(), start, 0, params_after_step=True, log_dtype=torch.float32)
    torch.testing.assert_close(torch.tensor(best, dtype=torch.float64), GOLDEN["fit_best"], rtol=1e-9, atol=0)
    assert loss == pytest.approx(GOLDEN["fit_best_loss"], rel=1e-9)
    # gradwise's bookkeeping returns the parameters whose objective is the reported one
    best, loss = mpl._adamw_fit(_golden_fit_data(), start, 0)
    terms = mpl._torch_terms(_golden_fit_data(), 0)
    assert float(mpl._objective([torch.tensor(v, dtype=torch.float64) for v in best], terms)) == \
        pytest.approx(loss, rel=1e-12)


def _schedule(kind, T=600, W=30, peak=3e-4):
    n = T - W
    i = np.arange(n)
    rest = {"constant": np.full(n, peak),
            "cosine": 3e-5 + 0.5 * (peak - 3e-5) * (1 + np.cos(np.pi * i / n)),
            "wsd": np.where(i < 0.8 * n, peak, peak - (peak - 3e-5) * (i - 0.8 * n) / (0.2 * n))}[kind]
    return np.concatenate([np.linspace(0, peak, W), rest])


def test_fit_on_law_made_curves_predicts_an_unseen_schedule():
    torch.set_num_threads(1)
    truth = MultiPowerLaw().set_params(*P400)
    steps = np.arange(30, 601, 10)
    curves = [(_schedule(k), steps, truth.predict(_schedule(k), steps)) for k in ("cosine", "constant")]
    law = MultiPowerLaw().fit(curves)
    assert set(law.params) == {"L0", "A", "alpha", "B", "C", "beta", "gamma"}
    assert len(law.fit_init_) == 4 and law.fit_loss_ < 1e-3
    wsd = _schedule("wsd")
    pred, true = law.predict(wsd, np.arange(30, 601)), truth.predict(wsd, np.arange(30, 601))
    assert float(((pred - true).abs() / true).max()) < 5e-3


def test_invariants():
    law = MultiPowerLaw().set_params(*P400)
    const, wsd = _schedule("constant"), _schedule("wsd")
    steps = np.arange(30, 601)
    # identical schedules up to the decay: identical curves; after it the decay lowers the loss
    a, b = law.predict(const, steps), law.predict(wsd, steps)
    cut = int(30 + 0.8 * 570) - 30
    torch.testing.assert_close(a[:cut], b[:cut], rtol=1e-15, atol=0)
    assert torch.all(b <= a + 1e-12) and b[-1] < a[-1] - 0.01
    # B = 0: the plain power law in the LR sum
    law0 = MultiPowerLaw().set_params(P400[0], P400[1], P400[2], 0.0, *P400[4:])
    s1 = torch.from_numpy(np.cumsum(wsd)[steps - 1])
    torch.testing.assert_close(law0.predict(wsd, steps), P400[0] + P400[1] * s1 ** (-P400[2]))
    # warmup_steps leaves warm-up rises out of the loss drop: no effect on a schedule without warm-up,
    # a lower curve (no negative drops) with one
    flat = np.full(100, 3e-4)
    torch.testing.assert_close(MultiPowerLaw(warmup_steps=30).set_params(*P400).predict(flat), law.predict(flat))
    assert torch.all(MultiPowerLaw(warmup_steps=30).set_params(*P400).predict(const, steps)
                     < law.predict(const, steps))


def test_chunked_prediction_equals_one_block(monkeypatch):
    law = MultiPowerLaw().set_params(*P400)
    lrs = _schedule("cosine")
    whole = law.predict(lrs, np.arange(30, 601))
    monkeypatch.setattr(mpl, "_CHUNK", 1000)  # 1 row of 600 drops per block
    torch.testing.assert_close(law.predict(lrs, np.arange(30, 601)), whole, rtol=1e-15, atol=0)


def test_lr_zero_steps_are_finite():
    law = MultiPowerLaw().set_params(*P400)
    lrs = np.concatenate([np.full(50, 3e-4), np.linspace(3e-4, 0.0, 51)[1:]])  # linear decay to exactly 0
    out = law.predict(lrs)
    assert torch.all(torch.isfinite(out))
    assert out[-1] < out[49]


def test_bad_inputs():
    with pytest.raises(RuntimeError, match="fit"):
        MultiPowerLaw().params
    with pytest.raises(RuntimeError, match="fit"):
        MultiPowerLaw().predict([1e-3] * 5)
    with pytest.raises(ValueError, match="warmup_steps"):
        MultiPowerLaw(warmup_steps=-1)
    with pytest.raises(ValueError, match="alpha"):
        MultiPowerLaw().set_params(2.0, 0.5, 0.0, 1.0, 1.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="beta"):
        MultiPowerLaw().set_params(2.0, 0.5, 0.5, 1.0, 1.0, -0.5, 0.5)
    law = MultiPowerLaw().set_params(*P400)
    with pytest.raises(ValueError, match="steps"):
        law.predict([1e-3] * 10, steps=[0, 3])
    with pytest.raises(ValueError, match="S1"):
        law.predict([0.0, 1e-3])
    with pytest.raises(ValueError, match="lrs"):
        law.predict([1e-3, float("nan")])
    with pytest.raises(ValueError, match="losses"):
        MultiPowerLaw().fit(([1e-3] * 10, [1, 2, 3, 4, 5, 6, 7], [1.0] * 6))
    with pytest.raises(ValueError, match="losses"):
        MultiPowerLaw().fit(([1e-3] * 10, list(range(1, 8)), [1.0] * 6 + [-1.0]))
    with pytest.raises(ValueError, match="at least 7"):
        MultiPowerLaw().fit(([1e-3] * 10, [1, 2], [1.0, 2.0]))
    with pytest.raises(ValueError, match="curves"):
        MultiPowerLaw().fit([])
