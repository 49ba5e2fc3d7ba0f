"""Golden DMD2 losses and gradients, made by running the authors' code (tianweiy/DMD2).

Source: github.com/tianweiy/DMD2 at commit 8d8fa55, ``main/edm/edm_guidance.py`` (``EDMGuidance``). The
module imports ``main.edm.edm_network`` and ``dnnlib`` (used only by ``__init__``, to load the EDM
checkpoint); those are stub modules here. The four loss methods run unchanged as functions of an
``EDMGuidance`` instance made without ``__init__`` (``EDMGuidance.__new__`` + ``nn.Module.__init__``),
with the attributes they read set on it:

* ``compute_distribution_matching_loss``: ``real_unet``/``fake_unet`` are functions returning the
  stored teacher / fake-score x0-predictions (so the loss sees exactly those), ``karras_sigmas`` their
  EDM schedule (80 .. 0.002, 1000 levels), ``min_step=20``, ``max_step=980``;
* ``compute_loss_fake``: ``fake_unet`` returns the stored prediction (a leaf with grad) and records the
  ``timestep_sigma`` the method drew; ``sigma_data=0.5``;
* ``compute_generator_clean_cls_loss`` and ``compute_guidance_clean_cls_loss``: ``compute_cls_logits``
  returns the stored ``[B, 1]`` logits of the real or the fake batch.

Stored per case: the inputs, the authors' scalar loss and the gradient of it in the generator sample
(DM loss), the fake prediction (fake loss) or the logits (GAN losses). Float64 (default dtype float64
during the run), plus one float32 DM case.

    DMD2_REF=/path/to/DMD2 PYTHONPATH=src python tools/golden/make_dmd2_golden.py

with their checkout from ``git archive 8d8fa55 main/edm/edm_guidance.py | tar -x``; run with torch
2.13.0 on CPU. Writes tests/data/dmd2_golden.pt.
"""
import os
import sys
import types
from pathlib import Path

import torch
from torch import nn

torch.set_default_dtype(torch.float64)
OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "dmd2_golden.pt"
sys.path.insert(0, os.environ["DMD2_REF"])

for name in ("main.edm.edm_network", "dnnlib"):
    m = types.ModuleType(name)
    m.get_edm_network = None
    sys.modules[name] = m
from main.edm.edm_guidance import EDMGuidance, get_sigmas_karras  # noqa: E402


def guidance():
    g = EDMGuidance.__new__(EDMGuidance)
    nn.Module.__init__(g)
    g.num_train_timesteps, g.min_step, g.max_step, g.sigma_data = 1000, 20, 980, 0.5
    g.karras_sigmas = torch.flip(get_sigmas_karras(1000, sigma_max=80.0, sigma_min=0.002, rho=7.0), dims=[0])
    return g


gen = torch.Generator().manual_seed(0)
out: dict = {"dm": [], "fake": [], "gan": []}
for shape, scale, dtype in (((5, 1, 8, 8), 1.0, torch.float64), ((4, 3, 4, 4), 0.3, torch.float64),
                            ((6, 2, 2, 2), 2.0, torch.float64), ((5, 1, 8, 8), 1.0, torch.float32)):
    x = (torch.randn(shape, generator=gen) * scale).to(dtype)
    real = (x + 0.5 * torch.randn(shape, generator=gen)).to(dtype)
    fake = (x + 0.5 * torch.randn(shape, generator=gen)).to(dtype)
    g = guidance()
    g.real_unet = lambda noisy, sigma, labels, p=real: p
    g.fake_unet = lambda noisy, sigma, labels, p=fake: p
    xx = x.clone().requires_grad_()
    torch.manual_seed(1)
    loss = g.compute_distribution_matching_loss(xx, None)[0]["loss_dm"]
    loss.backward()
    out["dm"].append(dict(x=x, real=real, fake=fake, loss=loss.detach(), grad=xx.grad))

for shape in ((5, 1, 8, 8), (4, 3, 4, 4), (7, 2, 1, 1)):  # 4-D: their [B, 1, 1, 1] sigmas broadcast so
    x = torch.randn(shape, generator=gen)
    pred = (x + torch.randn(shape, generator=gen)).requires_grad_()
    seen = {}

    def fake_unet(noisy, sigma, labels, pred=pred, seen=seen):
        seen["sigma"] = sigma
        return pred

    g = guidance()
    g.fake_unet = fake_unet
    torch.manual_seed(2)
    loss = g.compute_loss_fake(x, None)[0]["loss_fake_mean"]
    loss.backward()
    out["fake"].append(dict(x=x, pred=pred.detach(), sigma=seen["sigma"], loss=loss.detach(), grad=pred.grad))

REAL, FAKE = object(), object()
for b in (5, 9):
    real_logits = (3 * torch.randn(b, 1, generator=gen)).requires_grad_()
    fake_logits = (3 * torch.randn(b, 1, generator=gen)).requires_grad_()
    g = guidance()
    g.compute_cls_logits = lambda image, label: real_logits if label is REAL else fake_logits
    gen_loss = g.compute_generator_clean_cls_loss(None, FAKE)["gen_cls_loss"]
    (gen_grad,) = torch.autograd.grad(gen_loss, fake_logits)
    disc_loss = g.compute_guidance_clean_cls_loss(torch.zeros(1), torch.zeros(1), REAL, FAKE)[0]["guidance_cls_loss"]
    real_grad, fake_grad = torch.autograd.grad(disc_loss, (real_logits, fake_logits))
    out["gan"].append(dict(real_logits=real_logits.detach(), fake_logits=fake_logits.detach(),
                           gen_loss=gen_loss.detach(), gen_grad=gen_grad, disc_loss=disc_loss.detach(),
                           disc_real_grad=real_grad, disc_fake_grad=fake_grad))

torch.save(out, OUT)
print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
