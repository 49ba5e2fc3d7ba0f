"""Golden AdjointDPM gradients, made by running the authors' solver (HanshuYAN/AdjointDPM).

Source: github.com/HanshuYAN/AdjointDPM at commit ff45b81, ``adjoint/src/node_solver_noise.py``
(``NeuralODESchedulerNoise``: ``set_timesteps`` builds the grid of noise levels; ``solver`` runs
``torchdiffeq.odeint_adjoint(ODEFunc, x_T, sigmas, method="euler", adjoint_params=x_T)``), saved as
``node_solver_noise.py`` in AJ_REF and imported as is with diffusers 0.42.1 and torchdiffeq 0.2.5 (installed
with ``pip install --no-deps --target <AJ_REF>/td torchdiffeq==0.2.5``). Their imports of names diffusers has
since moved are pointed at the new places first (``diffusers.utils.randn_tensor``,
``diffusers.scheduling_utils``); ``torchvision.models`` (imported, unused) is an empty stand-in module.

The UNet is a seeded float64 toy epsilon-model ``eps(x, t) = tanh(x W + (t/1000) b) * 0.8 + 0.1 x`` called as
``model(latent_input, t, encoder_hidden_states=..., cross_attention_kwargs=...).sample``; no guidance. For
each number of steps (10, 25) the scheduler (their defaults: linear betas 1e-4..0.02, 1000 steps, euler) is
set with ``set_timesteps(n)``; x_T ([4, 3], times sigma_max) is solved and the loss ``((x_0 - 0.5)^2).sum()``
back-propagated with ``torch.autograd.grad`` to x_T (the noise version differentiates x_T only). Stored:
W, b, the grid (sigmas, timesteps), x_T, the sample and d loss / d x_T.

    AJ_REF=/tmp/drw PYTHONPATH=src /work/main/.venv/bin/python tools/golden/make_adjoint_dpm_golden.py

Run with torch 2.13.0 on CPU. Writes tests/data/adjoint_dpm_golden.pt.
"""
import importlib
import os
import sys
import types
from pathlib import Path

import torch

REF = Path(os.environ["AJ_REF"])
sys.path[:0] = [str(REF / "td"), str(REF)]
import diffusers.schedulers.scheduling_utils  # noqa: E402
import diffusers.utils  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

diffusers.utils.randn_tensor = randn_tensor
sys.modules["diffusers.scheduling_utils"] = diffusers.schedulers.scheduling_utils
tv = types.ModuleType("torchvision")
tv.models = types.ModuleType("torchvision.models")
sys.modules.setdefault("torchvision", tv)
sys.modules.setdefault("torchvision.models", tv.models)
ref = importlib.import_module("node_solver_noise")

torch.set_default_dtype(torch.float64)
g = torch.Generator().manual_seed(0)
W = torch.randn(3, 3, generator=g) * 0.6
b = torch.randn(3, generator=g)


class ToyUNet:
    def __call__(self, x, t, encoder_hidden_states=None, cross_attention_kwargs=None):
        t = torch.as_tensor(t, dtype=x.dtype)
        return types.SimpleNamespace(sample=torch.tanh(x @ W + (t / 1000.0) * b) * 0.8 + 0.1 * x)


cases = []
for n in (10, 25):
    sch = ref.NeuralODESchedulerNoise()
    sch.set_timesteps(n)
    x_T = (torch.randn(4, 3, generator=g) * sch.sigmas[0]).requires_grad_(True)
    sample = sch.solver(ToyUNet(), x_T, None, sch.timesteps, None, False, 1.0).prev_sample
    loss = (sample - 0.5).square().sum()
    (grad,) = torch.autograd.grad(loss, x_T)
    cases.append({"n": n, "sigmas": sch.sigmas.clone(), "timesteps": sch.timesteps.clone(), "x_T": x_T.detach(),
                  "sample": sample.detach(), "grad_x_T": grad})
    print(n, float(loss), grad.norm().item())
dst = Path(__file__).parents[2] / "tests" / "data" / "adjoint_dpm_golden.pt"
torch.save({"W": W, "b": b, "cases": cases}, dst)
print("wrote", dst)
