"""Golden data for learned proximal networks (seed 169), made by running the authors' modules as written.

Repository: github.com/ZhenghanFang/learned-proximal-networks, commit cbc3cfa (cbc3cfa1...). Point REPO at a git
directory of theirs (a clone, or the mirror the search tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/learned-proximal-networks .venv/bin/python tools/golden/make_lpn_golden.py

Their fully connected ``LPN`` (``exps/laplacian/network.py``, pure torch) is imported from a copy of the file
(``authors_code.extract``). ``exp_func``, ``ExpDiracSrgt`` and ``get_loss_hparams_and_lr`` are cut out of
``lpn/utils/utils.py`` with ``ast`` (the file imports omegaconf and their datasets at the top) and executed as
written. Everything runs in float64 (``model.double()``), torch 2.13.0 on CPU. Cases:

* ``forward`` (3): their ``LPN`` for (in_dim, hidden, layers, beta) = (1, 10, 1, 1), (3, 8, 2, 10), (5, 6, 0, 2),
  ``init_weights(-10, 0.1)`` then a few weights perturbed (so clipping has work to do): the state_dict, input x,
  ``scalar(x)`` and ``forward(x)``.
* ``losses`` (4) on model 2 with noisy inputs: ``ExpDiracSrgt(sigma)`` at sigma 0.5 and 2.0 (their image
  training loss), the Laplacian notebook's elementwise ``exp_func(out - target, 0.3).mean()`` on model 1, and
  ``nn.L1Loss`` (their pretraining): loss value and every parameter gradient (zeros for the output bias, which
  the prox does not depend on).
* ``train`` (1): 10 of their training steps on model 2 (forward, loss, ``zero_grad``, ``backward``, Adam
  ``step``, ``wclip``, as their ``train_step``) with the loss and learning rate of their
  ``get_loss_hparams_and_lr`` (num_steps 10, num_steps_pretrain 3, num_stages 3, sigma_min 0.3, pretrain_lr
  1e-2, lr 1e-3): inputs, targets, (loss type, sigma, lr) and all parameters after each step.
* ``contract`` (3): their schedule's (type, sigma) for several settings; their ``ExpDiracSrgt`` gradient where
  the prediction equals the target (NaN: d sqrt at 0); their ``forward`` sets ``requires_grad`` on the caller's
  input.

Output: tests/data/lpn_golden.pt (``torch.load(..., weights_only=True)``).
"""
import ast
import importlib
import os
import sys
import types

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_code import extract  # noqa: E402

COMMIT = "cbc3cfa"
here = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(here, "..", "..", "tests", "data", "lpn_golden.pt")
repo = os.environ["REPO"]
tmp = extract(repo, COMMIT, ["exps/laplacian/network.py", "lpn/utils/utils.py"], on_path=("exps/laplacian",))
network = importlib.import_module("network")

src = open(os.path.join(tmp, "lpn/utils/utils.py")).read()
wanted = {"exp_func", "ExpDiracSrgt", "get_loss_hparams_and_lr", "get_loss"}
body = [n for n in ast.parse(src).body if getattr(n, "name", None) in wanted]
ns = {"torch": torch, "nn": nn, "np": np}
exec(compile(ast.Module(body=body, type_ignores=[]), "utils.py", "exec"), ns)

torch.set_default_dtype(torch.float64)
CONFIGS = [(1, 10, 1, 1.0), (3, 8, 2, 10.0), (5, 6, 0, 2.0)]


def make_model(i):
    in_dim, hidden, layers, beta = CONFIGS[i]
    torch.manual_seed(100 + i)
    m = network.LPN(in_dim=in_dim, hidden=hidden, layers=layers, beta=beta).double()
    m.init_weights(-10, 0.1)
    with torch.no_grad():  # move some hidden weights off the tiny init, a few negative
        for core in m.lin[1:]:
            core.weight.add_(0.3 * torch.randn_like(core.weight))
    return m


