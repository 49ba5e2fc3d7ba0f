"""Tent: step by step equal to the authors' tent.py (tests/data/tta_golden.pt), and its own behaviour."""
import pytest
import torch

from gradwise.tta import Tent, bn_parameters

TOL = dict(rtol=0, atol=1e-12)


def tent_cases(golden):
    return [c for c in golden if c["method"] == "tent"]


@pytest.mark.parametrize("i", range(3))
def test_tent_matches_the_authors_code_step_by_step(i, tta_golden, replay):
    case = tent_cases(tta_golden)[i]
    outs, flat, _, _ = replay(case, Tent)
    torch.testing.assert_close(outs, case["outputs"], **TOL)
    torch.testing.assert_close(flat, case["params"], **TOL)
    # the parameters moved: the comparison is not of an unchanged model
    assert (case["params"][-1] - case["params"][0]).abs().max() > 0


def test_logits_are_those_before_the_update(make_model):
    model = make_model("mlp")
    x = torch.randn(8, 6, dtype=torch.float64)
    tent = Tent(model, torch.optim.SGD(model.parameters(), lr=0.5))
    with torch.no_grad():
        before = model(x)
        out = tent(x)
        after = model(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, before, rtol=0, atol=0)
    assert (after - before).abs().max() > 1e-6  # adapted even under no_grad


def test_non_finite_logits_skip_the_update_and_are_counted(make_model):
    model = make_model("mlp")
    tent = Tent(model, torch.optim.SGD(bn_parameters(model), lr=0.5))
    x = torch.randn(8, 6, dtype=torch.float64)
    x[3, 0] = float("nan")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = tent(x)
    assert tent.num_skipped == 1 and not torch.isfinite(out).all()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())
    tent(torch.randn(8, 6, dtype=torch.float64))
    assert tent.num_skipped == 1


def test_inference_mode_is_refused_with_a_clear_error_and_inference_tensors_are_fine(make_model):
    tent = Tent(make_model("mlp"))
    with torch.inference_mode():
        x = torch.randn(8, 6, dtype=torch.float64)
        with pytest.raises(RuntimeError, match="inference_mode"):
            tent(x)
    assert torch.isfinite(tent(x)).all()  # an inference tensor made earlier is copied
