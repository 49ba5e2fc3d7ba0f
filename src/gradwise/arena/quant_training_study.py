"""Study ``quant-training``: the rest of issue 20's study 5 -- AdaPT against fixed int8 fixed-point training,
and PV-Tuning against straight-through estimation (STE) at 1 and 2 bits.

Claims: (a) AdaPT (Kummer et al., arXiv 2107.13490) trains in per-layer adaptive fixed point to about the
accuracy of fixed int8 training while using fewer bits on average; (b) PV-Tuning (Malinovskii et al., arXiv
2405.14852) fine-tunes a 1-2-bit codebook-quantized model to a better accuracy than straight-through
estimation. GAQAT (seed 201) is not here: its paper's text was not readable (docs/coverage_notes.md).

Data: scikit-learn's 8x8 digits (1,347 training, 450 test images; the split of ``digits_task``). Model: an
MLP 64 -> H -> H -> H -> 10 (ReLU).

* ``fixed-int8`` / ``adapt`` -- trained from scratch, ``epochs`` x batch ``batch_size``, by
  :class:`AdaPTSGD` (the authors' ``MSGD_FP``: unit-norm fixed-point gradients, SGD with momentum 0.9 on a
  float master, every parameter written back as its stochastic fixed-point quantization), all layers starting
  at word length 8 with 6 fractional bits (range [-2, 2), step 1/64). ``fixed-int8`` never switches
  (lookback larger than the run); ``adapt`` uses the controller's defaults (lookback 10..100, resolution
  1..100). Reported: test accuracy (weights as trained, i.e. on their fixed-point grid) and the mean word
  length over the weight matrices at the end.
* ``ste-1bit`` / ``pv-1bit`` / ``ste-2bit`` / ``pv-2bit`` -- a full-precision MLP (``pre_epochs`` of Adam,
  fixed by the seed) whose two middle weight matrices become :class:`ScalarCodebookWeight` at 1 or 2 bits
  (row scale, 1-D k-means codebook; the other layers stay full precision), then ``epochs`` of fine-tuning:
  STE (AQLM's straight-through mode: a float weight, forward through ``s * c[nearest(W / s)]`` with the
  identity gradient to ``W``; Adam on ``W``, codebook, scales and the other layers) or PV
  (:func:`pv_tuning_step` on each quantized matrix with the authors' defaults but ``lr`` for the P step; Adam on
  the other layers). Reported: test accuracy before and after fine-tuning.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gradwise.arena.noisy_labels_study import digits_task
from gradwise.arena.stats import CI_NOTE, RANK_NOTE
from gradwise.arena.study import Column, Run, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "METHODS", "STUDY", "mlp", "run_one"]

HELP = "digits MLP: AdaPT vs fixed int8 fixed-point training; PV-Tuning vs STE at 1 and 2 bits"
FIXED_POINT = ("fixed-int8", "adapt")
METHODS = ("fixed-int8", "adapt", "ste-1bit", "pv-1bit", "ste-2bit", "pv-2bit")


@dataclass(frozen=True)
class Config:
    hidden: int = 64
    batch_size: int = option(64, "minibatch size", at_least=1)
    lr: float = 1e-3
    sgd_lr: float = 0.05
    code_lr: float = 1e-2  # PV's V step (the authors' default)
    max_code_change: float = 0.01  # PV's subspace fraction (the authors' default)
    pre_epochs: int = option(20, "full-precision epochs before PV/STE fine-tuning", at_least=1)
    epochs: int = option(30, "training epochs (AdaPT/int8 from scratch; PV/STE fine-tuning)", at_least=1)
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    threads: int = 1


def mlp(cfg: Config):
    from torch import nn

    h = cfg.hidden
    return nn.Sequential(nn.Linear(64, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                         nn.Linear(h, 10))


MIDDLE = (2, 4)  # indices of the quantized layers in mlp()


def _nearest(x, codebook):
    """Index of the nearest codebook value of each entry of 1-D ``x``."""
    return (x[:, None] - codebook[None]).abs().argmin(-1)


def _accuracy(forward, task) -> float:
    import torch

    with torch.no_grad():
        return float((forward(task.x_eval).argmax(1) == task.y_eval).double().mean())


def _fixed_point(task, cfg: Config, method: str, seed: int, gen, row: dict[str, Any]) -> None:
    import torch
    import torch.nn.functional as F

    from gradwise.compression import AdaPTSGD

    model = mlp(cfg)
    steps = cfg.epochs * ((len(task.x_train) + cfg.batch_size - 1) // cfg.batch_size)
    lookback = dict(min_lookback=steps + 1, max_lookback=steps + 1) if method == "fixed-int8" else {}
    opt = AdaPTSGD(model.parameters(), lr=cfg.sgd_lr, momentum=0.9, wl=8, fl=6,
                   generator=torch.Generator().manual_seed(seed + 1000), **lookback)
    with torch.no_grad():  # start on the grid, as the optimizer writes every parameter back
        for i, p in enumerate(model.parameters()):
            p.copy_(opt.controller.quantize(i, p))
            opt.master[i].copy_(p)
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(task.x_train), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            loss = F.cross_entropy(model(task.x_train[idx]), task.y_train[idx])
            loss.backward()
            opt.step(loss.detach())
    row["accuracy"] = _accuracy(model, task)
    ctl = opt.controller
    mats = [i for i, p in enumerate(model.parameters()) if p.dim() > 1]
    row["mean_wl"] = sum(ctl.wl[i] for i in mats) / len(mats)
    row["mean_fl"] = sum(ctl.fl[i] for i in mats) / len(mats)


def _codebook(task, cfg: Config, method: str, seed: int, gen, row: dict[str, Any]) -> None:
    import torch
    import torch.nn.functional as F

    from gradwise.compression import ScalarCodebookWeight, pv_tuning_step

    fp = mlp(cfg)
    opt = torch.optim.Adam(fp.parameters(), lr=cfg.lr)
    for _ in range(cfg.pre_epochs):
        for idx in torch.randperm(len(task.x_train), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            F.cross_entropy(fp(task.x_train[idx]), task.y_train[idx]).backward()
            opt.step()
    row["fp_accuracy"] = _accuracy(fp, task)
    bits = int(method.split("-")[1][0])
    qws = {k: ScalarCodebookWeight.from_weight(fp[k].weight, bits) for k in MIDDLE}
    masters = {k: torch.nn.Parameter(fp[k].weight.detach().clone()) for k in MIDDLE}
    pv = method.startswith("pv")

    def weight(k):
        qw = qws[k]
        if pv:
            return qw().detach().requires_grad_(True)
        codes = _nearest((masters[k] / qw.scales).detach().reshape(-1), qw.codebook.detach())
        wq = qw.scales * qw.codebook[codes.view_as(qw.codes)]
        return wq + masters[k] - masters[k].detach()  # straight-through to the float weight

    def forward(x, ws=None):
        ws = ws or {k: weight(k) for k in MIDDLE}
        for k, layer in enumerate(fp):
            x = F.linear(x, ws[k], layer.bias) if k in ws else layer(x)
        return x

    row["q0_accuracy"] = _accuracy(lambda x: forward(x, {k: qws[k]() for k in MIDDLE}), task)
    others = [p for k, layer in enumerate(fp) for n, p in layer.named_parameters()
              if not (k in MIDDLE and n == "weight")]
    if pv:
        params = others
        states: dict[int, dict] = {k: {} for k in MIDDLE}
    else:
        params = others + list(masters.values()) + [p for qw in qws.values() for p in qw.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    changed = 0
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(task.x_train), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            ws = {k: weight(k) for k in MIDDLE}
            F.cross_entropy(forward(task.x_train[idx], ws), task.y_train[idx]).backward()
            opt.step()
            if pv:
                for k in MIDDLE:
                    changed += pv_tuning_step(qws[k], ws[k].grad, states[k], lr=cfg.lr, code_lr=cfg.code_lr,
                                              max_code_change=cfg.max_code_change)
    if not pv:  # the STE model's codes are those of its float weights
        with torch.no_grad():
            for k in MIDDLE:
                qw = qws[k]
                qw.codes.copy_(_nearest((masters[k] / qw.scales).reshape(-1), qw.codebook).view_as(qw.codes))
    row["accuracy"] = _accuracy(lambda x: forward(x, {k: qws[k]() for k in MIDDLE}), task)
    row["codes_changed"] = changed


def run_one(task, cfg: Config, method: str, seed: int) -> dict[str, Any]:
    import torch

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    row: dict[str, Any] = {"method": method, "seed": seed, "fp_accuracy": 0.0, "q0_accuracy": 0.0,
                           "mean_wl": 0.0, "mean_fl": 0.0, "codes_changed": 0}  # 0: not this method's group
    if method in FIXED_POINT:
        _fixed_point(task, cfg, method, seed, gen, row)
    else:
        _codebook(task, cfg, method, seed, gen, row)
    row["wall_s"] = time.perf_counter() - t0
    return row


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"quant-training on digits: MLP 64-{cfg.hidden}-{cfg.hidden}-{cfg.hidden}-10; AdaPT/int8 from scratch "
            f"({cfg.epochs} epochs, SGD {cfg.sgd_lr:g} m0.9, unit-norm fixed-point grads); PV/STE: {cfg.pre_epochs} "
            f"fp + {cfg.epochs} fine-tuning epochs, Adam {cfg.lr:g}, batch {cfg.batch_size}, {cfg.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return ("best first by test accuracy; compare fixed-int8 with adapt, and ste-Nbit with pv-Nbit (the two "
            "groups train differently: from scratch vs fine-tuning a pretrained MLP); wl/fl = mean word/fraction "
            "length of the weight matrices at the end (AdaPT rows); q0 = accuracy of the rounded codebook model "
            "before fine-tuning; fp = its full-precision start; codes = codes moved by the PV steps; "
            f"{CI_NOTE}; {RANK_NOTE}")


def _fmt(s: dict[str, Any], key: str, spec: str, fixed_point: bool) -> str:
    """The cell of ``key`` for the AdaPT/int8 rows (``fixed_point``) or the PV/STE rows, "-" for the other."""
    return format(s[key + "_mean"], spec) if (s["method"] in FIXED_POINT) == fixed_point else "-"


STUDY = register_study(Study(
    name="quant-training", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    setup=digits_task, run_one=lambda run, method, seed, _: run_one(run.task, run.cfg, method, seed),
    summary_keys=("accuracy", "q0_accuracy", "fp_accuracy", "mean_wl", "mean_fl", "codes_changed", "wall_s"),
    rank_on="accuracy", title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"), ci_column("test acc", "accuracy"),
             Column("q0", lambda s: _fmt(s, "q0_accuracy", ".4f", False)),
             Column("fp", lambda s: _fmt(s, "fp_accuracy", ".4f", False)),
             Column("wl", lambda s: _fmt(s, "mean_wl", ".2f", True)),
             Column("fl", lambda s: _fmt(s, "mean_fl", ".2f", True)),
             Column("codes", lambda s: _fmt(s, "codes_changed", ".0f", False)),
             Column("s/run", lambda s: f"{s['wall_s_mean']:.1f}")),
    outputs=(), smoke=("--seeds", "1", "--pre-epochs", "1", "--epochs", "1", "--batch-size", "512"),
))
