"""Study ``lr-sensitivity``: how flat is the final-loss-vs-learning-rate curve of a tiny transformer LM?

After Wortsman et al., "Small-scale proxies for large-scale Transformer training instabilities"
(arXiv 2309.14322, 2023) and Kim et al., "Peri-LN: Revisiting Normalization Layer in the Transformer
Architecture" (arXiv 2502.02732, 2025). A character-level :class:`gradwise.nn.TransformerLM` learns a
synthetic language (generated here: no download) at every learning rate of a log-spaced grid, in each
configuration:

* ``pre`` / ``post`` / ``peri`` -- the normalization placement (:class:`gradwise.nn.TransformerBlock`);
* ``+qk`` -- qk-layernorm in every attention (Wortsman et al. §3.1.1);
* ``+z`` -- the output-logit z-loss, ``1e-4 * log^2 Z`` per token, added to the cross-entropy
  (:func:`gradwise.losses.output_logit_z_loss`, Wortsman et al. §3.1.2).

Defaults run ``pre, pre+qk, pre+z, pre+qk+z, post, peri``; any placement with any suffix can be named
(``--configs peri+qk,post+qk+z``). Every run: AdamW (beta2 0.95) with independent weight decay
(:class:`gradwise.optim.AdamW`, Wortsman et al. §3.2.2), linear warm-up then cosine decay to 0.
Per configuration the study reports the held-out loss at each LR (the cross-entropy alone, the z-loss
left out), the paper's LR sensitivity (:func:`gradwise.metrics.lr_sensitivity`: mean over the grid of
``min(loss, l0) - best``, a diverged run counting as the loss at initialization ``l0``), the largest
attention logit seen during training (:class:`gradwise.metrics.AttentionLogitMonitor`, every
``monitor_every`` steps) and the variance of the hidden states across depth at the end of training
(:func:`gradwise.nn.hidden_state_stats`) at ``probe_lr``, for Peri-LN's claim.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import RANK_NOTE
from gradwise.arena.study import Column, Run, Selection, Study, option, register_study

__all__ = ["HELP", "Config", "CONFIG", "PLACEMENTS", "DEFAULT_CONFIGS", "STUDY", "synthetic_text", "TextTask",
           "held_out_loss", "parse_config", "lr_grid", "train_lm", "run_one", "add_arguments", "run"]

HELP = "tiny char-level LM over an LR grid: pre/post/peri-LN, +qk-layernorm, +z-loss (LR sensitivity, logit growth)"
PLACEMENTS = ("pre", "post", "peri")
_SUFFIXES = ("", "+qk", "+z", "+qk+z")
DEFAULT_CONFIGS = ("pre", "pre+qk", "pre+z", "pre+qk+z", "post", "peri")


@dataclass(frozen=True)
class Config:
    lr_min: float = option(1e-3, "smallest learning rate of the grid", at_least=1e-8)
    lr_max: float = option(1.0, "largest learning rate of the grid", at_least=1e-8)
    lrs: int = option(7, "learning rates, log-spaced from lr_min to lr_max", at_least=1)
    steps: int = option(120, "optimizer steps per run", at_least=1)
    probe_lr: float = option(1e-2, "the LR (nearest in the grid) whose hidden states are reported", at_least=1e-8)
    probe_lr_high: float = option(0.3, "a second, high LR (nearest in the grid) whose hidden states are reported",
                                  at_least=1e-8)
    seeds: int = option(1, "seeds 0..N-1", at_least=1)
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 4
    seq_len: int = 32
    batch_size: int = 16
    warmup_fraction: float = 0.1
    weight_decay: float = 1e-4   # independent: decay per step lr_t / lr_peak * 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    z_loss_coef: float = 1e-4    # PaLM's and the paper's
    monitor_every: int = 5
    train_chars: int = 200_000
    eval_windows: int = 64
    text_seed: int = 0
    threads: int = 1


CONFIG = Config()


def parse_config(name: str) -> tuple[str, bool, bool]:
    """``"peri+qk+z"`` -> ``("peri", True, True)``: placement, qk-layernorm, z-loss."""
    head, *flags = name.split("+")
    if head not in PLACEMENTS or len(set(flags)) != len(flags) or not set(flags) <= {"qk", "z"}:
        raise ValueError(f"Invalid config: {name!r} (accepted: one of {', '.join(PLACEMENTS)}, optionally followed "
                         "by +qk and/or +z, e.g. 'pre+qk+z')")
    return head, "qk" in flags, "z" in flags


def _all_configs() -> tuple[str, ...]:
    return tuple(p + s for p in PLACEMENTS for s in _SUFFIXES)


def lr_grid(cfg: Config) -> list[float]:
    """``cfg.lrs`` learning rates spaced evenly in log scale from ``lr_min`` to ``lr_max`` (the paper's grid is
    log-spaced; its expectation over LRs is then the plain mean over runs)."""
    if cfg.lr_max < cfg.lr_min:
        raise ValueError(f"Invalid lr_max: {cfg.lr_max:g} (accepted: >= lr_min={cfg.lr_min:g})")
    if cfg.lrs == 1:
        return [cfg.lr_min]
    a, b = math.log(cfg.lr_min), math.log(cfg.lr_max)
    return [float(f"{math.exp(a + (b - a) * i / (cfg.lrs - 1)):.3g}") for i in range(cfg.lrs)]


_NAMES = ("ann", "bob", "eve", "kim", "tom", "liz")
_ADJS = ("red", "big", "old", "shy", "wet", "odd", "tiny")
_NOUNS = ("cat", "dog", "owl", "fox", "hen", "cow", "rat", "bee")
_VERBS = ("sees", "likes", "bites", "finds", "hears", "feeds")


def synthetic_text(n_chars: int, seed: int) -> str:
    """A synthetic language, generated: sentences ``<name> says <clause> . <name> <ends> .`` whose clause is
    ``the [adj] noun verb the [adj] noun``, with up to two nested ``( clause )``. The second ``<name>``
    repeats the first (a copy the attention must find across the sentence) and brackets must close, so a
    model gains from looking back; about 30 distinct characters."""
    rng = random.Random(seed)

    def noun_phrase() -> str:
        adj = f"{rng.choice(_ADJS)} " if rng.random() < 0.5 else ""
        return f"the {adj}{rng.choice(_NOUNS)}"

    def clause(depth: int) -> str:
        s = f"{noun_phrase()} {rng.choice(_VERBS)} {noun_phrase()}"
        return s + f" ( {clause(depth + 1)} )" if depth < 2 and rng.random() < 0.3 else s

    out, n = [], 0
    while n < n_chars:
        name = rng.choice(_NAMES)
        s = f"{name} says {clause(0)} . {name} {rng.choice(('nods', 'smiles', 'waits'))} .\n"
        out.append(s)
        n += len(s)
    return "".join(out)[:n_chars]


class TextTask:
    """The encoded training text and a fixed set of held-out windows (from another seed of the generator).

    Reads ``cfg.train_chars``, ``cfg.text_seed``, ``cfg.eval_windows`` and ``cfg.seq_len``; the annealing-law
    study trains on the same task."""

    def __init__(self, cfg: Config) -> None:
        import torch

        train = synthetic_text(cfg.train_chars, cfg.text_seed)
        held = synthetic_text(cfg.eval_windows * (cfg.seq_len + 1), cfg.text_seed + 1)
        self.chars = sorted(set(train) | set(held))
        index = {c: i for i, c in enumerate(self.chars)}
        self.train = torch.tensor([index[c] for c in train], dtype=torch.int64)
        held_ids = torch.tensor([index[c] for c in held], dtype=torch.int64)
        self.eval = held_ids[:cfg.eval_windows * (cfg.seq_len + 1)].view(cfg.eval_windows, cfg.seq_len + 1)


def _setup(cfg: Config, methods: tuple[str, ...]) -> TextTask:
    lr_grid(cfg)
    for m in methods:
        parse_config(m)
    return TextTask(cfg)


def _build(task: TextTask, cfg: Config, config: str, seed: int):
    import torch

    from gradwise.nn import TransformerLM

    norm, qk, _ = parse_config(config)
    torch.manual_seed(seed)
    return TransformerLM(len(task.chars), cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.seq_len, norm=norm,
                         qk_norm=qk)


def held_out_loss(model, task: TextTask) -> float:
    """The mean next-character cross-entropy of ``model`` on the task's held-out windows (eval mode)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    with torch.no_grad():
        x, y = task.eval[:, :-1], task.eval[:, 1:]
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    model.train()
    return loss


