from pathlib import Path

import numpy as np
import pytest
import torch

from gradwise.rl import clip_value_gradients, vagram_model_loss

GOLDEN = Path(__file__).parents[1] / "data" / "vagram_golden.pt"


@pytest.mark.parametrize("name", sorted(torch.load(GOLDEN, weights_only=True)))
def test_matches_authors_code(name):
    c = torch.load(GOLDEN, weights_only=True)[name]
    p, t = c["pred"].clone().requires_grad_(True), c["target"]
    quantile = c["quantile"] if c["clip"] else None
    state = vagram_model_loss(p[:, :-1], t[:, :-1], c["value_grad"], clip_quantile=quantile, reduction="none")
    reward = (p[:, -1:] - t[:, -1:]).square()  # theirs adds it to every state column
    torch.testing.assert_close(state + reward, c["loss"], rtol=1e-10, atol=1e-12)
    mean = vagram_model_loss(p[:, :-1], t[:, :-1], c["value_grad"], clip_quantile=quantile) + reward.mean()
    torch.testing.assert_close(mean, c["loss"].mean(), rtol=1e-10, atol=1e-12)


def test_clip_matches_numpy_quantile_and_keeps_direction():
    g = torch.randn(3, 50, 4, dtype=torch.float64) * torch.rand(3, 50, 1, dtype=torch.float64) * 10
    out = clip_value_gradients(g, 0.8)
    for k in range(3):
        norms = g[k].norm(dim=-1)
        bound = np.quantile(norms.numpy(), 0.8)
        assert out[k].norm(dim=-1).max() <= bound * (1 + 1e-12)
        keep = norms < bound
        torch.testing.assert_close(out[k][keep], g[k][keep])
        cos = torch.nn.functional.cosine_similarity(out[k], g[k], dim=-1)
        torch.testing.assert_close(cos, torch.ones(50, dtype=torch.float64))


def test_ensemble_prediction_and_gradient_flow():
    pred = torch.randn(5, 8, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randn(8, 3, dtype=torch.float64)
    vg = torch.randn(2, 8, 3, dtype=torch.float64, requires_grad=True)
    loss = vagram_model_loss(pred, target, vg, clip_quantile=None, reduction="none")
    assert loss.shape == (5, 8, 3)
    expected = ((vg.detach()[:, None] * (pred.detach() - target)) ** 2).mean(0)
    torch.testing.assert_close(loss.detach(), expected)
    loss.sum().backward()
    assert pred.grad is not None and vg.grad is None
    # a zero value gradient along a dimension makes that dimension's error free
    z = vagram_model_loss(pred, target, torch.tensor([[0.0, 1.0, 1.0]], dtype=torch.float64).expand(8, 3),
                          clip_quantile=None, reduction="none")
    assert (z[..., 0] == 0).all()


def test_nan_propagates():
    pred = torch.zeros(4, 2, dtype=torch.float64)
    pred[0, 0] = float("nan")
    assert torch.isnan(vagram_model_loss(pred, torch.zeros(4, 2, dtype=torch.float64),
                                         torch.ones(4, 2, dtype=torch.float64)))


@pytest.mark.parametrize("args, kwargs, match", [
    ((torch.zeros(4, 2), torch.zeros(4, 3), torch.zeros(4, 2)), {}, "target"),
    ((torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(5, 2)), {}, "value_grad"),
    ((torch.zeros(4), torch.zeros(4), torch.zeros(4)), {}, "pred"),
    ((torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4, 2)), {"clip_quantile": 1.5}, "clip_quantile"),
    ((torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4, 2)), {"reduction": "max"}, "reduction"),
])
def test_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        vagram_model_loss(*args, **kwargs)
