"""Golden data for SAF and MESA (Sharpness-Aware Training for Free), made by running the authors' training step.

Repository: github.com/AngusDujw/SAF, commit 6e856004c59f9a8497d48e4a5d545e59f7b87d3e ("First Commit"). Their
files are not part of this repository: point REPO at a git directory of theirs (a clone, or the mirror the search
tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_saf_golden.py

SAF and MESA have no function of their own in the authors' code: the trajectory loss is a few lines inside
``train_one_epoch`` of ``SAF_train.py`` and ``MESA_train.py`` (timm's training script, modified). This script reads
those two files with ``git show`` at the commit above, takes the function ``train_one_epoch`` out of each with
``ast`` (the rest of the scripts parse ImageNet arguments and import all of their timm copy, which needs
torchvision) and runs it, unchanged, on a small float64 problem. It also loads, unchanged, their
``timm/loss/cross_entropy.py`` (``rein_CrossEntropyLoss``, their training loss without label smoothing, which is
the mean cross-entropy with its default arguments), ``timm/utils/model_ema.py`` (``ModelEmaV2``, MESA's teacher)
and ``timm/utils/metrics.py`` (``AverageMeter``).

Shims (the names ``train_one_epoch`` reads from its module, given here):

* ``torch.cuda.synchronize`` is a no-op while their function runs (it calls it after every step; there is no GPU);
* ``args.prefetcher=True`` so that it does not call ``.cuda()`` on the batch (no mixup, so nothing else changes);
* ``AverageMeter`` records every value it is given, so the per-step total loss (``loss.item()``) is kept;
* ``F`` is ``torch.nn.functional`` whose ``kl_div`` also records its output (the per-element KL terms, ``[B, C]``);
* the optimizer is ``torch.optim.SGD`` whose ``step`` first records the gradients (the gradient of the total loss);
* the loader is a list of ``(indices, input, target)`` batches, as their modified loader yields them;
* ``train_logits``, their logits memory, is a float64 ``numpy`` array of shape ``[N, minus_epoch + 1, C]``
  (theirs is float32 ``[15000000, 4, 1000]``), so everything runs in float64.

Runs (one model, data and batch order each, all seeded; see RUNS):

* ``saf``: their ``SAF_train.train_one_epoch`` for 9 epochs, N=24 samples, 3 batches of 8 per epoch (every sample
  every epoch), ``minus_epoch=2``, ``kl_start_epoch=3``, ``kl_end_epoch=7``, temperature 5, reinforce 0.3;
* ``saf_drop``: the same with N=26 and 3 batches of 8 (two samples left out of each epoch, as a ``drop_last``
  loader does: their memory then holds older logits, or zeros, for those samples), ``minus_epoch=3``,
  ``kl_start_epoch=4``, temperature 2, reinforce 0.16, no end;
* ``mesa``: their ``MESA_train.train_one_epoch`` for 8 epochs with ``ModelEmaV2(model, decay=0.8)`` (created from
  the initial model, updated after every step by their function), a model with a BatchNorm1d (its running
  statistics are averaged too), ``kl_start_epoch=2``, temperature 5, reinforce 0.8.

The model is an MLP (6 -> 16 -> 5, tanh) in float64, SGD with momentum 0.9 and learning rate 0.1.
"""
import argparse
import ast
import os
import subprocess
import sys
import types
from collections import OrderedDict
from contextlib import suppress

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

COMMIT = "6e856004c59f9a8497d48e4a5d545e59f7b87d3e"
here = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(here, "..", "..", "tests", "data", "saf_golden.pt")

RUNS = {
    "saf": dict(script="SAF_train.py", n=24, batches=3, batch_size=8, epochs=9, minus_epoch=2, kl_start_epoch=3,
                kl_end_epoch=7, temperature=5.0, reinforce=0.3, bn=False, seed=1),
    "saf_drop": dict(script="SAF_train.py", n=26, batches=3, batch_size=8, epochs=9, minus_epoch=3,
                     kl_start_epoch=4, kl_end_epoch=10_000, temperature=2.0, reinforce=0.16, bn=False, seed=2),
    "mesa": dict(script="MESA_train.py", n=24, batches=3, batch_size=8, epochs=8, kl_start_epoch=2,
                 kl_end_epoch=10_000, temperature=5.0, reinforce=0.8, bn=True, ema_decay=0.8, seed=3),
}


