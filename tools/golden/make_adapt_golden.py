"""Golden AdaPT data (fixed-point quantizer, precision policy, optimizer runs) made by running the authors' code.

Source: github.com/lorenz0890/AdaPT at commit 980eead, ``optimizers/msgd_fp.py`` (``MSGD_FP``), copied at that
commit into a temporary folder (``authors_code.extract``) and imported from there unchanged, with the quantizer
their models pass in ``qmap['q']``: ``qtorch.quant.fixed_point_quantize`` of qtorch 0.3.0 (its CPU C++
extension, built by qtorch on import). qtorch is not a gradwise dependency: it was installed into a separate
venv under /tmp that reuses the project's torch 2.13.0 (a ``.pth`` file pointing at the project venv's
site-packages, ``pip install --no-deps qtorch==0.3.0``). Everything is float32 (qtorch's kernels take float32
only); qtorch's stochastic rounding draws ``rand_like`` from torch's global generator, seeded per case.

Run from the repository root with their repository as a git directory at ADAPT_REPO:

    ADAPT_REPO=/path/to/AdaPT PYTHONPATH=src /tmp/compadapt-venv/bin/python tools/golden/make_adapt_golden.py

Writes tests/data/adapt_golden.pt:
  quantize: 8 (wl, fl, rounding, symmetric, clamp) settings on 301 seeded points (ties, out of range, 0):
            input, seed and qtorch's output;
  kl: 4 values of their ``__fpq_loss`` (weights, wl, fl, resolution, seed);
  runs: 4 MSGD_FP runs of 12 steps on two linear layers (weight + bias each): optimizer and controller settings,
        seed, per-step gradients and losses (falling, or rising in runs 1 and 3), and after each step qwl, qfl, lb, res,
        the push-up strategy, the parameters and the float master weights;
  contract: their push-down bisection for fl evaluates the loss at fl_min (source line), their
            ``quant_grads=False`` path calls exit.
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from authors_code import extract  # noqa: E402

from qtorch.quant import fixed_point_quantize  # noqa: E402

COMMIT = "980eead"
tmp = Path(extract(os.environ["ADAPT_REPO"], COMMIT, ["optimizers/msgd_fp.py"], on_path=("optimizers",)))
from msgd_fp import MSGD_FP  # noqa: E402

src = (tmp / "optimizers/msgd_fp.py").read_text()
out = {"commit": COMMIT}

# quantizer
g = torch.Generator().manual_seed(0)
base = torch.cat([torch.randn(200, generator=g) * 4,
                  torch.arange(-40, 41, dtype=torch.float32) / 8,  # grid points and ties at fl = 2
                  torch.tensor([0.0, 1e6, -1e6, 7.96875, -8.0, 7.9375, 0.03125, -0.03125, 1e-8, -1e-8,
                                3.0e-3, 12.34, -12.34, 0.5, -0.5, 0.25, 1.75, -1.75, 2.0**-20, 100.0])])
qcases = []
QSETTINGS = [(8, 4, "nearest", False, True), (8, 4, "stochastic", False, True), (4, 2, "nearest", False, True),
             (4, 2, "stochastic", True, True), (16, 10, "stochastic", False, True), (6, 1, "nearest", True, True),
             (8, 5, "stochastic", False, False), (12, 12, "nearest", False, True)]
for k, (wl, fl, rounding, sym, clamp) in enumerate(QSETTINGS):
    torch.manual_seed(100 + k)
    y = fixed_point_quantize(base.clone(), wl, fl, clamp=clamp, symmetric=sym, rounding=rounding)
    qcases.append(dict(wl=wl, fl=fl, rounding=rounding, symmetric=sym, clamp=clamp, seed=100 + k, x=base.clone(),
                       out=y))
out["quantize"] = qcases

# KL loss of their push-down
opt0 = MSGD_FP([torch.zeros(2, 2, requires_grad=True)])
kl = []
for k, (wl, fl, res) in enumerate([(8, 4, 10), (6, 2, 20), (16, 8, 50), (4, 4, 5)]):
    w = torch.randn(64, generator=g) * 0.7
    torch.manual_seed(200 + k)
    kl.append(dict(w=w, wl=wl, fl=fl, res=res, seed=200 + k,
                   loss=opt0._MSGD_FP__fpq_loss(w, wl, fl, fixed_point_quantize, res).double()))
out["kl"] = kl

# optimizer runs
SETTINGS = [
    dict(opt=dict(lr=0.1, momentum=0.9, weight_decay=1e-4),
         ctl=dict(min_lookback=2, max_lookback=6, min_resolution=4, max_resolution=12, results_buffer=4,
                  lookback_momentum=0.9, push_up_strategy="min"), noise=1.0),
    dict(opt=dict(lr=0.05, momentum=0.9, nesterov=True),
         ctl=dict(min_lookback=3, max_lookback=20, min_resolution=8, max_resolution=30, results_buffer=8,
                  lookback_momentum=0.33, push_up_strategy="mean"), noise=3.0),
    dict(opt=dict(lr=0.2, momentum=0.0),
         ctl=dict(min_lookback=2, max_lookback=4, min_resolution=2, max_resolution=6, results_buffer=2,
                  lookback_momentum=0.5, push_up_strategy="max"), noise=0.1),
    dict(opt=dict(lr=0.1, momentum=0.5, dampening=0.1, weight_decay=1e-3),
         ctl=dict(min_lookback=2, max_lookback=12, min_resolution=4, max_resolution=40, results_buffer=6,
                  lookback_momentum=0.9, push_up_strategy="min", wl=10, fl=6), noise=10.0),
]
runs = []
for k, st in enumerate(SETTINGS):
    gen = torch.Generator().manual_seed(300 + k)
    shapes = [(5, 6), (5,), (3, 5), (3,)]
    init = [torch.randn(s, generator=gen) * 0.5 for s in shapes]
    direction = [torch.randn(s, generator=gen) for s in shapes]
    steps = 12
    grads = [[(direction[j] + st["noise"] * torch.randn(s, generator=gen)) * 0.1 for j, s in enumerate(shapes)]
             for _ in range(steps)]
    losses = (2.0 * torch.exp(-0.1 * torch.arange(steps)) + 0.3 * torch.rand(steps, generator=gen)).float()
    if k % 2:
        losses = losses.flip(0)  # a rising loss moves the strategy up
    params = [torch.nn.Parameter(t.clone()) for t in init]
    ctl = dict(st["ctl"])
    wl0, fl0 = ctl.pop("wl", 8), ctl.pop("fl", 4)
    opt = MSGD_FP(params, quant_grads=True, **st["opt"], **ctl)
    n = len(params)
    qmap = {"q": [fixed_point_quantize] * n, "qwl": [wl0] * n, "qfl": [fl0] * n, "res": [ctl["min_resolution"]] * n,
            "lb": [ctl["min_lookback"]] * n, "sp": [0] * n}
    torch.manual_seed(400 + k)
    rec = {key: [] for key in ("qwl", "qfl", "lb", "res", "strategy", "params", "master")}
    for t in range(steps):
        for p, gr in zip(params, grads[t]):
            p.grad = gr.clone()
        loss = losses[t].clone()
        opt.step(qmap=qmap, closure=lambda: loss)
        for key in ("qwl", "qfl", "lb", "res"):
            rec[key].append(list(qmap[key]))
        rec["strategy"].append(opt._MSGD_FP__push_up_strategy)
        rec["params"].append([p.detach().clone() for p in params])
        rec["master"].append([w.clone() for w in opt.param_groups[0]["fpWeights"]])
    runs.append(dict(opt=st["opt"], ctl=st["ctl"], seed=400 + k, init=init, grads=grads, losses=losses, **rec))
    print(k, rec["qwl"][-1], rec["qfl"][-1], rec["lb"][-1], rec["res"][-1], rec["strategy"])
out["runs"] = runs

ok = "fl_loss = self.__fpq_loss(w, wl, fl_min, quantizer, resolution)" in src
exits = "exit(-1)" in src
out["contract"] = dict(fl_bisection_at_fl_min=ok, no_quant_grads_exits=exits)
assert ok and exits
dest = Path("tests/data/adapt_golden.pt")
torch.save(out, dest)
print(dest, dest.stat().st_size)
