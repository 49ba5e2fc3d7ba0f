"""EATA and eata_fishers: step by step equal to the authors' eata.py and main.py Fisher block
(tests/data/tta_golden.pt), bad input, and the fidelity notes."""
import math

import pytest
import torch

from gradwise.tta import EATA, bn_parameters, eata_fishers

TOL = dict(rtol=0, atol=1e-12)


def eata_cases(golden):
    return [c for c in golden if c["method"] == "eata"]


@pytest.mark.parametrize("i", range(4))
def test_eata_matches_the_authors_code_step_by_step(i, tta_golden, replay, golden_model):
    case = eata_cases(tta_golden)[i]
    extra = {}
    if "fishers" in case:
        extra["fishers"] = eata_fishers(golden_model(case), case["fisher_batches"])
    outs, flat, counts, wrapper = replay(case, EATA, **extra)
    torch.testing.assert_close(outs, case["outputs"], **TOL)
    torch.testing.assert_close(flat, case["params"], **TOL)
    assert [c[0] for c in counts] == case["n1"].tolist()
    assert [c[1] for c in counts] == case["n2"].tolist()
    for (_, _, ema), want in zip(counts, case["ema"]):
        if torch.isnan(want).all():
            assert ema is None
        else:
            torch.testing.assert_close(ema, want, **TOL)
    # each case filters: some samples are unreliable or redundant, and some are selected
    steps = case["kwargs"].get("steps", 1)
    assert 0 < case["n2"][-1] < case["n1"][-1] or case["n1"][-1] < case["batches"].shape[:2].numel() * steps
    assert case["n2"][-1] > 0


def test_fishers_match_the_authors_main_py(tta_golden, golden_model):
    case = next(c for c in eata_cases(tta_golden) if "fishers" in c)
    model = golden_model(case)
    grads_before = [p.grad for p in model.parameters()]
    got = eata_fishers(model, list(case["fisher_batches"]))
    assert sorted(got) == sorted(case["fishers"])
    for name, (f, theta0) in case["fishers"].items():
        torch.testing.assert_close(got[name][0], f, **TOL)
        torch.testing.assert_close(got[name][1], theta0, **TOL)
        assert f.abs().sum() > 0
    assert [p.grad for p in model.parameters()] == grads_before  # .grad untouched


def test_default_e_margin_is_04_ln_c_as_main_py(make_model):
    wrapper = EATA(make_model("mlp"))
    assert wrapper.e_margin is None
    wrapper(torch.randn(4, 6, dtype=torch.float64))
    assert wrapper.e_margin == pytest.approx(0.4 * math.log(5))


def test_reset_keeps_prob_ema_and_counters(make_model):
    model = make_model("mlp")
    model[-1].weight.data.mul_(8)
    wrapper = EATA(model, torch.optim.SGD(bn_parameters(model), lr=0.1), e_margin=1.5, d_margin=0.9)
    start = [p.detach().clone() for p in bn_parameters(model)]
    for _ in range(3):
        wrapper(torch.randn(8, 6, dtype=torch.float64))
    ema, n1, n2 = wrapper.prob_ema.clone(), wrapper.num_reliable, wrapper.num_selected
    assert n2 > 0
    wrapper.reset()
    for p, p0 in zip(bn_parameters(model), start):
        torch.testing.assert_close(p, p0, rtol=0, atol=0)
    torch.testing.assert_close(wrapper.prob_ema, ema, rtol=0, atol=0)
    assert (wrapper.num_reliable, wrapper.num_selected) == (n1, n2)


def test_nothing_selected_skips_the_step(make_model):
    model = make_model("mlp")
    wrapper = EATA(model, torch.optim.SGD(bn_parameters(model), lr=0.1), e_margin=1e-9)
    state = [p.detach().clone() for p in bn_parameters(model)]
    wrapper(torch.randn(8, 6, dtype=torch.float64))
    assert (wrapper.num_reliable, wrapper.num_selected, wrapper.prob_ema) == (0, 0, None)
    for p, p0 in zip(bn_parameters(model), state):
        torch.testing.assert_close(p, p0, rtol=0, atol=0)


def test_non_finite_logits_skip_everything_and_are_counted(make_model):
    model = make_model("mlp")
    wrapper = EATA(model, torch.optim.SGD(bn_parameters(model), lr=0.1), e_margin=3.0)
    x = torch.randn(8, 6, dtype=torch.float64)
    x[0, 2] = float("inf")
    state = [p.detach().clone() for p in bn_parameters(model)]
    wrapper(x)
    assert wrapper.num_skipped == 1
    assert (wrapper.num_reliable, wrapper.num_selected, wrapper.prob_ema) == (0, 0, None)
    for p, p0 in zip(bn_parameters(model), state):
        torch.testing.assert_close(p, p0, rtol=0, atol=0)


def test_one_host_sync_per_call(make_model, monkeypatch):
    model = make_model("mlp")
    wrapper = EATA(model, torch.optim.SGD(bn_parameters(model), lr=0.1), e_margin=3.0, d_margin=0.9,
                   fishers=eata_fishers(model, [torch.randn(8, 6, dtype=torch.float64)]))
    x = torch.randn(8, 6, dtype=torch.float64)
    wrapper(x)  # prob_ema set: the next call runs the redundancy filter too
    calls = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _r=real, _n=name, **k: calls.append(_n) or _r(self, *a, **k))
    wrapper(x)
    monkeypatch.undo()
    assert calls == ["tolist"] and wrapper.num_selected > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"e_margin": 0.0}, "e_margin"), ({"e_margin": -1.0}, "e_margin"), ({"e_margin": math.nan}, "e_margin"),
    ({"d_margin": 0.0}, "d_margin"), ({"d_margin": 1.5}, "d_margin"), ({"fisher_alpha": -1.0}, "fisher_alpha"),
    ({"steps": 0}, "steps"), ({"episodic": 1}, "episodic"),
])
def test_bad_hyperparameters_name_the_argument(kwargs, match, make_model):
    model = make_model("mlp")
    with pytest.raises(ValueError, match=f"Invalid {match}"):
        EATA(model, **kwargs)
    assert all(p.requires_grad for p in model.parameters())  # refused before the model was configured


def test_d_margin_one_is_accepted(make_model):
    assert EATA(make_model("mlp"), d_margin=1.0).d_margin == 1.0


def test_fisher_keys_and_shapes_must_match(make_model):
    model = make_model("mlp")
    good = eata_fishers(model, [torch.randn(4, 6, dtype=torch.float64)])
    assert sorted(good) == ["1.bias", "1.weight"]
    with pytest.raises(ValueError, match=r"Invalid fishers: keys \['nope.weight'\]"):
        EATA(model, fishers={**good, "nope.weight": good["1.weight"]})
    bad = dict(good)
    bad["1.weight"] = (torch.ones(3, dtype=torch.float64), good["1.weight"][1])
    with pytest.raises(ValueError, match=r"Invalid fishers\['1.weight'\].*\(8,\)"):
        EATA(model, fishers=bad)
    with pytest.raises(ValueError, match=r"Invalid fishers\['1.bias'\]"):
        EATA(model, fishers={"1.bias": torch.ones(8, dtype=torch.float64)})
    with pytest.raises(ValueError, match="Invalid input_batches: empty"):
        eata_fishers(model, [])
    with pytest.raises(ValueError, match="Invalid x"):
        eata_fishers(model, [torch.randn(1, 6, dtype=torch.float64)])
