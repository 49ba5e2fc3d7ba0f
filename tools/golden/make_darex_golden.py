"""Golden data for DAREx (seed 90), made by running the authors' code.

Repository: github.com/vengdeng/DAREx, commit 0873fc2 (``utils/deltaprune.py``: ``drop``, ``rescale_v``;
``utils/analyticalq.py``: ``analytical_resolve_new``; ``AdamR.py``: ``AdamR``). Their files are not part of this
repository: point REPO at a git directory of theirs (a clone, or the mirror the search tool's ``fetch`` brings)
and run from the repository root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_darex_golden.py

The files are copied with ``git show`` into a temporary folder (``authors_code.extract``) and imported from there;
they need torch, numpy and tqdm only and run on CPU. Everything is float64 except where said.

* drop-and-rescale (4): ``torch.manual_seed(seed)``, then their ``drop({"weight": ΔW, "bias": Δb}, p)`` (one
  ``torch.bernoulli`` per tensor, weight first, on the global generator) and ``rescale_v(pretrained, dropped, q)``
  (divide by q, add the pretrained ``nn.Linear``'s weights back).
* analytical q, float64 (5): ``analytical_resolve_new(p, c, eta, prob, stop_iter)`` on synthetic
  ``c = ΔW ⊙ x̄`` (+ a Δbias column). Their best-so-far buffer is created as float16 whatever c's dtype
  (``torch.ones_like(q_o, dtype=torch.float16)``); for these cases that one line is changed, by text substitution
  on the copied source, to ``dtype=c.dtype`` so that the whole computation is float64 (the module under test
  computes in one dtype). Each case also stores the result with the early stop disabled (``stop_iter=2``), so
  the two cases where the stop changes rows' q are marked.
* analytical q, float16 (2): the unmodified function on ``c.to(torch.float16)``, as their
  ``optimal_q_calculation`` calls it.
* AdamR (2 runs × 4 steps): L2 and L1 on two parameters with a quadratic-plus-sine loss, ``pre_model`` the
  initial values; parameters after each step. Their per-step ``print`` is silenced.
* contract (3): analytical q at p = 0.5 (their φ(0.5) is 0/0 = NaN, so no row is ever updated and q stays
  1 − p); AdamR with weight_decay = 0 (plain Adam) for 4 steps; the first grid point ``int((1 − p)·1000)·0.001``
  for p = 0.9 (0.099, below 1 − p, from float truncation).

Output: tests/data/darex_golden.pt (``torch.load(..., weights_only=True)``).
"""
import contextlib
import io
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_code import extract  # noqa: E402

COMMIT = "0873fc2"
here = os.path.dirname(os.path.abspath(__file__))
repo = os.environ["REPO"]
tmp = extract(repo, COMMIT, ["utils/deltaprune.py", "utils/analyticalq.py", "AdamR.py"], on_path=("", "utils"))
import analyticalq  # noqa: E402
import deltaprune  # noqa: E402
from AdamR import AdamR  # noqa: E402

# float64 variant of analytical_resolve_new: the best-so-far buffer in c's dtype (one line substituted)
src = open(os.path.join(tmp, "utils", "analyticalq.py")).read()
line = "best_res = torch.ones_like(q_o,dtype=torch.float16)* 10000"
assert src.count(line) == 1
ns: dict = {}
exec(compile(src.replace(line, "best_res = torch.ones_like(q_o,dtype=c.dtype)* 10000"), "analyticalq64", "exec"), ns)
resolve64 = ns["analytical_resolve_new"]

out: dict = {"commit": COMMIT}

# ---- drop and rescale
drops = []
for k, (seed, p, q) in enumerate([(0, 0.5, 0.5), (1, 0.9, 0.1), (2, 0.9, 0.3), (3, 0.99, 0.05)]):
    g = torch.Generator().manual_seed(100 + k)
    pre = torch.nn.Linear(7, 5).double()
    with torch.no_grad():
        pre.weight.copy_(torch.randn(5, 7, generator=g, dtype=torch.float64))
        pre.bias.copy_(torch.randn(5, generator=g, dtype=torch.float64))
    delta = {"weight": 0.01 * torch.randn(5, 7, generator=g, dtype=torch.float64) + 0.002,
             "bias": 0.01 * torch.randn(5, generator=g, dtype=torch.float64)}
    torch.manual_seed(seed)
    dropped = deltaprune.drop(delta, p)
    final = deltaprune.rescale_v(pre, dropped, q)
    drops.append({"seed": seed, "p": p, "q": q, "pre_weight": pre.weight.detach().clone(),
                  "pre_bias": pre.bias.detach().clone(), "delta_weight": delta["weight"], "delta_bias": delta["bias"],
                  "weight": final["weight"].detach().clone(), "bias": final["bias"].detach().clone()})
