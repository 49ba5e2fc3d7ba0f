from pathlib import Path

import pytest
import torch

from gradwise.rl import fdvl_value_loss

GOLDEN = Path(__file__).parents[1] / "data" / "fdvl_golden.pt"


@pytest.mark.parametrize("name", sorted(torch.load(GOLDEN, weights_only=True)))
def test_matches_authors_jax_code(name):
    c = torch.load(GOLDEN, weights_only=True)[name]
    v = c["v"].clone().requires_grad_(True)
    kw = dict(f=c["f"], temperature=c["temperature"], max_clip=c["max_clip"])
    per = fdvl_value_loss(c["q"], v, reduction="none", **kw)
    torch.testing.assert_close(per, c["loss"], rtol=1e-10, atol=1e-12)
    loss = fdvl_value_loss(c["q"], v, **kw)
    loss.backward()
    torch.testing.assert_close(loss, c["mean"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(v.grad, c["grad_v"], rtol=1e-10, atol=1e-12)


def test_chi2_and_tv_are_implicit_maximizers():
    # the minimiser over a constant v rises with the temperature, from below the mean of q to well above it
    q = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0], dtype=torch.float64)
    vs = torch.linspace(-2, 12, 1401, dtype=torch.float64)
    for f in ("chi2", "tv"):
        best = []
        for t in (0.5, 0.9):
            losses = torch.stack([fdvl_value_loss(q, v.expand(5), f=f, temperature=t) for v in vs])
            best.append(vs[losses.argmin()])
        assert best[0] <= q.mean() < best[1] - 1, f


def test_kl_is_gumbel_loss_scaled_by_batch_max():
    q = torch.tensor([0.5, -0.3, 0.1], dtype=torch.float64)
    v = torch.zeros(3, dtype=torch.float64)
    z = q - v
    expected = (torch.exp(z) - z - 1) / torch.exp(z.max())
    torch.testing.assert_close(fdvl_value_loss(q, v, f="kl", reduction="none"), expected)


def test_nan_propagates():
    q = torch.tensor([1.0, float("nan")], dtype=torch.float64)
    for f in ("chi2", "tv", "kl"):
        assert torch.isnan(fdvl_value_loss(q, torch.zeros(2, dtype=torch.float64), f=f))


@pytest.mark.parametrize("kwargs, match", [
    (dict(f="gumbel"), "f"), (dict(temperature=0.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(max_clip="7"), "max_clip"), (dict(reduction="avg"), "reduction"),
])
def test_bad_arguments(kwargs, match):
    v = torch.zeros(4, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        fdvl_value_loss(torch.zeros(4), v, **kwargs)
    assert v.grad is None


def test_bad_shapes():
    with pytest.raises(ValueError, match="v"):
        fdvl_value_loss(torch.zeros(4), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="q"):
        fdvl_value_loss(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="q"):
        fdvl_value_loss(torch.zeros(4, dtype=torch.long), torch.zeros(4))
