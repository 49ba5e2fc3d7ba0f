"""Golden sLCT losses, scaling-c and OT pairings, made by running the authors' code (quandao10/LCT).

Source: github.com/quandao10/LCT at commit 34661b9 (quandao10/sLCT, the repository the paper names, has
no loss code):

* ``models/karras_diffusion.py`` ``KarrasDenoiser.consistency_losses`` with ``loss_norm`` "cauchy",
  "cauchy_new", "huber" and "huber_new". The module imports piq, torchvision, ``robust_loss_pytorch``
  and the package's ``dist_util``/``random_util``; those are stub modules here (none is used by these
  branches). The class runs unchanged; on the instance, ``denoise`` is replaced by a function that
  returns the stored input for the model and the stored target for the target model (so the loss
  branch sees exactly those two), ``weight_schedule="uniform"`` (weights 1), ``args.noise_sampler``
  "uniform", and ``c`` is set as a float64 tensor (the authors' is float32).
* ``train_cm_latent.py``: the two statements that set ``diffusion.c`` (the default
  ``0.00054*sqrt(C*H*W)`` and the ``--c_by_loss_std`` schedule in the training loop) are lifted out
  with ``ast`` and executed unchanged with an ``args`` namespace and a ``diffusion`` object.
* ``models/optimal_transport.py`` ``OTPlanSampler(method="exact", normalize_cost=True)`` (POT 0.9.7):
  ``get_map`` then ``sample_map(pi, B, replace=False)`` (what their ``sample_plan_with_labels`` does),
  with ``np.random.seed(0)``; stored is the permutation ``perm[i] = j`` of the pairs drawn.

The default dtype is float64 during the run (``torch.tensor(math.exp(...))`` in their schedule).

    LCT_REF=/path/to/LCT PYTHONPATH=src python tools/golden/make_slct_golden.py

with their checkout from ``git archive 34661b9 models train_cm_latent.py | tar -x``; run with torch
2.13.0, numpy 2.4, POT 0.9.7 on CPU. Writes tests/data/slct_golden.pt.
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
OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "slct_golden.pt"
REF = Path(os.environ["LCT_REF"])
sys.path.insert(0, str(REF))

for name in ("piq", "robust_loss_pytorch", "torchvision", "torchvision.transforms", "models.dist_util",
             "models.random_util"):
    m = types.ModuleType(name)
    m.LPIPS = m.RandomCrop = m.get_generator = object
    sys.modules[name] = m
from models import karras_diffusion as kd  # noqa: E402
from models.optimal_transport import OTPlanSampler  # noqa: E402

out: dict = {}

# -- consistency losses ------------------------------------------------------------------------------------------
g = torch.Generator().manual_seed(0)
MODEL, TARGET = object(), object()
cases = []
for shape, scale, c in (((5, 1, 8, 8), 1.0, 0.03), ((4, 3, 4, 4), 0.05, 0.00432), ((6, 2), 3.0, 3.45),
                        ((3, 1, 8, 8), 0.01, 0.2)):
    x = torch.randn(shape, generator=g) * scale
    y = torch.randn(shape, generator=g) * scale
    case = dict(input=x, target=y, c=c)
    for norm in ("cauchy", "cauchy_new", "huber", "huber_new"):
        diff = kd.KarrasDenoiser(types.SimpleNamespace(noise_sampler="uniform"), weight_schedule="uniform",
                                 loss_norm=norm)
        diff.c = torch.tensor(c, dtype=torch.float64)
        diff.denoise = lambda model, x_t, sig, x=x, y=y, **kw: (None, x if model is MODEL else y)
        torch.manual_seed(1)
        terms = diff.consistency_losses(MODEL, torch.randn(shape, generator=g), 20, target_model=TARGET)
        case[norm] = terms["loss"]
    cases.append(case)
out["losses"] = cases

# -- scaling c: the two statements of train_cm_latent.py ---------------------------------------------------------
src = (REF / "train_cm_latent.py").read_text()
stmts = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.If)
         and any(k in ast.unparse(n.test) for k in ("c_by_loss_std", "custom_constant_c"))]
assert len(stmts) == 2, [ast.unparse(s.test) for s in stmts]
code = compile(ast.Module(body=stmts, type_ignores=[]), "train_cm_latent.py", "exec")
rows = []
for channels, size in ((4, 32), (1, 8), (3, 64)):
    for start in (10, 5):
        for n in (2, start, start + 1, start + 2, 21, 41, 81, 161, 321, 641, 1281):
            ns = dict(torch=torch, math=math, num_scales=n,
                      args=types.SimpleNamespace(custom_constant_c=0.0, num_in_channels=channels, image_size=size,
                                                 c_by_loss_std=True, start_scales=start),
                      diffusion=types.SimpleNamespace(c=None))
            exec(code, ns)
            rows.append((channels, size, start, n, float(ns["diffusion"].c)))
out["scaling_c"] = rows

# -- OT pairing ---------------------------------------------------------------------------------------------------
np.random.seed(0)
ots = []
for b, shape in ((8, (2,)), (16, (1, 4, 4)), (64, (1, 8, 8)), (33, (5,))):
    x = torch.randn((b, *shape), generator=g) * 2 + 1
    n = torch.randn((b, *shape), generator=g)
    sampler = OTPlanSampler(method="exact", normalize_cost=True)
    pi = sampler.get_map(x, n)
    i, j = sampler.sample_map(pi, b, replace=False)
    perm = np.empty(b, dtype=np.int64)
    perm[i] = j
    assert sorted(i.tolist()) == list(range(b))
    ots.append(dict(x=x, noise=n, perm=torch.from_numpy(perm)))
out["ot"] = ots
torch.save(out, OUT)
print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
