"""Study ``bit-widths``: one model for weights at 8, 6, 4 and 2 bits against a separate QAT model per width.

Claim (Double Rounding, Huang et al., "Nearly Lossless Adaptive Bit Switching", arXiv 2502.01199, and EQ-Net,
Xu et al., arXiv 2308.07650; issue 20, study 5): a model trained once for several bit widths is, at each width,
near a model quantization-aware-trained for that width alone.

Model: scikit-learn's 8x8 digits (1,347 training, 450 test images; the split of ``digits_task``), an MLP 64 -> H -> H -> H -> 10 (ReLU)
whose first and last layers stay full precision (as both papers) and whose two middle layers have quantized
weights (inputs stay full precision: W{8,6,4,2}A32, since our Double Rounding has no activation quantizer).
Every run starts from the same full-precision model (``pre_epochs`` of Adam, fixed by the seed), then
``epochs`` of quantization-aware training, Adam (lr) on weights and quantization parameters, batch 64:

* ``separate`` -- four models, each trained at one width alone (a one-width :class:`DoubleRoundingQuantizer`,
  i.e. symmetric per-tensor LSQ without gradient scale);
* ``dr-joint`` -- Double Rounding, one scale for all widths; per batch, for b = 8, 6, 4, 2: forward at b,
  backward, one step of the weight optimizer and one of the scale optimizer (the paper's Algorithm A.2), scale
  learning rate = lr;
* ``dr-joint-alrs`` -- the same with the scale learning rate of eq. 6 (:func:`alrs_lr_scale` on the layers'
  scale gradients at that width); the run counts the steps where eq. 6 came out negative;
* ``eqnet-joint`` -- :class:`ElasticQuantLinear` (own step size per width; symmetric per-tensor weights, the
  other elastic dimensions fixed): per batch WDR (the authors' rates 0.015 / 1.0) on the two quantized
  weights, then GPG over the sandwich 8 bits, a random width of 6 or 4, 2 bits, one backward, gradients
  clipped at 1 by value (the authors' config), one step.

Reported per run: test accuracy at 8, 6, 4 and 2 bits, their mean, and the full-precision starting accuracy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gradwise.arena.noisy_labels_study import digits_task
from gradwise.arena.stats import CI_NOTE, RANK_NOTE
from gradwise.arena.study import Column, Run, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "METHODS", "WIDTHS", "STUDY", "mlp", "run_one"]

HELP = "digits MLP, weights at 8/6/4/2 bits: Double Rounding (+ALRS) and EQ-Net trained once vs separate QAT per width"
METHODS = ("separate", "dr-joint", "dr-joint-alrs", "eqnet-joint")
WIDTHS = (8, 6, 4, 2)


@dataclass(frozen=True)
class Config:
    hidden: int = 64
    batch_size: int = option(64, "minibatch size", at_least=1)
    lr: float = 1e-3
    pre_epochs: int = option(10, "full-precision epochs before quantization", at_least=1)
    epochs: int = option(10, "quantization-aware epochs per run", at_least=1)
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    threads: int = 1


def mlp(cfg: Config, kind: str, widths=WIDTHS):
    """``kind``: ``"fp"`` (plain), ``"dr"`` (Double Rounding over ``widths``) or ``"eq"`` (EQ-Net layers)."""
    import torch.nn.functional as F
    from torch import nn

    from gradwise.compression import DoubleRoundingQuantizer, ElasticQuantLinear

    class DRLinear(nn.Linear):
        def __init__(self, n_in, n_out):
            super().__init__(n_in, n_out)
            self.quantizer = DoubleRoundingQuantizer(widths)

        def forward(self, x):
            return F.linear(x, self.quantizer(self.weight), self.bias)

    def middle():
        if kind == "dr":
            return DRLinear(cfg.hidden, cfg.hidden)
        if kind == "eq":
            layer = ElasticQuantLinear(cfg.hidden, cfg.hidden, bits=widths, act_bits=(8,))
            layer.quantize_input = False
            return layer
        return nn.Linear(cfg.hidden, cfg.hidden)

    return nn.Sequential(nn.Linear(64, cfg.hidden), nn.ReLU(), middle(), nn.ReLU(), middle(), nn.ReLU(),
                         nn.Linear(cfg.hidden, 10))


def _set_width(model, b: int) -> None:
    for m in model.modules():
        if hasattr(m, "set_bits"):
            m.set_bits(b)
        elif hasattr(m, "set_config"):
            m.set_config(b, symmetric=True, channel_wise=False)


def _accuracy(model, task) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return float((model(task.x_eval).argmax(1) == task.y_eval).double().mean())


def _quantized_copy(fp, cfg: Config, kind: str, widths, task):
    model = mlp(cfg, kind, widths)
    model.load_state_dict(fp.state_dict(), strict=False)
    _set_width(model, max(widths))
    model(task.x_train[:256])  # initialise the scales from the full-precision weights
    return model


def run_one(task, cfg: Config, method: str, seed: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from gradwise.compression import alrs_lr_scale, gpg_loss, wdr_loss

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    fp = mlp(cfg, "fp")
    opt = torch.optim.Adam(fp.parameters(), lr=cfg.lr)
    for _ in range(cfg.pre_epochs):
        for idx in torch.randperm(len(task.x_train), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            F.cross_entropy(fp(task.x_train[idx]), task.y_train[idx]).backward()
            opt.step()
    row: dict[str, Any] = {"method": method, "seed": seed, "fp_accuracy": _accuracy(fp, task), "negative_lr": 0}

    def batches():
        return torch.randperm(len(task.x_train), generator=gen).split(cfg.batch_size)

    def loss_at(model, idx, b):
        _set_width(model, b)
        model.train()
        return F.cross_entropy(model(task.x_train[idx]), task.y_train[idx])

    if method == "separate":
        for b in WIDTHS:
            model = _quantized_copy(fp, cfg, "dr", (b,), task)
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
            for _ in range(cfg.epochs):
                for idx in batches():
                    opt.zero_grad()
                    loss_at(model, idx, b).backward()
                    opt.step()
            row[f"acc_w{b}"] = _accuracy(model, task)
    elif method.startswith("dr-joint"):
        model = _quantized_copy(fp, cfg, "dr", WIDTHS, task)
        scales = [p for n, p in model.named_parameters() if n.endswith("quantizer.scale")]
        weights = [p for n, p in model.named_parameters() if not n.endswith("quantizer.scale")]
        opt_w, opt_s = torch.optim.Adam(weights, lr=cfg.lr), torch.optim.Adam(scales, lr=cfg.lr, weight_decay=0.0)
        for _ in range(cfg.epochs):
            for idx in batches():
                for b in WIDTHS:
                    opt_w.zero_grad()
                    opt_s.zero_grad()
                    loss_at(model, idx, b).backward()
                    if method == "dr-joint-alrs":
                        lr_b = alrs_lr_scale(cfg.lr, [p.grad for p in scales], b, max_bits=WIDTHS[0])
                        row["negative_lr"] += lr_b < 0
                        opt_s.param_groups[0]["lr"] = lr_b
                    opt_w.step()
                    opt_s.step()
        for b in WIDTHS:
            _set_width(model, b)
            row[f"acc_w{b}"] = _accuracy(model, task)
    else:
        model = _quantized_copy(fp, cfg, "eq", WIDTHS, task)
        quantized = [m.weight for m in model.modules() if hasattr(m, "set_config")]
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        for _ in range(cfg.epochs):
            for idx in batches():
                opt.zero_grad()
                middle = WIDTHS[1 + int(torch.randint(0, len(WIDTHS) - 2, (1,), generator=gen))]
                logits = []
                for b in (WIDTHS[0], middle, WIDTHS[-1]):
                    _set_width(model, b)
                    model.train()
                    logits.append(model(task.x_train[idx]))
                loss = gpg_loss(logits, task.y_train[idx]) + wdr_loss(quantized, kurt_weight=0.015)
                loss.backward()
                torch.nn.utils.clip_grad_value_(model.parameters(), 1.0)
                opt.step()
        for b in WIDTHS:
            _set_width(model, b)
            row[f"acc_w{b}"] = _accuracy(model, task)
    row["acc_mean"] = sum(row[f"acc_w{b}"] for b in WIDTHS) / len(WIDTHS)
    row["wall_s"] = time.perf_counter() - t0
    return row


def _plot(path, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gradwise.arena.report import wrap_title

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method in METHODS:
        vals = np.array([[r[f"acc_w{b}"] for b in WIDTHS] for r in rows if r["method"] == method])
        if len(vals):
            ax.errorbar(WIDTHS, vals.mean(0), yerr=vals.std(0), marker="o", capsize=3, label=method)
    ax.set_xlabel("weight bits")
    ax.set_ylabel("test accuracy")
    ax.set_xticks(WIDTHS)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(wrap_title(title, 90), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"bit-widths on digits: MLP 64-{cfg.hidden}-{cfg.hidden}-{cfg.hidden}-10, two middle layers W8/6/4/2 "
            f"A32, Adam {cfg.lr:g}, {cfg.pre_epochs} fp + {cfg.epochs} QAT epochs x batch {cfg.batch_size}, "
            f"{cfg.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return ("best first by the mean accuracy over the four widths; separate = four models, one per width; "
            "neg lr = steps of dr-joint-alrs where eq. 6 gave a negative scale learning rate (used as given); "
            f"fp = the shared full-precision start; {CI_NOTE}; {RANK_NOTE} (ranked on the mean)")


STUDY = register_study(Study(
    name="bit-widths", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    setup=digits_task, run_one=lambda run, method, seed, _: run_one(run.task, run.cfg, method, seed),
    summary_keys=tuple(f"acc_w{b}" for b in WIDTHS) + ("acc_mean", "fp_accuracy", "negative_lr", "wall_s"),
    rank_on="acc_mean", title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"),
             *(ci_column(f"W{b}", f"acc_w{b}") for b in WIDTHS), ci_column("mean", "acc_mean"),
             Column("fp", lambda s: f"{s['fp_accuracy_mean']:.4f}"),
             Column("neg lr", lambda s: f"{s['negative_lr_mean']:.0f}"),
             Column("s/run", lambda s: f"{s['wall_s_mean']:.1f}")),
    write_files=lambda out, run, rows, summary, title: _plot(out / "widths.png", rows, title),
    outputs=("widths.png",), smoke=("--seeds", "1", "--pre-epochs", "1", "--epochs", "1", "--batch-size", "512"),
))
