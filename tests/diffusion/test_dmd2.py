"""DMD2 pieces: equal (float64, rel 1e-10; float32 loosely) to tianweiy/DMD2's EDMGuidance losses, run at the
commit of tests/data/dmd2_golden.pt (tools/golden/make_dmd2_golden.py), values and gradients; FastGen's VSD
form (tests/data/f_distill_golden.pt); behaviour and bad input."""
from pathlib import Path

import pytest
import torch

from gradwise.diffusion import dmd_loss, fake_score_loss, gan_discriminator_loss, gan_generator_loss
from gradwise.registry import get

DATA = Path(__file__).parents[1] / "data"
GOLDEN = torch.load(DATA / "dmd2_golden.pt", weights_only=True)
FASTGEN = torch.load(DATA / "f_distill_golden.pt", weights_only=True)


def close(a, b, rtol=1e-10):
    torch.testing.assert_close(a, b, rtol=rtol, atol=1e-300 if a.dtype == torch.float64 else 1e-7)


@pytest.mark.parametrize("i", range(len(GOLDEN["dm"])))
def test_dmd_loss_matches_dmd2(i):
    case = GOLDEN["dm"][i]
    x = case["x"].clone().requires_grad_()
    loss = dmd_loss(x, case["real"], case["fake"])
    assert loss.shape == (x.shape[0],) and loss.dtype == x.dtype
    rtol = 1e-10 if x.dtype == torch.float64 else 1e-5
    close(loss.mean(), case["loss"], rtol)
    loss.mean().backward()
    close(x.grad, case["grad"], rtol)


@pytest.mark.parametrize("i", range(len(FASTGEN["vsd"])))
def test_dmd_loss_with_scale_and_eps_is_fastgen_vsd(i):
    case = FASTGEN["vsd"][i]
    rtol = 1e-10 if case["x"].dtype == torch.float64 else 1e-5
    for key, scale in (("plain", None), ("scaled", case["h"])):
        x = case["x"].clone().requires_grad_()
        loss = dmd_loss(x, case["teacher"], case["fake"], scale=scale, eps=1e-6).mean()
        close(loss, case[f"loss_{key}"], rtol)
        loss.backward()
        close(x.grad, case[f"grad_{key}"], rtol)


@pytest.mark.parametrize("i", range(len(GOLDEN["fake"])))
def test_fake_score_loss_matches_dmd2(i):
    case = GOLDEN["fake"][i]
    pred = case["pred"].clone().requires_grad_()
    x = case["x"].clone().requires_grad_()
    loss = fake_score_loss(pred, x, case["sigma"])  # the authors' [B, 1, 1, 1] sigmas
    assert loss.shape == (x.shape[0],)
    close(loss.mean(), case["loss"])
    loss.mean().backward()
    close(pred.grad, case["grad"])
    assert x.grad is None  # no gradient to the generator
    close(fake_score_loss(case["pred"], case["x"], case["sigma"].flatten()), loss.detach())


@pytest.mark.parametrize("i", range(len(GOLDEN["gan"])))
def test_gan_losses_match_dmd2(i):
    case = GOLDEN["gan"][i]
    real, fake = case["real_logits"].clone().requires_grad_(), case["fake_logits"].clone().requires_grad_()
    g = gan_generator_loss(fake)
    close(g.mean(), case["gen_loss"])
    close(torch.autograd.grad(g.mean(), fake)[0], case["gen_grad"])
    d = gan_discriminator_loss(real, fake)
    assert d.shape == (real.shape[0],)
    close(d.mean(), case["disc_loss"])
    gr, gf = torch.autograd.grad(d.mean(), (real, fake))
    close(gr, case["disc_real_grad"])
    close(gf, case["disc_fake_grad"])
    close(gan_generator_loss(case["fake_logits"].flatten()), gan_generator_loss(case["fake_logits"]))


def test_dmd_gradient_is_the_score_difference_over_the_normaliser():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, dtype=torch.float64, generator=g).requires_grad_()
    real, fake = torch.randn(3, 2, 4, dtype=torch.float64, generator=g), torch.randn(3, 2, 4, dtype=torch.float64)
    h = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    dmd_loss(x, real, fake, scale=h).sum().backward()
    norm = (x.detach() - real).abs().mean((1, 2), keepdim=True)
    close(x.grad, (fake - real) / norm * h.view(3, 1, 1) / 8)
    # equal predictions: nothing to match
    y = torch.randn(2, 5, dtype=torch.float64).requires_grad_()
    p = torch.randn(2, 5, dtype=torch.float64)
    loss = dmd_loss(y, p, p)
    loss.sum().backward()
    assert torch.equal(loss, torch.zeros(2, dtype=torch.float64)) and torch.equal(y.grad, torch.zeros_like(y))