def train_lm(task: TextTask, cfg: Config, config: str, lr: float, seed: int) -> dict[str, Any]:
    """One run: the model of ``config`` trained ``cfg.steps`` steps at peak LR ``lr``; its held-out loss
    (NaN if training diverged to a non-finite loss), the largest attention logit seen, the hidden-state
    variances ``x_0 .. x_L`` on the held-out windows at the end."""
    import torch
    import torch.nn.functional as F

    from gradwise.losses import output_logit_z_loss
    from gradwise.metrics import AttentionLogitMonitor
    from gradwise.nn import hidden_state_stats
    from gradwise.optim import AdamW

    _, _, z = parse_config(config)
    model = _build(task, cfg, config, seed)
    opt = AdamW(model.parameters(), lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                independent_weight_decay=True, peak_lr=lr)
    warm = max(1, round(cfg.warmup_fraction * cfg.steps))

    def factor(step: int) -> float:  # linear warm-up, then cosine decay to 0
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(seed)
    n = len(task.train) - cfg.seq_len - 1
    diverged = False
    with AttentionLogitMonitor(model, every=cfg.monitor_every) as mon:
        for _ in range(cfg.steps):
            starts = torch.randint(0, n, (cfg.batch_size,), generator=gen)
            window = torch.stack([task.train[s:s + cfg.seq_len + 1] for s in starts.tolist()])
            logits = model(window[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
            if z:
                loss = loss + output_logit_z_loss(logits, coef=cfg.z_loss_coef)
            if not torch.isfinite(loss):  # diverged: stop here, the run counts as l0 in the sensitivity
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        seen = [v for h in mon.history.values() for v in h if math.isfinite(v)]
    final = float("nan") if diverged else held_out_loss(model, task)
    variance = ([float("nan")] * (cfg.n_layers + 1) if diverged or not math.isfinite(final)
                else hidden_state_stats(model, task.eval[:16, :-1])["variance"].tolist())
    return {"loss": final, "max_logit": max(seen) if seen else float("nan"), "variance": variance}


def _key(lr: float) -> str:
    return f"loss@{lr:g}"


def run_one(run: Run, config: str, seed: int) -> dict[str, Any]:
    """Every LR of the grid for ``config`` at ``seed``: the row the leaderboard summarizes."""
    from gradwise.metrics import lr_sensitivity

    cfg, task = run.cfg, run.task
    t0 = time.perf_counter()
    lrs = lr_grid(cfg)
    l0 = held_out_loss(_build(task, cfg, config, seed), task)  # the loss at initialization
    runs = [train_lm(task, cfg, config, lr, seed) for lr in lrs]
    losses = [r["loss"] for r in runs]
    capped = [x if math.isfinite(x) and x < l0 else l0 for x in losses]
    best = min(range(len(lrs)), key=lambda i: capped[i])
    def nearest(lr: float) -> int:
        return min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i] / lr)))

    probe, high = nearest(cfg.probe_lr), nearest(cfg.probe_lr_high)
    var, var_hi = runs[probe]["variance"], runs[high]["variance"]
    return {"method": config, "seed": seed, "initial_loss": l0,
            "lr_sensitivity": float(lr_sensitivity(dict(zip(lrs, losses)), initial_loss=l0)),
            "best_loss": capped[best], "best_lr": lrs[best], "diverged": sum(not math.isfinite(x) for x in losses),
            "max_logit_top": runs[-1]["max_logit"], "probe_lr": lrs[probe],
            "var_first": var[1], "var_last": var[-1], "var_growth": var[-1] / var[1],
            "probe_lr_high": lrs[high], "var_last_hi": var_hi[-1], "var_growth_hi": var_hi[-1] / var_hi[1],
            **{_key(lr): x for lr, x in zip(lrs, losses)},
            "lrs": lrs, "losses": losses, "max_logits": [r["max_logit"] for r in runs], "variances": var,
            "variances_hi": var_hi,
            "wall_s": time.perf_counter() - t0}