def show(repo: str, path: str) -> str:
    git_dir = os.path.join(repo, ".git") if os.path.isdir(os.path.join(repo, ".git")) else repo
    return subprocess.run(["git", "--git-dir", git_dir, "show", f"{COMMIT}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def load_module(name: str, source: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    exec(compile(source, name, "exec"), mod.__dict__)
    return mod


def function_from(source: str, fname: str, namespace: dict) -> types.FunctionType:
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == fname)
    exec(compile(ast.Module(body=[node], type_ignores=[]), fname, "exec"), namespace)
    return namespace[fname]


class Recorder:
    def __init__(self):
        self.meters, self.kl, self.grads, self.params = [], [], [], []


def make_namespace(rec: Recorder, metrics) -> dict:
    class RecordingMeter(metrics.AverageMeter):
        def __init__(self):
            super().__init__()
            self.values = []
            rec.meters.append(self)

        def update(self, val, n=1):
            self.values.append(val)
            super().update(val, n)

    def kl_div(*args, **kwargs):
        out = F.kl_div(*args, **kwargs)
        rec.kl.append(out.detach().clone())
        return out

    shim_f = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
    shim_f.kl_div = kl_div
    import logging
    return dict(time=__import__("time"), torch=torch, F=shim_f, np=np, suppress=suppress, OrderedDict=OrderedDict,
                AverageMeter=RecordingMeter, dispatch_clip_grad=None, model_parameters=None, reduce_tensor=None,
                torchvision=None, os=os, _logger=logging.getLogger("saf_golden"))


def build(cfg):
    torch.manual_seed(cfg["seed"])
    layers = [nn.Linear(6, 16)] + ([nn.BatchNorm1d(16)] if cfg["bn"] else []) + [nn.Tanh(), nn.Linear(16, 5)]
    model = nn.Sequential(*layers).double()
    g = torch.Generator().manual_seed(100 + cfg["seed"])
    x = torch.randn(cfg["n"], 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (cfg["n"],), generator=g)
    orders = [torch.randperm(cfg["n"], generator=g)[: cfg["batches"] * cfg["batch_size"]]
              for _ in range(cfg["epochs"])]
    return model, x, y, orders


def run(name, cfg, repo, modules):
    rec = Recorder()
    ns = make_namespace(rec, modules["metrics"])
    train_one_epoch = function_from(show(repo, cfg["script"]), "train_one_epoch", ns)
    model, x, y, orders = build(cfg)
    init = {k: v.clone() for k, v in model.state_dict().items()}

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            rec.grads.append(torch.cat([p.grad.detach().reshape(-1) for p in model.parameters()]))
            out = super().step(closure)
            rec.params.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
            return out

    opt = RecordingSGD(model.parameters(), lr=0.1, momentum=0.9)
    args = argparse.Namespace(mixup_off_epoch=0, prefetcher=True, channels_last=False, distributed=False,
                              clip_grad=None, clip_mode="norm", log_interval=10 ** 9, local_rank=1,
                              world_size=1, save_images=False, recovery_interval=0,
                              kl_start_epoch=cfg["kl_start_epoch"], kl_end_epoch=cfg["kl_end_epoch"],
                              temperature=cfg["temperature"], reinforce=cfg["reinforce"])
    extra = {}
    if "minus_epoch" in cfg:
        args.minus_epoch = cfg["minus_epoch"]
        train_logits = np.zeros((cfg["n"], cfg["minus_epoch"] + 1, 5), dtype=np.float64)
        extra["train_logits"] = train_logits
    model_ema = modules["ema"].ModelEmaV2(model, decay=cfg["ema_decay"]) if "ema_decay" in cfg else None
    loss_fn = modules["ce"].rein_CrossEntropyLoss()
    epoch_loss, ema_states, kl_per_step = [], [], []
    sync = torch.cuda.synchronize
    torch.cuda.synchronize = lambda *a, **k: None
    try:
        for epoch, order in enumerate(orders):
            loader = [(order[i:i + cfg["batch_size"]], x[order[i:i + cfg["batch_size"]]],
                       y[order[i:i + cfg["batch_size"]]]) for i in range(0, len(order), cfg["batch_size"])]
            n_kl = len(rec.kl)
            model.train()
            out = train_one_epoch(epoch, model, loader, opt, loss_fn, args, model_ema=model_ema, **extra)
            epoch_loss.append(float(out["loss"]))
            kls = rec.kl[n_kl:]
            # one kl_div call per step while the loss is on; per-sample KL * T^2 as their loss adds it (NaN: off)
            kl_per_step += [(k.sum(-1) * cfg["temperature"] ** 2) for k in kls] if kls else \
                [torch.full((cfg["batch_size"],), float("nan"), dtype=torch.float64)] * len(loader)
            if model_ema is not None:
                ema_states.append({k: v.clone() for k, v in model_ema.module.state_dict().items()})
    finally:
        torch.cuda.synchronize = sync
    # their function makes three meters per epoch, in this order: batch time, data time, loss
    step_losses = [v for i, m in enumerate(rec.meters) if i % 3 == 2 for v in m.values]
    result = dict(config={k: v for k, v in cfg.items() if k != "script"}, script=cfg["script"], init=init, x=x,
                  y=y, orders=torch.stack(orders), step_loss=torch.tensor(step_losses, dtype=torch.float64),
                  epoch_loss=torch.tensor(epoch_loss, dtype=torch.float64),
                  kl_per_sample=torch.stack(kl_per_step), grads=torch.stack(rec.grads),
                  params=torch.stack(rec.params), final_state={k: v.clone() for k, v in
                                                                    model.state_dict().items()})
    if "train_logits" in extra:
        result["memory"] = torch.from_numpy(extra["train_logits"].copy())
    if ema_states:
        result["ema_states"] = ema_states
    return result


def main():
    repo = os.environ["REPO"]
    torch.set_num_threads(1)
    modules = {"ce": load_module("cross_entropy", show(repo, "timm/loss/cross_entropy.py")),
               "ema": load_module("model_ema", show(repo, "timm/utils/model_ema.py")),
               "metrics": load_module("metrics", show(repo, "timm/utils/metrics.py"))}
    import warnings
    warnings.filterwarnings("ignore", message="Implicit dimension choice")  # their F.softmax(x) without dim
    data = {"commit": COMMIT, "runs": {name: run(name, cfg, repo, modules) for name, cfg in RUNS.items()}}
    torch.save(data, OUT)
    for name, r in data["runs"].items():
        print(name, "steps", len(r["params"]), "final step loss", float(r["step_loss"][-1]))
    print("wrote", os.path.relpath(OUT))


if __name__ == "__main__":
    sys.exit(main())