def sd(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


forward = []
for i, cfg in enumerate(CONFIGS):
    m = make_model(i)
    torch.manual_seed(200 + i)
    x = 2.0 * torch.randn(7, cfg[0])
    forward.append({"config": list(cfg), "state": sd(m), "x": x.clone(),
                    "scalar": m.scalar(x.clone()).detach(), "prox": m(x.clone()).detach()})

losses = []
for kind, sigma, i in [("prox_matching", 0.5, 1), ("prox_matching", 2.0, 1), ("exp_func", 0.3, 0), ("l1", None, 1)]:
    m = make_model(i)
    torch.manual_seed(300 + len(losses))
    target = torch.randn(16, CONFIGS[i][0])
    inp = target + 0.5 * torch.randn_like(target)
    out = m(inp.clone())
    if kind == "prox_matching":
        loss = ns["ExpDiracSrgt"](sigma=sigma)(out, target)
    elif kind == "exp_func":
        loss = ns["exp_func"](out - target, sigma).mean()
    else:
        loss = nn.L1Loss()(out, target)
    grads = torch.autograd.grad(loss, list(m.parameters()), allow_unused=True, materialize_grads=True)
    losses.append({"kind": kind, "sigma": sigma, "model": i, "state": sd(m), "input": inp, "target": target,
                   "loss": loss.detach(), "grads": dict(zip([k for k, _ in m.named_parameters()], grads))})

args = types.SimpleNamespace(num_steps=10, num_steps_pretrain=3, num_stages=3, sigma_min=0.3, pretrain_lr=1e-2,
                             lr=1e-3)
m = make_model(1)
opt = torch.optim.Adam(m.parameters())
train = {"model": 1, "state0": sd(m), "steps": []}
for step in range(10):
    hp, lr = ns["get_loss_hparams_and_lr"](args, step)
    loss_func = ns["get_loss"](hp)
    for g in opt.param_groups:
        g["lr"] = lr
    torch.manual_seed(400 + step)
    target = torch.randn(32, 3)
    inp = target + 0.4 * torch.randn_like(target)
    out = m(inp.clone())
    loss = loss_func(out, target)
    opt.zero_grad()
    loss.backward()
    opt.step()
    m.wclip()
    train["steps"].append({"type": hp["type"], "sigma": hp.get("sigma"), "lr": lr, "input": inp, "target": target,
                           "loss": loss.detach(), "state": sd(m)})

settings = [(0, 10, 3, 3, 0.3), (2, 10, 3, 3, 0.3), (3, 10, 3, 3, 0.3), (9, 10, 3, 3, 0.3), (12, 10, 3, 3, 0.3),
            (20000, 40000, 20000, 4, 1.0), (29999, 40000, 20000, 4, 1.0), (30000, 40000, 20000, 4, 1.0),
            (39999, 40000, 20000, 4, 1.0), (0, 9, 0, 4, 0.5), (8, 9, 0, 4, 0.5)]
schedule = []
for step, total, pre, stages, smin in settings:
    a = types.SimpleNamespace(num_steps=total, num_steps_pretrain=pre, num_stages=stages, sigma_min=smin,
                              pretrain_lr=1e-3, lr=1e-4)
    hp, lr = ns["get_loss_hparams_and_lr"](a, step)
    schedule.append({"args": [step, total, pre, stages, smin], "type": hp["type"], "sigma": hp.get("sigma"),
                     "lr": lr})

p = torch.tensor([[0.5, -1.0], [2.0, 0.0]], requires_grad=True)
t = torch.tensor([[0.5, -1.0], [1.0, 0.5]])
nan_grad = torch.autograd.grad(ns["ExpDiracSrgt"](sigma=1.0)(p, t), p)[0]
x = torch.randn(3, 1)
make_model(0)(x)
contract = {"schedule": schedule, "pred": p.detach(), "target": t, "their_grad_at_zero": nan_grad,
            "their_forward_sets_requires_grad": bool(x.requires_grad)}

meta = {"repo": "github.com/ZhenghanFang/learned-proximal-networks", "commit": COMMIT, "torch": str(torch.__version__)}
torch.save({"meta": meta, "forward": forward, "losses": losses, "train": train, "contract": contract}, OUT)
print("wrote", os.path.abspath(OUT), os.path.getsize(OUT), "bytes")
