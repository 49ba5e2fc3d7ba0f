"""Golden iCT schedules and Pseudo-Huber losses, made by running three public implementations.

iCT (arXiv 2310.14189) has no official code; the references named in issue 18 are run here:

* github.com/huggingface/diffusers ``examples/research_projects/consistency_training/train_cm_ct_unconditional.py``
  at commit 58eb52c: the script imports accelerate, datasets, torchvision and wandb at the top, so its file is
  parsed with ``ast`` and only the functions ``get_discretization_steps``, ``get_karras_sigmas``,
  ``get_discretized_lognormal_weights`` and ``get_loss_weighting_schedule`` are executed, unchanged, in
  a namespace holding ``math``, ``numpy`` and ``torch``. Its Pseudo-Huber statement and its default-c
  statement (in ``main``) are lifted out the same way and run on float32 data with a stub ``unet``
  config: that line casts to float32 (``.float()``), so the float64 losses come from Kinyugo's
  identical element-wise formula.
* github.com/Kinyugo/consistency_models at commit 2e6618d: ``consistency_models/consistency_models.py`` imported
  as is (``improved_timesteps_schedule``, ``karras_schedule``, ``lognormal_timestep_distribution``,
  ``improved_loss_weighting``, ``pseudo_huber_loss``). ``lognormal_timestep_distribution`` returns
  ``torch.multinomial(pdf, ...)``; ``torch.multinomial`` is replaced during that call by a function
  returning ``pdf``, which is stored.
* github.com/locuslab/ect at commit 4311059 ``training/loss.py`` (``ECMLoss``, the metric on the whole sample):
  imported with stub modules ``torch_utils.persistence`` (``persistent_class`` = identity) and
  ``torch_utils.distributed`` (``print0`` = print), ``torch.cuda.get_rng_state``/``set_rng_state``
  returning/accepting None (CPU run), ``adj="const"`` (so r = t/2 > 0 and the target is the net's), and
  a fake ``net`` that returns the stored input on its first call and the stored target on its second,
  recording the t and r it is called with. ECT returns d / (t - r); t and r are stored with it.

The default dtype is float64 during the run (Kinyugo's ``karras_schedule`` divides an integer
``arange``, which then gives float64; ECT draws t with ``torch.randn``).

    ICT_DIFFUSERS=/path/examples/research_projects/consistency_training ICT_KINYUGO=/path/kinyugo \\
    ICT_ECT=/path/ect/training PYTHONPATH=src python tools/golden/make_ict_golden.py

with the three folders from ``git archive <commit> <path> | tar -x``; run with torch 2.13.0, numpy
2.4 on CPU. Writes tests/data/ict_golden.pt.
"""
import ast
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "ict_golden.pt"

# -- diffusers: exec the four functions lifted out of the script ----------------------------------------------
src_path = Path(os.environ["ICT_DIFFUSERS"]) / "train_cm_ct_unconditional.py"
tree = ast.parse(src_path.read_text())
wanted = {"get_discretization_steps", "get_karras_sigmas", "get_discretized_lognormal_weights",
          "get_loss_weighting_schedule"}
ns = {"math": math, "np": np, "torch": torch}
mod = ast.Module(body=[n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted], type_ignores=[])
exec(compile(mod, str(src_path), "exec"), ns)
hf = types.SimpleNamespace(**{k: ns[k] for k in wanted})

# -- Kinyugo: import the package -------------------------------------------------------------------------------
sys.path.insert(0, os.environ["ICT_KINYUGO"])
from consistency_models import consistency_models as ky  # noqa: E402

# -- ECT: stub torch_utils, import training/loss.py -----------------------------------------------------------
tu = types.ModuleType("torch_utils")
tu.persistence = types.SimpleNamespace(persistent_class=lambda c: c)
tu.distributed = types.SimpleNamespace(print0=print)
sys.modules["torch_utils"] = tu
sys.modules["torch_utils.persistence"] = tu.persistence
sys.modules["torch_utils.distributed"] = tu.distributed
torch.cuda.get_rng_state = lambda *a, **k: None
torch.cuda.set_rng_state = lambda *a, **k: None
sys.path.insert(0, os.environ["ICT_ECT"])
import loss as ect  # noqa: E402

out: dict = {}

