"""Golden consistency-training losses, made by running the authors' loss code (quandao10/LCT, sLCT).

Source: github.com/quandao10/LCT at commit 34661b9, ``models/karras_diffusion.py``
``KarrasDenoiser.consistency_losses`` run unchanged (``weight_schedule="ict"``, ``args.noise_sampler="ict"``:
iCT's lognormal index distribution and 1/(t - t2) weights; ``loss_norm`` "huber" and "cauchy"), with its
own ``denoise`` (the boundary-condition scalings and ``1000 * 0.25 * log(t + 1e-44)``) around a stub
network ``tanh(a * x_in + b * t_in / 1000) * s`` (elementwise, deterministic, no dropout) for both the model
and the target model (iCT's no-EMA target). Stored per case: the data, the noise, the levels ``t`` it drew
(``terms["t"]``, from which the indices are recovered), ``terms["loss"]``, ``terms["diff_loss"]`` (the
subset of the low-noise EDM loss) and ``cm + 5 * diff`` (``train_cm_latent.py``'s scalar with
``--use_diffloss``). The module's imports piq, torchvision, ``robust_loss_pytorch`` and the package's
``dist_util``/``random_util`` are stubs (unused by these branches). Default dtype float64.

    LCT_REF=/path/to/LCT PYTHONPATH=src python tools/golden/make_consistency_training_golden.py

with their checkout from ``git archive 34661b9 models train_cm_latent.py | tar -x``; torch 2.13.0 on CPU.
Writes tests/data/consistency_training_golden.pt.
"""
import os
import sys
import types
from pathlib import Path

import torch

torch.set_default_dtype(torch.float64)
OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "consistency_training_golden.pt"
REF = Path(os.environ["LCT_REF"])
sys.path.insert(0, str(REF))

for name in ("piq", "robust_loss_pytorch", "torchvision", "torchvision.transforms", "models.dist_util",
             "models.random_util"):
    m = types.ModuleType(name)
    m.LPIPS = m.RandomCrop = m.get_generator = object
    sys.modules[name] = m
from models import karras_diffusion as kd  # noqa: E402

A, B, S = 0.7, 0.3, 1.5


def stub(x_in, t_in):
    t = t_in.reshape(t_in.shape + (1,) * (x_in.ndim - 1))
    return torch.tanh(A * x_in + B * t / 1000.0) * S


g = torch.Generator().manual_seed(0)
cases = []
for shape, num_scales, norm, c, sigma_data in (((64, 1, 4, 4), 11, "huber", 0.00216, 0.5),
                                              ((64, 1, 4, 4), 21, "cauchy", 0.013635, 0.5),
                                              ((96, 2), 41, "cauchy", 0.03, 1.3),
                                              ((48, 2), 161, "huber", 0.00076, 1.3)):
    x = torch.randn(shape, generator=g)
    noise = torch.randn(shape, generator=g)
    diff = kd.KarrasDenoiser(types.SimpleNamespace(noise_sampler="ict"), sigma_data=sigma_data,
                             weight_schedule="ict", loss_norm=norm)
    diff.c = torch.tensor(c, dtype=torch.float64)
    torch.manual_seed(len(cases))
    terms = diff.consistency_losses(stub, x, num_scales, target_model=stub, noise=noise)
    total = terms["loss"].mean() + 5 * terms["diff_loss"].mean()
    cases.append(dict(x=x, noise=noise, num_scales=num_scales, norm=norm, c=c, sigma_data=sigma_data,
                      t=terms["t"], loss=terms["loss"], diff_loss=terms["diff_loss"], total_w5=total))
torch.save({"stub": dict(a=A, b=B, s=S), "cases": cases}, OUT)
print("wrote", OUT, [(c["num_scales"], c["norm"], len(c["diff_loss"])) for c in cases])