_KEYS = ("lr_sensitivity", "best_loss", "max_logit_top", "var_last", "var_growth", "var_last_hi", "var_growth_hi",
         "wall_s")


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gradwise.arena.driver import summarize_rows

    keys = (*_KEYS, *(_key(lr) for lr in lr_grid(run.cfg)))
    return summarize_rows(STUDY, rows, run.methods, keys)


def _num(x: float, fmt: str = ".3f") -> str:
    return "div" if not math.isfinite(x) else format(x, fmt)


def _columns(run: Run) -> tuple[Column, ...]:
    lrs = lr_grid(run.cfg)
    lo = min(lrs, key=lambda lr: abs(math.log(lr / run.cfg.probe_lr)))
    hi = min(lrs, key=lambda lr: abs(math.log(lr / run.cfg.probe_lr_high)))
    return (Column("config", lambda s: s["method"], "left"),
            Column("LR sens.", lambda s: _num(s["lr_sensitivity_mean"])),
            *(Column(f"{lr:g}", (lambda k: lambda s: _num(s[k + "_mean"]))(_key(lr))) for lr in lrs),
            Column(f"max logit @{lrs[-1]:g}", lambda s: _num(s["max_logit_top_mean"], ".3g")),
            Column(f"Var(x_L) @{lo:g}", lambda s: _num(s["var_last_mean"], ".3g")),
            Column("/Var(x_1)", lambda s: _num(s["var_growth_mean"], ".3g")),
            Column(f"Var(x_L) @{hi:g}", lambda s: _num(s["var_last_hi_mean"], ".3g")),
            Column("/Var(x_1) ", lambda s: _num(s["var_growth_hi_mean"], ".3g")),
            Column("s", lambda s: f"{s['wall_s_mean']:.0f}"))


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"lr-sensitivity: char-level LM ({cfg.n_layers} layers, d={cfg.d_model}, {cfg.n_heads} heads) on a "
            f"synthetic language, {cfg.steps} steps × batch {cfg.batch_size} × {cfg.seq_len} chars, AdamW, "
            f"LR {cfg.lr_min:g}..{cfg.lr_max:g} ({cfg.lrs} log-spaced), {cfg.seeds} seed(s); held-out loss per LR")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    probe = min(lr_grid(cfg), key=lambda lr: abs(math.log(lr / cfg.probe_lr)))
    high = min(lr_grid(cfg), key=lambda lr: abs(math.log(lr / cfg.probe_lr_high)))
    return ("ranked on LR sensitivity (Wortsman et al. 2023: mean over the grid of min(loss, l0) - best loss, "
            "a diverged run 'div' counts as l0, the loss at initialization; lower is flatter); "
            f"{RANK_NOTE}; max logit: largest |q.k|/sqrt(d_h) over layers during training at the top LR; "
            f"Var(x_L), /Var(x_1): hidden-state variance at the last block's output (and its ratio to the first "
            f"block's) at LR {probe:g} and at LR {high:g}, the Peri-LN diagnostic")