# curriculum
curr = []
for total, s0, s1 in ((800, 10, 1280), (1000, 10, 1280), (400000, 10, 1280), (7, 2, 20), (50, 5, 5), (1000, 3, 100)):
    for step in sorted({0, 1, total // 3, total // 2, total - 1, total, 2 * total}):
        a = hf.get_discretization_steps(step, total, s_0=s0, s_1=s1)
        b = ky.improved_timesteps_schedule(step, total, initial_timesteps=s0, final_timesteps=s1)
        assert a == b, (step, total, s0, s1, a, b)
        curr.append((step, total, s0, s1, a))
out["curriculum"] = torch.tensor(curr, dtype=torch.long)

# Karras sigmas, probabilities, weights
sig_cases = []
for n, smin, smax, rho in ((2, 0.002, 80.0, 7.0), (11, 0.002, 80.0, 7.0), (81, 0.002, 80.0, 7.0),
                           (1281, 0.002, 80.0, 7.0), (17, 0.01, 10.0, 3.0)):
    s_hf = hf.get_karras_sigmas(n, smin, smax, rho, dtype=torch.float64)
    s_ky = ky.karras_schedule(n, smin, smax, rho)
    case = dict(n=n, sigma_min=smin, sigma_max=smax, rho=rho, sigmas_diffusers=s_hf, sigmas_kinyugo=s_ky)
    for pm, ps in ((-1.1, 2.0), (-1.2, 1.2), (0.5, 0.7)):
        w = hf.get_discretized_lognormal_weights(s_hf, p_mean=pm, p_std=ps)
        real = torch.multinomial
        torch.multinomial = lambda pdf, *a, **k: pdf
        try:
            p_ky = ky.lognormal_timestep_distribution(4, s_hf, mean=pm, std=ps)
        finally:
            torch.multinomial = real
        case[f"weights_diffusers_{pm}_{ps}"] = w
        case[f"probs_kinyugo_{pm}_{ps}"] = p_ky
    case["loss_weights_diffusers"] = hf.get_loss_weighting_schedule(s_hf)
    case["loss_weights_kinyugo"] = ky.improved_loss_weighting(s_hf)
    sig_cases.append(case)
out["sigmas"] = sig_cases
out["lognormal_params"] = [(-1.1, 2.0), (-1.2, 1.2), (0.5, 0.7)]

# Pseudo-Huber: Kinyugo per element (its own c), ECT on the whole sample (c given, and iCT's c)
g = torch.Generator().manual_seed(0)
losses = []
for shape, scale in (((5, 1, 8, 8), 1.0), ((4, 3, 4, 4), 1e-3), ((6, 2), 0.01), ((3, 1, 8, 8), 30.0)):
    x = torch.randn(shape, generator=g) * scale
    y = torch.randn(shape, generator=g) * scale
    case = dict(input=x, target=y, elementwise_kinyugo=ky.pseudo_huber_loss(x, y),
                c_kinyugo=0.00054 * math.sqrt(math.prod(shape[1:])))
    if len(shape) == 4:
        for tag, c in (("c", 0.03), ("ict_c", case["c_kinyugo"])):
            seen = []

            def net(xin, sigma, labels=None, augment_labels=None, x=x, y=y, seen=seen):
                seen.append(sigma.clone())
                return x.clone() if len(seen) == 1 else y.clone()

            fn = ect.ECMLoss(c=c, adj="const")
            torch.manual_seed(1)
            d = fn(net, torch.randn(shape, generator=g))
            case[f"sum_ect_{tag}"] = dict(c=c, loss=d, t=seen[0].flatten(), r=seen[1].flatten())
    losses.append(case)
out["pseudo_huber"] = losses

# diffusers' own Pseudo-Huber statement of the training loop (float32: it casts with ``.float()``) and its
# default c statement (``args.huber_c = 0.00054 * args.resolution * sqrt(in_channels)``), lifted out of ``main``
main_fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
loss_stmt = next(n for n in ast.walk(main_fn) if isinstance(n, ast.Assign) and "huber_c" in ast.unparse(n)
                 and isinstance(n.targets[0], ast.Name) and n.targets[0].id == "loss")
c_stmt = next(n for n in ast.walk(main_fn) if isinstance(n, ast.If) and "args.huber_c is None" in ast.unparse(n.test))
hf_cases = []
for shape in ((5, 1, 8, 8), (4, 3, 4, 4)):
    x = torch.randn(shape, generator=g).float()
    y = torch.randn(shape, generator=g).float()
    lam = torch.rand(shape[0], 1, 1, 1, generator=g).float() + 0.5
    unet = types.SimpleNamespace(config=types.SimpleNamespace(in_channels=shape[1]))
    ns = dict(math=math, torch=torch, unwrap_model=lambda m: m, unet=unet,
              args=types.SimpleNamespace(huber_c=None, resolution=shape[2]))
    exec(compile(ast.Module(body=[c_stmt], type_ignores=[]), str(src_path), "exec"), ns)
    ns.update(lambda_t=lam, student_denoise_output=x, teacher_denoise_output=y)
    exec(compile(ast.Module(body=[loss_stmt], type_ignores=[]), str(src_path), "exec"), ns)
    hf_cases.append(dict(input=x, target=y, lambda_t=lam, c=float(ns["args"].huber_c), loss=ns["loss"]))
out["pseudo_huber_diffusers_float32"] = hf_cases
torch.save(out, OUT)
print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
