"""Golden data for SaRA (seed 259), made by running the authors' optimizer.

Repository: github.com/sjtuplayer/SaRA, commit ea21192 (``optim/adamw2.py``, class ``AdamW``). Their files are not
part of this repository: point REPO at a git directory of theirs (a clone, or the mirror the search tool's
``fetch`` brings) and run from the repository root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_sara_golden.py

The file is copied unchanged into a temporary folder with ``git show`` (``authors_code.extract``) and imported from
there; it needs torch only and runs on CPU as it is (nothing patched). Their default ``progressive_iter=-1`` crashes
at the first step (the current mask is ``None``), so runs without re-selection pass ``progressive_iter=10**9``,
which never fires; the crash itself is recorded as a contract case.

Problem (float64): parameters ``w_i`` drawn from N(0, s_i²), loss ``Σ_i Σ c_i (w_i − t_i)²/2 + 0.1 sin(5 w_i)``
with targets ``t_i = 0.05 cos(0.7 j)`` over the flattened entries j and weights ``c_i`` (stored), one ``loss.backward(); opt.step()`` per step (their usage,
no closure), gradients zeroed before each backward. Six runs of 31 steps: plain, the default lr, re-selection,
the seeded nuclear norm (``random.seed``), nuclear norm with re-selection, several shapes with other betas and no
weight decay. Stored per step: the current mask of every parameter (packed bits) and the parameters' values at
the initially selected entries (the others are checked to stay at their initial values). Contract cases: the
default lr for three thresholds, ``save_params`` after a run, and the type of the ``progressive_iter=-1`` failure.

Output: tests/data/sara_golden.pt (``torch.load(..., weights_only=True)``).
"""
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_code import extract  # noqa: E402

COMMIT = "ea21192"
here = os.path.dirname(os.path.abspath(__file__))
repo = os.environ["REPO"]
extract(repo, COMMIT, ["optim/adamw2.py"], on_path=("optim",))
import adamw2  # noqa: E402

STEPS = 31
# name: shapes, scales, kwargs, seed for random (None: no nuclear norm)
RUNS = {
    "plain": ([(12, 10), (7,)], [0.01, 0.005], dict(lr=3e-3, threshold=4e-3, weight_decay=1e-2), None),
    "default_lr": ([(9, 8), (5,)], [0.002, 0.002], dict(threshold=1e-3), None),
    "reselect": ([(12, 10), (6,)], [0.01, 0.005], dict(lr=3e-4, threshold=5e-3, progressive_iter=10), None),
    "nuclear": ([(65, 66), (66, 65), (4,)], [0.02, 0.08, 0.002],
                dict(lr=1e-3, threshold=1.6e-3, lambda_rank=0.05), 3),
    "nuclear_reselect": ([(65, 66), (66, 65), (4,)], [0.02, 0.08, 0.002],
                         dict(lr=1e-4, threshold=1.6e-3, lambda_rank=0.05, progressive_iter=12), 7),
    "shapes": ([(4, 3, 2, 2), (10, 6), (3,)], [0.01, 0.02, 0.01],
               dict(lr=5e-3, threshold=6e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.0), None),
}


def problem(shapes, scales, seed):
    g = torch.Generator().manual_seed(seed)
    sc = [scales[min(i, len(scales) - 1)] for i in range(len(shapes))]
    w0 = [torch.randn(s, generator=g, dtype=torch.float64) * c for s, c in zip(shapes, sc)]
    targets = [targets_for(s) for s in shapes]
    coefs = torch.rand(len(shapes), generator=g, dtype=torch.float64) + 0.5
    return w0, targets, coefs


def targets_for(shape):
    n = 1
    for d in shape:
        n *= d
    return 0.05 * torch.cos(torch.arange(n, dtype=torch.float64) * 0.7).reshape(shape)


def loss_fn(ws, targets, coefs):
    return sum((c * (w - t).pow(2) / 2 + 0.1 * torch.sin(5 * w)).sum() for w, t, c in zip(ws, targets, coefs))


def pack(bits):
    """Bool vector -> uint8, 8 entries a byte (entry j is bit j % 8 of byte j // 8)."""
    pad = (-bits.numel()) % 8
    b = torch.cat([bits.to(torch.uint8), torch.zeros(pad, dtype=torch.uint8)]).reshape(-1, 8)
    return (b * (2 ** torch.arange(8, dtype=torch.uint8))).sum(1).to(torch.uint8)


def run(name, shapes, scales, kwargs, rseed, k):
    w0, targets, coefs = problem(shapes, scales, 100 + k)
    ws = [torch.nn.Parameter(w.clone()) for w in w0]
    kw = dict(kwargs)
    kw.setdefault("progressive_iter", 10**9)
    opt = adamw2.AdamW(ws, **kw)
    if rseed is not None:
        random.seed(rseed)
    init_mask = [m.clone() for m in opt.param_mask_groups]
    masks, values = [], []
    for _ in range(STEPS):
        for w in ws:
            w.grad = None
        loss_fn(ws, targets, coefs).backward()
        opt.step()
        cur = opt.param_mask_groups if opt.inner_iter <= opt.progressive_iter else opt.param_mask_groups_adaptive
        masks.append(pack(torch.cat([m.reshape(-1) for m in cur])))
        values.append(torch.cat([w.detach()[m] for w, m in zip(ws, init_mask)]))
        for w, w_init, m in zip(ws, w0, init_mask):
            assert torch.equal(w.detach()[~m], w_init[~m])
    print(name, "selected", [int(m.sum()) for m in init_mask], "final", [int(m.sum()) for m in cur],
          "low-rank ids", opt.low_rank_ids)
    return dict(shapes=[list(s) for s in shapes], w0=w0, coefs=coefs,
                kwargs={k2: (list(v) if isinstance(v, tuple) else v) for k2, v in kwargs.items()},
                random_seed=-1 if rseed is None else rseed, masks=torch.stack(masks), values=torch.stack(values),
                saved=opt.save_params())


out = {"runs": {}, "commit": COMMIT}
for k, (name, (shapes, scales, kwargs, rseed)) in enumerate(RUNS.items()):
    out["runs"][name] = run(name, shapes, scales, kwargs, rseed, k)
# contract: default lr, save_params (in the runs), the -1 crash
thr = [1e-3, 5e-3, 2e-2]
out["default_lr"] = {"threshold": torch.tensor(thr, dtype=torch.float64),
                     "lr": torch.tensor([adamw2.AdamW([torch.nn.Parameter(torch.zeros(2))], threshold=t).defaults["lr"]
                                         for t in thr], dtype=torch.float64)}
w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
opt = adamw2.AdamW([w], threshold=1e-3)
w.grad = torch.ones_like(w)
try:
    opt.step()
    out["minus_one_error"] = "none"
except Exception as e:  # noqa: BLE001 - recording which error theirs raises
    out["minus_one_error"] = type(e).__name__
print("progressive_iter=-1:", out["minus_one_error"])
path = os.path.join(here, "..", "..", "tests", "data", "sara_golden.pt")
torch.save(out, path)
print("wrote", os.path.normpath(path), os.path.getsize(path), "bytes")