def _plot(path: Path, rows: list[dict[str, Any]], methods: tuple[str, ...], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gradwise.arena.plots import curve_styles, wrap_title

    styles = curve_styles(methods)
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.8))
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        if not rs:
            continue
        st = {k: styles[m][k] for k in ("color", "ls", "marker")}
        lrs = np.array(rs[0]["lrs"])
        l0 = np.mean([r["initial_loss"] for r in rs])
        loss = np.array([[x if math.isfinite(x) else np.nan for x in r["losses"]] for r in rs])
        capped = np.where(np.isfinite(loss), np.minimum(loss, l0), l0).mean(0)
        axes[0].plot(lrs, capped, label=m, lw=1.4, **st)
        logits = np.nanmean(np.array([r["max_logits"] for r in rs], dtype=float), 0)
        axes[1].plot(lrs, logits, label=m, lw=1.4, **st)
        var = np.nanmean(np.array([r["variances"] for r in rs], dtype=float), 0)
        axes[2].plot(np.arange(len(var)), var, label=m, lw=1.4, **st)
        var_hi = np.nanmean(np.array([r["variances_hi"] for r in rs], dtype=float), 0)
        axes[3].plot(np.arange(len(var_hi)), var_hi, label=m, lw=1.4, **st)
    axes[0].axhline(l0, color="grey", lw=0.8, ls=":", label="loss at init (diverged runs)")
    axes[0].set(xscale="log", xlabel="peak learning rate", ylabel="held-out loss (capped at init)",
                title="final loss vs LR")
    axes[1].set(xscale="log", yscale="log", xlabel="peak learning rate", ylabel="max |attention logit|",
                title="attention logit growth (max over training)")
    for ax, key in ((axes[2], "probe_lr"), (axes[3], "probe_lr_high")):
        ax.set(yscale="log", xlabel="depth l (x_0 = block input)", ylabel="Var(x_l)",
               title=f"hidden-state variance across depth at LR {rows[0][key]:g}")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(wrap_title(title, 160), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


STUDY = register_study(Study(
    name="lr-sensitivity", help=HELP, description=__doc__, config=Config, methods=_all_configs,
    default_methods=lambda: DEFAULT_CONFIGS,
    select=Selection("configs", "configurations", default_text=", ".join(DEFAULT_CONFIGS)),
    setup=_setup, run_one=lambda run, method, seed, _: run_one(run, method, seed),
    summarize=_summarize, rank_on="lr_sensitivity", higher_is_better=False, title=_title, notes=_notes,
    columns=_columns, csv_skip=("lrs", "losses", "max_logits", "variances", "variances_hi"),
    write_files=lambda out, run, rows, summary, title: _plot(out / "lr_sensitivity.png", rows, run.methods, title),
    outputs=("lr_sensitivity.png",),
    smoke=("--seeds", "1", "--steps", "3", "--lrs", "2", "--configs", "pre,peri+qk+z"),
))
# the study's entry points, as the other studies have them
add_arguments, run = STUDY.add_arguments, STUDY.run