out["drop"] = drops


# ---- analytical q
def make_c(seed, rows, cols, scale, mean, outlier_rows=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    dw = scale * torch.randn(rows, cols, generator=g, dtype=torch.float64) + mean
    xbar = torch.randn(cols, generator=g, dtype=torch.float64).abs() + 0.5
    c = dw * xbar
    if outlier_rows:
        c[:outlier_rows] *= 40.0
    if bias:
        c = torch.cat([c, scale * torch.randn(rows, 1, generator=g, dtype=torch.float64)], dim=1)
    return c


anal = []
for k, (p, eta, prob, stop, c_kw) in enumerate([
        (0.9, 0.45, 0.95, 0.8, dict(rows=24, cols=32, scale=0.05, mean=0.01)),
        (0.99, 0.45, 0.95, 0.8, dict(rows=16, cols=64, scale=0.02, mean=0.0)),
        (0.7, 0.3, 0.9, 0.8, dict(rows=20, cols=16, scale=0.2, mean=-0.05, bias=False)),
        (0.9, 0.45, 0.95, 0.8, dict(rows=30, cols=48, scale=0.05, mean=0.05, outlier_rows=6)),
        (0.95, 0.6, 0.99, 0.5, dict(rows=25, cols=40, scale=0.5, mean=0.1, outlier_rows=8))]):
    c = make_c(200 + k, **c_kw)
    q = resolve64(p, c, eta=eta, prob=prob, stop_iter=stop)
    q_full = resolve64(p, c, eta=eta, prob=prob, stop_iter=2.0)
    anal.append({"p": p, "eta": eta, "prob": prob, "stop": stop, "c": c, "q": q.double(),
                 "q_no_stop": q_full.double(), "stop_bites": bool((q != q_full).any())})
out["analytical"] = anal
print("analytical: stop bites in", [a["stop_bites"] for a in anal])

anal16 = []
for k, (p, c_kw) in enumerate([(0.9, dict(rows=24, cols=32, scale=0.05, mean=0.01)),
                               (0.9, dict(rows=30, cols=48, scale=0.3, mean=0.05, outlier_rows=6))]):
    c = make_c(300 + k, **c_kw)
    q = analyticalq.analytical_resolve_new(p, c.to(torch.float16), eta=0.45, prob=0.95, stop_iter=0.8)
    anal16.append({"p": p, "c": c, "q": q.double()})
out["analytical16"] = anal16


# ---- AdamR
def run_adamr(l1, wd, steps=4, lr=0.05, betas=(0.9, 0.99), eps=1e-8):
    g = torch.Generator().manual_seed(7)
    ws = [torch.nn.Parameter(torch.randn(4, 3, generator=g, dtype=torch.float64)),
          torch.nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64))]
    w0 = [w.detach().clone() for w in ws]
    pre = [w.detach().clone() for w in ws]
    opt = AdamR(ws, pre, lr=lr, betas=betas, L1=l1, eps=eps, weight_decay=wd)
    traj = []
    for _ in range(steps):
        for w in ws:
            w.grad = None
        loss = sum(((w - 0.3).pow(2) / 2 + 0.1 * torch.sin(5 * w)).sum() for w in ws)
        loss.backward()
        with contextlib.redirect_stdout(io.StringIO()):
            opt.step()
        traj.append([w.detach().clone() for w in ws])
    return {"l1": l1, "wd": wd, "lr": lr, "betas": list(betas), "eps": eps, "w0": w0,
            "traj": [torch.stack([t[i] for t in traj]) for i in range(len(ws))]}


out["adamr"] = [run_adamr(False, 0.5), run_adamr(True, 0.5)]

# ---- contract
c = make_c(400, rows=6, cols=8, scale=0.05, mean=0.0)
out["contract"] = {
    "half_p_q": resolve64(0.5, c, eta=0.45, prob=0.95, stop_iter=0.8).double(), "half_p_c": c,
    "adam_wd0": run_adamr(False, 0.0),
    "first_grid_p09": int((1 - 0.9) * 1000) * 0.001,
}
path = os.path.join(here, "..", "..", "tests", "data", "darex_golden.pt")
torch.save(out, path)
print("wrote", os.path.normpath(path), os.path.getsize(path), "bytes; first grid", out["contract"]["first_grid_p09"],
      "; half p q", out["contract"]["half_p_q"].flatten()[:3].tolist(), math.nan)
