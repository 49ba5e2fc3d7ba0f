"""train_denoiser (EDM loss) and edm_sample (EDM's Heun sampler)."""
import pytest
import torch
from torch import nn

from gradwise.diffusion.toy import EDMDenoiser, ToyConv8x8, ToyMLP, edm_sample, edm_sigmas, mixture_2d, train_denoiser


def small_mixture_denoiser(seed=0):
    torch.manual_seed(seed)
    return EDMDenoiser(ToyMLP(2, num_classes=8, width=32, depth=2), sigma_data=1.3)


def denoising_error(den, x, y, sigma=0.3):
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return ((den(x + sigma * noise, sigma, y) - x) ** 2).mean().item()


def test_training_lowers_the_denoising_error_and_is_seeded(one_thread):
    x, y = mixture_2d(512, generator=torch.Generator().manual_seed(0))
    a, b = small_mixture_denoiser().eval(), small_mixture_denoiser()
    before = denoising_error(a, x, y)
    la = train_denoiser(a, x, y, steps=100, lr=3e-3, batch_size=64)
    lb = train_denoiser(b, x, y, steps=100, lr=3e-3, batch_size=64)
    assert la.shape == (100,) and torch.equal(la, lb)
    assert not a.training and b.training  # each is left in the mode it was in
    assert denoising_error(a, x, y) < 0.7 * before


def test_loss_is_edms_weighted_mse_with_label_dropout(one_thread):
    """One step at lr ~ 0 reproduces EDM's loss, drawn in the documented order from the seeded generator."""
    x, y = mixture_2d(64, generator=torch.Generator().manual_seed(0))
    den = small_mixture_denoiser()
    nn.init.normal_(den.net.out.weight, std=0.1)
    loss = train_denoiser(den, x, y, steps=1, lr=1e-30, batch_size=16, label_dropout=0.5, seed=3)[0]
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 64, (16,), generator=g)
    sigma = (torch.randn(16, generator=g) * 1.2 - 1.2).exp()
    noise = torch.randn(16, 2, generator=g)
    drop = torch.rand(16, generator=g) < 0.5
    labels = torch.where(drop, torch.full((16,), 8), y[idx])
    assert 0 < drop.sum() < 16
    weight = (sigma ** 2 + 1.3 ** 2) / (sigma * 1.3) ** 2
    ref = (weight[:, None] * (den(x[idx] + sigma[:, None] * noise, sigma, labels) - x[idx]) ** 2).mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_conv_denoiser_trains_a_few_steps(one_thread):
    torch.manual_seed(0)
    den = EDMDenoiser(ToyConv8x8(num_classes=10, channels=8, blocks=1), sigma_data=0.75)
    x = torch.rand(32, 1, 8, 8) * 2 - 1
    losses = train_denoiser(den, x, torch.arange(32) % 10, steps=3, batch_size=8)
    assert torch.isfinite(losses).all()


@pytest.mark.parametrize("kwargs, name", [
    ({"steps": 0}, "steps"), ({"steps": 1, "lr": 0.0}, "lr"), ({"steps": 1, "p_std": 0.0}, "p_std"),
    ({"steps": 1, "label_dropout": 1.0}, "label_dropout"), ({"steps": 1, "y": None}, "y"),
    ({"steps": 1, "y": torch.zeros(3, dtype=torch.long)}, "y"), ({"steps": 1, "y": torch.full((8,), 8)}, "y")])
def test_train_bad_input_names_the_argument(kwargs, name):
    x = torch.zeros(8, 2)
    kwargs.setdefault("y", torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match=name):
        train_denoiser(small_mixture_denoiser(), x, **kwargs)


class GaussianDenoiser(nn.Module):
    """The exact denoiser of N(0, s^2 I) data: D(x; sigma) = x s^2 / (s^2 + sigma^2)."""
    num_classes = 0

    def __init__(self, s):
        super().__init__()
        self.s = s

    def forward(self, x, sigma, labels=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype)
        return x * self.s ** 2 / (self.s ** 2 + sigma ** 2)


def test_heun_sampler_follows_the_exact_flow_of_a_gaussian():
    # the probability-flow ODE of N(0, s^2) data keeps x / sqrt(s^2 + sigma^2) constant; Heun's error is
    # second order in the step (5 % at 18 steps, 0.9 % at 40, 0.14 % at 100 with rho = 7)
    s, noise = 0.6, torch.randn(100, 3, dtype=torch.float64)
    expected = noise * 80.0 * s / (s ** 2 + 80.0 ** 2) ** 0.5
    err = {n: ((edm_sample(GaussianDenoiser(s), noise, steps=n) - expected).abs() / expected.abs()).max().item()
           for n in (18, 40, 100)}
    assert err[100] < 2e-3 and err[40] < err[18] / 4 and err[100] < err[40] / 4


def test_edm_sigmas_match_diffusers_karras_schedule():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.EDMEulerScheduler()
    sched.set_timesteps(18)
    ours = edm_sigmas(18)
    assert ours[0] == 80.0 and ours[-2].item() == pytest.approx(0.002, rel=1e-12) and ours[-1] == 0
    torch.testing.assert_close(ours, sched.sigmas.double(), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="sigma_min"):
        edm_sigmas(5, sigma_min=90.0)
    with pytest.raises(ValueError, match="steps"):
        edm_sigmas(1)


def test_guidance_needs_labels():
    with pytest.raises(ValueError, match="guidance_scale"):
        edm_sample(GaussianDenoiser(0.5), torch.zeros(2, 2), guidance_scale=3.0)


def test_unconditional_mlp_trains_without_labels(one_thread):
    torch.manual_seed(0)
    den = EDMDenoiser(ToyMLP(2, width=16, depth=1), sigma_data=1.3)
    x, _ = mixture_2d(64, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(train_denoiser(den, x, steps=2, batch_size=8)).all()
    with pytest.raises(ValueError, match="y"):
        train_denoiser(den, x, torch.zeros(64, dtype=torch.long), steps=1)
