"""Golden data for PowerNorm, made by running the authors' ``MaskPowerNorm``.

Repository: github.com/sIncerass/powernorm, commit 9ea6226a3203d5d6fcee07a5c6dec38ec6bc5e9f ("Update README.md"),
file ``fairseq/modules/norms/mask_powernorm.py``. Their files are not part of this repository: point REPO at a git
directory of theirs (a clone, or the mirror the search tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_powernorm_golden.py

It reads that one file at that commit with ``git show`` into a temporary folder and imports it unchanged (it imports
only torch and runs on CPU as it is), then, on seeded inputs, trains each case's module for ``steps`` steps with a
small ``warmup_iters`` so that the steps cross the warm-up boundary: every step feeds a fresh (T, B, C) input (with or
without a padding mask), back-propagates a fixed random output gradient, and records the output, the input gradient,
the weight and bias gradients and the buffers (``running_phi``, ``ema_gz``, ``iters``) after the step. The weight and
bias start from random values (so the affine part is exercised), and every case ends with an eval-mode forward.
Writes tests/data/powernorm_golden.pt.
"""
import os
import subprocess
import sys
import tempfile

import torch

COMMIT = "9ea6226a3203d5d6fcee07a5c6dec38ec6bc5e9f"
FILE = "fairseq/modules/norms/mask_powernorm.py"
here = os.path.dirname(os.path.abspath(__file__))
repo = os.environ["REPO"]
tmp = tempfile.mkdtemp()
src = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:{FILE}"], check=True, capture_output=True,
                     text=True).stdout
with open(os.path.join(tmp, "mask_powernorm.py"), "w") as f:
    f.write(src)
sys.path.insert(0, tmp)
from mask_powernorm import MaskPowerNorm  # noqa: E402

gen = torch.Generator().manual_seed(0)


def pad_mask_for(t, b):
    """(B, T) True at padding: variable lengths 1..T, one sequence full."""
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    lengths[0] = t
    return torch.arange(t)[None, :] >= lengths[:, None]


def run_case(name, *, t, b, c, dtype, steps, warmup_iters, padded, two_d=False, **kwargs):
    m = MaskPowerNorm(c, warmup_iters=warmup_iters, **kwargs).to(dtype)
    with torch.no_grad():
        m.weight.copy_(1 + 0.2 * torch.randn(c, generator=gen, dtype=dtype))
        m.bias.copy_(0.1 * torch.randn(c, generator=gen, dtype=dtype))
    init = dict(weight=m.weight.detach().clone(), bias=m.bias.detach().clone())
    records = []
    m.train()
    for s in range(steps):
        shape = (b, c) if two_d else (t, b, c)
        x = (torch.randn(shape, generator=gen, dtype=dtype) * (1 + s) + 0.3).requires_grad_(True)
        mask = pad_mask_for(t, b) if padded else None
        gy = torch.randn(shape, generator=gen, dtype=dtype)
        m.weight.grad = m.bias.grad = None
        y = m(x, pad_mask=mask)
        y.backward(gy)
        records.append(dict(x=x.detach(), pad_mask=mask, grad_output=gy, y=y.detach(), grad_x=x.grad,
                            grad_weight=m.weight.grad.clone(), grad_bias=m.bias.grad.clone(),
                            running_phi=m.running_phi.clone(), ema_gz=m.ema_gz.clone(), iters=m.iters.clone()))
    m.eval()
    shape = (b, c) if two_d else (t, b, c)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    mask = pad_mask_for(t, b) if padded else None
    with torch.no_grad():
        y = m(x, pad_mask=mask)
    # one tensor per quantity, stacked over the steps (row s = step s + 1), keeps the file small
    stacked = {k: (torch.stack([r[k] for r in records]) if records[0][k] is not None else None) for k in records[0]}
    return dict(name=name, t=t, b=b, c=c, dtype=dtype, warmup_iters=warmup_iters, padded=padded, two_d=two_d,
                kwargs=kwargs, init=init, steps=stacked, eval=dict(x=x, pad_mask=mask, y=y))


cases = [
    run_case("f64_padded", t=6, b=4, c=5, dtype=torch.float64, steps=7, warmup_iters=3, padded=True),
    run_case("f64_nomask", t=5, b=3, c=6, dtype=torch.float64, steps=6, warmup_iters=3, padded=False),
    run_case("f64_groups_alphas", t=6, b=3, c=8, dtype=torch.float64, steps=6, warmup_iters=2, padded=True,
             group_num=2, alpha_fwd=0.8, alpha_bkw=0.7, eps=1e-3),
    run_case("f64_warmup1", t=4, b=3, c=4, dtype=torch.float64, steps=4, warmup_iters=1, padded=True),
    run_case("f64_2d", t=1, b=5, c=4, dtype=torch.float64, steps=5, warmup_iters=2, padded=False, two_d=True),
    run_case("f32_padded", t=8, b=4, c=10, dtype=torch.float32, steps=6, warmup_iters=3, padded=True),
]
out = dict(reference=f"sIncerass/powernorm@{COMMIT} {FILE} (torch {torch.__version__})", cases=cases)
path = os.path.join(here, "..", "..", "tests", "data", "powernorm_golden.pt")
torch.save(out, path)
print(len(cases), "cases,", os.path.getsize(path), "bytes")