def test_predictions_get_no_gradient_and_dtypes_are_kept():
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x = torch.randn(4, 1, 3, 3).to(dtype).requires_grad_()
        real = torch.randn(4, 1, 3, 3).to(dtype).requires_grad_()
        fake = torch.randn(4, 1, 3, 3).to(dtype).requires_grad_()
        loss = dmd_loss(x, real, fake, scale=torch.ones(4), eps=1e-6)
        assert loss.dtype == dtype and loss.shape == (4,)
        loss.sum().backward()
        assert real.grad is None and fake.grad is None and x.grad is not None
        assert fake_score_loss(fake, x, torch.ones(4)).dtype == dtype
        assert gan_generator_loss(x.flatten(1)).dtype == dtype


def test_nan_and_zero_normaliser_propagate():
    x = torch.tensor([[1.0, float("nan")], [1.0, 2.0]])
    assert dmd_loss(x, torch.zeros(2, 2), torch.ones(2, 2)).isnan().tolist() == [True, False]
    same = torch.ones(1, 2)  # x equals the teacher's prediction: g = 1 / 0 (DMD2's nan_to_num is not applied)
    assert not torch.isfinite(dmd_loss(same, same, torch.zeros(1, 2))).all()
    assert torch.isfinite(dmd_loss(same, same, torch.zeros(1, 2), eps=1e-6)).all()
    assert fake_score_loss(torch.tensor([[float("inf")]]), torch.zeros(1, 1), 1.0).isinf().all()


def test_bad_input():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="pred_real_x0"):
        dmd_loss(x, torch.randn(3, 5), x)
    with pytest.raises(ValueError, match="pred_fake_x0"):
        dmd_loss(x, x, torch.randn(2, 4))
    with pytest.raises(ValueError, match="eps"):
        dmd_loss(x, x, x, eps=-1.0)
    with pytest.raises(ValueError, match="scale"):
        dmd_loss(x, x, x, scale=torch.ones(2))
    with pytest.raises(ValueError, match="scale"):
        dmd_loss(x, x, x, scale=0.0)
    with pytest.raises(ValueError, match="x"):
        dmd_loss(torch.ones(3, 4, dtype=torch.long), x, x)
    with pytest.raises(ValueError, match="sigma"):
        fake_score_loss(x, x, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        fake_score_loss(x, x, torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="sigma"):
        fake_score_loss(x, x, torch.ones(4))
    with pytest.raises(ValueError, match="sigma_data"):
        fake_score_loss(x, x, 1.0, sigma_data=0.0)
    with pytest.raises(ValueError, match="fake_logits"):
        gan_discriminator_loss(torch.zeros(3, 1), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="fake_logits"):
        gan_generator_loss([0.0])


def test_registered_under_the_seed_title():
    for name in ("dmd_loss", "fake_score_loss", "gan_generator_loss", "gan_discriminator_loss"):
        rec = get(name)
        assert rec.paper == "Improved Distribution Matching Distillation for Fast Image Synthesis"
        assert rec.kind == "diffusion-objective" and rec.family == "diffusion" and rec.arxiv == "2405.14867"


def test_dmd_moves_a_gaussian_generator_to_the_teacher():
    # data N(2, 1), generator x = m + z; both x0-predictions are the exact Gaussian posterior means
    torch.manual_seed(0)
    m = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([m], lr=0.5)

    def x0_hat(xt, mean, sigma):
        return mean + (xt - mean) / (1 + sigma ** 2)

    for _ in range(60):
        x = m + torch.randn(256, 1)
        sigma = torch.rand(256, 1) * 2 + 0.1
        xt = x.detach() + sigma * torch.randn(256, 1)
        loss = dmd_loss(x, x0_hat(xt, 2.0, sigma), x0_hat(xt, m.detach(), sigma), eps=1e-6).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(m.item() - 2.0) < 0.1
