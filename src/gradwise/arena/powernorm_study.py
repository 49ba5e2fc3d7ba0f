"""Study ``powernorm``: PowerNorm vs BatchNorm vs LayerNorm in a small post-norm transformer on padded sequences.

Task (generated, "histogram" tagging): sequences of ``vocab`` tokens with lengths drawn uniformly in
``[min_len, max_len]``, right-padded to ``max_len``; the label of each real token is how often it occurs in its
sequence (1, 2, ..., ``classes``-or-more), so every position must attend over its whole (unpadded) sequence. Loss and
accuracy count real tokens only; attention masks the padding (``key_padding_mask``).

Model: token + position embeddings, ``layers`` post-norm encoder layers (``x = N(x + Attn(x)); x = N(x + FFN(x))``,
fairseq's transformer as the paper's IWSLT runs use), a linear head. Only the norm ``N`` changes between methods:

* layernorm -- ``nn.LayerNorm`` per token;
* batchnorm -- ``nn.BatchNorm1d`` over the real tokens only (padding gathered out, as the authors' masked
  ``MaskSyncBatchNorm`` baseline does): batch mean and variance in training, running ones in eval;
* powernorm -- ``gradwise.nn.PowerNorm`` with the pad mask, ``group_num`` = heads and ``warmup_iters`` = the learning
  rate warm-up steps (the authors' ``NormSelect`` passes both so).

Adam (betas 0.9, 0.98, as the authors' IWSLT script), learning rate linear warm-up then inverse square root decay.
Reported: token accuracy on held-out sequences in eval mode (running statistics for BN and PN), training-mode
accuracy over the last tenth of the steps (the gap shows a train/eval mismatch of batch statistics), and the
relative fluctuation of the first norm's batch statistic around its running statistic (BN: variance, PN: quadratic
mean; the quantity of the paper's Fig. 2), averaged over the last half of training.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE
from gradwise.arena.study import Column, Run, Study, UsageError, ci_column, option, register_study

__all__ = ["HELP", "Config", "METHODS", "STUDY", "make_batch", "build_model", "run_one"]

HELP = "padded sequences, post-norm transformer: PowerNorm vs BatchNorm vs LayerNorm (Shen et al. 2020)"
METHODS = ("powernorm", "batchnorm", "layernorm")


@dataclass(frozen=True)
class Config:
    vocab: int = 8
    classes: int = 6               # counts 1..5 and "6 or more"
    min_len: int = option(4, "shortest sequence", at_least=1)
    max_len: int = option(32, "longest sequence (the padded length)", at_least=2)
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    d_ff: int = 128
    batch_size: int = option(32, "sequences per batch", at_least=2)
    steps: int = option(800, "optimizer steps per run", at_least=1)
    warmup: int = option(100, "learning-rate warm-up steps (also PowerNorm's warmup_iters)", at_least=0)
    lr: float = option(2e-3, "peak learning rate", at_least=1e-6)
    eval_every: int = 100
    eval_batches: int = 16
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    threads: int = 1


def make_batch(cfg: Config, batch: int, gen):
    """Tokens (B, T) long, labels (B, T) long (-100 at padding) and the pad mask (B, T) True at padding."""
    import torch

    lengths = torch.randint(cfg.min_len, cfg.max_len + 1, (batch,), generator=gen)
    pad = torch.arange(cfg.max_len)[None, :] >= lengths[:, None]
    tokens = torch.randint(0, cfg.vocab, (batch, cfg.max_len), generator=gen).masked_fill(pad, cfg.vocab)
    same = (tokens[:, :, None] == tokens[:, None, :]) & ~pad[:, None, :]
    labels = (same.sum(-1).clamp(max=cfg.classes) - 1).masked_fill(pad, -100)
    return tokens, labels, pad


def build_model(cfg: Config, method: str):
    import torch
    from torch import nn

    from gradwise.nn import PowerNorm

    class MaskedBatchNorm(nn.Module):
        """BatchNorm1d over the real tokens of (T, B, C); padded positions give 0."""

        def __init__(self, d):
            super().__init__()
            self.bn = nn.BatchNorm1d(d)

        def forward(self, x, pad):
            valid = ~pad.t()
            y = x.new_zeros(x.shape)
            y[valid] = self.bn(x[valid])
            return y

    class TokenLayerNorm(nn.LayerNorm):
        def forward(self, x, pad):
            return super().forward(x)

    def norm():
        if method == "powernorm":
            pn = PowerNorm(cfg.d_model, group_num=cfg.heads, warmup_iters=cfg.warmup)
            return _Call(pn)
        return MaskedBatchNorm(cfg.d_model) if method == "batchnorm" else TokenLayerNorm(cfg.d_model)

    class _Call(nn.Module):
        def __init__(self, pn):
            super().__init__()
            self.pn = pn

        def forward(self, x, pad):
            return self.pn(x, pad_mask=pad)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(cfg.d_model, cfg.heads)
            self.ff = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.ReLU(), nn.Linear(cfg.d_ff, cfg.d_model))
            self.n1, self.n2 = norm(), norm()

        def forward(self, x, pad):
            x = self.n1(x + self.attn(x, x, x, key_padding_mask=pad, need_weights=False)[0], pad)
            return self.n2(x + self.ff(x), pad)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(cfg.vocab + 1, cfg.d_model)
            self.pos = nn.Parameter(torch.randn(cfg.max_len, 1, cfg.d_model) * 0.02)
            self.layers = nn.ModuleList(Layer() for _ in range(cfg.layers))
            self.head = nn.Linear(cfg.d_model, cfg.classes)

        def forward(self, tokens, pad):
            x = self.tok(tokens.t()) + self.pos[: tokens.shape[1]]       # (T, B, C)
            for layer in self.layers:
                x = layer(x, pad)
            return self.head(x).transpose(0, 1)                           # (B, T, classes)

    return Net()


def _running_statistic(model, method: str):
    """A copy of the first layer's first norm's running statistic (None for LayerNorm)."""
    n1 = model.layers[0].n1
    if method == "batchnorm":
        return n1.bn.running_var.detach().clone()
    if method == "powernorm":
        return n1.pn.running_phi.detach().flatten().clone()
    return None


def _first_norm_fluctuation(model, method: str, x, pad, running) -> float | None:
    """|batch statistic - running statistic| / running statistic, channel mean, of the first layer's first norm
    on input ``x`` (the paper's Fig. 2 quantity, relative), ``running`` taken before this batch updated it
    (:func:`_running_statistic`). BatchNorm's batch variance is the unbiased one, the one its running
    variance averages. None for LayerNorm (no batch statistic)."""
    import torch

    valid = ~pad.t()
    if method == "batchnorm":
        xv = x[valid]
        batch = xv.var(0, unbiased=True)
    elif method == "powernorm":
        g = model.layers[0].n1.pn.group_num
        xg = x.reshape(*x.shape[:2], g, -1)
        xs = (xg * torch.rsqrt((xg * xg).mean(-1, keepdim=True) + 1e-5)).reshape(x.shape)
        batch = (xs[valid] ** 2).mean(0)
    else:
        return None
    return float(((batch - running).abs() / running).mean())


def run_one(cfg: Config, method: str, seed: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(cfg, method)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
    warm = max(cfg.warmup, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s + 1 < warm else math.sqrt(warm / (s + 1)))
    gen = torch.Generator().manual_seed(1000 + seed)
    eval_gen = torch.Generator().manual_seed(999_999)  # one held-out set for every method and seed
    eval_set = [make_batch(cfg, cfg.batch_size, eval_gen) for _ in range(cfg.eval_batches)]
    captured = {}
    # the norm's input, and its running statistic before the batch updates it
    hook = model.layers[0].n1.register_forward_pre_hook(
        lambda m, args: captured.update(x=args, running=_running_statistic(model, method)))

    def evaluate() -> float:
        model.eval()
        right = total = 0
        with torch.no_grad():
            for tokens, labels, pad in eval_set:
                pred = model(tokens, pad).argmax(-1)
                keep = labels >= 0
                right += int((pred[keep] == labels[keep]).sum())
                total += int(keep.sum())
        model.train()
        return right / total

    losses, curve, fluct, train_right, train_total = [], [], [], 0, 0
    for step in range(cfg.steps):
        tokens, labels, pad = make_batch(cfg, cfg.batch_size, gen)
        logits = model(tokens, pad)
        loss = F.cross_entropy(logits.reshape(-1, cfg.classes), labels.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step >= cfg.steps - max(1, cfg.steps // 10):
            keep = labels >= 0
            train_right += int((logits.argmax(-1)[keep] == labels[keep]).sum())
            train_total += int(keep.sum())
        if step >= cfg.steps // 2:
            with torch.no_grad():
                f = _first_norm_fluctuation(model, method, captured["x"][0].detach(), pad, captured["running"])
            if f is not None:
                fluct.append(f)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            curve.append((step + 1, evaluate()))
    hook.remove()
    final = curve[-1][1]
    finite = all(math.isfinite(v) for v in losses)
    tail = losses[-max(1, cfg.steps // 10):]
    return {"method": method, "seed": seed, "eval_acc": final, "train_acc": train_right / max(train_total, 1),
            "train_loss": sum(tail) / len(tail) if finite else float("nan"),
            "fluctuation": sum(fluct) / len(fluct) if fluct else None,  # None: LayerNorm has no batch statistic
            "curve": curve, "losses": losses, "wall_s": time.perf_counter() - t0}


def _plot(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gradwise.arena.report import curve_styles, wrap_title

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    styles = curve_styles(METHODS)
    for m in METHODS:
        mine = [r for r in rows if r["method"] == m]
        if not mine:
            continue
        st = styles[m]
        steps = [s for s, _ in mine[0]["curve"]]
        acc = np.array([[a for _, a in r["curve"]] for r in mine]).mean(0)
        ax1.plot(steps, acc, color=st["color"], ls=st["ls"], marker=st["marker"], label=m, lw=1.3)
        loss = np.array([r["losses"] for r in mine]).mean(0)
        k = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax2.plot(np.arange(len(smooth)) + k, smooth, color=st["color"], ls=st["ls"], label=m, lw=1.3)
    ax1.set_xlabel("step")
    ax1.set_ylabel("held-out token accuracy (eval mode, mean over seeds)")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("step")
    ax2.set_ylabel("training loss (moving average, mean over seeds)")
    ax2.set_yscale("log")
    ax2.grid(True, alpha=0.3)
    fig.suptitle(wrap_title(title, 120), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The driver's summary, plus the fluctuation's mean and interval for the norms that have a batch statistic."""
    from gradwise.arena.driver import summarize_rows
    from gradwise.arena.stats import mean_ci_fields

    out = summarize_rows(STUDY, rows, run.methods)
    for s in out:
        mine = [r for r in rows if r["method"] == s["method"] and r["fluctuation"] is not None]
        s.update(mean_ci_fields(mine, ("fluctuation",)) if mine else
                 {"fluctuation_mean": None, "fluctuation_std": None, "fluctuation_ci": None})
    return out


def _fluct_cell(s: dict[str, Any]) -> str:
    return "—" if s["fluctuation_mean"] is None else ci_column("", "fluctuation", 3).cell(s)


def _check(cfg: Config, methods: tuple[str, ...]) -> None:
    if cfg.min_len > cfg.max_len:
        raise UsageError(f"Invalid --min-len: {cfg.min_len} (accepted: at most --max-len, {cfg.max_len})")


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    c = run.cfg
    return (f"powernorm: histogram tagging, lengths {c.min_len}-{c.max_len} padded to {c.max_len}, "
            f"{c.layers}-layer post-norm transformer d={c.d_model}, {c.steps} steps x batch {c.batch_size}, "
            f"lr {c.lr:g} (warm-up {c.warmup}), {c.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return ("best first by held-out token accuracy in eval mode (BN and PN with running statistics); train acc: "
            "training mode, last tenth of the steps; fluctuation: mean relative distance of the first norm's batch "
            f"statistic from its running one over the second half (BN: variance, PN: quadratic mean); {CI_NOTE}; "
            f"{RANK_NOTE} (ranked on eval accuracy)")


STUDY = register_study(Study(
    name="powernorm", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    setup=_check, run_one=lambda run, method, seed, _: run_one(run.cfg, method, seed),
    summary_keys=("eval_acc", "train_acc", "train_loss", "wall_s"), rank_on="eval_acc", summarize=_summarize,
    title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"), ci_column("eval token acc", "eval_acc"),
             ci_column("train acc", "train_acc"), ci_column("train loss", "train_loss"),
             Column("fluctuation", _fluct_cell), Column("s/run", lambda s: f"{s['wall_s_mean']:.1f}")),
    csv_skip=("curve", "losses"),
    write_files=lambda out, run, rows, summary, title: _plot(out / "powernorm_curves.png", rows, title),
    outputs=("powernorm_curves.png",),
    smoke=("--seeds", "1", "--steps", "6", "--warmup", "2", "--max-len", "6", "--batch-size", "4"),
))
