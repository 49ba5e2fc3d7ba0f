"""Study ``delta-pruning``: DARE's 1/(1-p) rescaling against DAREx-q and AdamR on a fine-tuned digits MLP.

DAREx (Deng et al., "DARE the Extreme: Revisiting Delta-Parameter Pruning For Fine-Tuned Models", arXiv
2410.09344; :mod:`gradwise.peft.darex`) claims that DARE (drop each delta parameter ``W - W0`` with rate ``p``,
rescale the kept ones by ``1/(1 - p)``) collapses at high ``p``, and that a tuned rescaling ``1/q`` (DAREx-q,
``q > 1 - p``) or a fine-tuning that keeps the delta small (AdamR-L2, then DARE) recovers the accuracy.

Model: scikit-learn's 8x8 digits (1,347 training, 450 test images; a stratified fifth of the training images is
held out as the validation split). MLP 64 -> ``hidden`` -> ``hidden`` -> 10 (ReLU). Pretrained with Adam
(lr 1e-3, batch 64, ``pre_epochs``) on the training images of digits 0-4 only, then fine-tuned on all ten
digits (the remaining training images) with Adam (lr ``ft_lr``, ``ft_epochs``) -- plain Adam for the DARE and
DAREx-q rows, AdamR with the L2 delta decay ``l2`` for the ``adamr-dare`` rows. The delta of every weight and
bias is pruned; each run draws one mask per ``p`` (the same for every method of that seed and ``p``).

Methods at each drop rate p in {0.5, 0.7, 0.9, 0.95, 0.99} (``p<p>-<method>``):

* ``dare`` -- rescale by 1/(1 - p) (PEFT's ``dare_linear`` on one model; :func:`darex_prune` with q = 1 - p);
* ``darex-an`` -- DAREx-q analytical: per layer ``q = mean`` over rows of :func:`darex_analytical_q` on
  ``c = ΔW ⊙ x̄`` (+ the Δbias column), ``x̄`` the layer's mean input in the fine-tuned model over the
  validation images (the authors' ``get_wx``); γ 0.95, stop 0.8 (their defaults), float32; η picked on the
  validation accuracy from 0.1, 0.2, ..., 1.0 (their ``find_optimal_param`` searches η, 0.1-0.7 in their
  README). Every layer gets its analytical q, the head too (theirs skips the classifier);
* ``darex-search`` -- DAREx-q searched: one q for all layers, the best validation accuracy over 1 - p and
  ``(1 - p)^(1 - i/8)``, i = 1..8 (a geometric grid from 1 - p to 1; :func:`darex_search_q`);
* ``adamr-dare`` -- fine-tuned with AdamR-L2, then DARE.

References (unranked): the pretrained model, the two fine-tuned models unpruned.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE, mean_ci_fields, rank_summaries
from gradwise.arena.study import Column, Run, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "CONFIG", "PS", "METHODS", "STUDY", "add_arguments", "run", "run_seed", "mlp"]

HELP = "fine-tuned digits MLP, delta pruning at p 0.5-0.99: DARE 1/(1-p) vs DAREx-q (analytical, searched) vs AdamR-L2"
PS = (0.5, 0.7, 0.9, 0.95, 0.99)
KINDS = ("dare", "darex-an", "darex-search", "adamr-dare")
METHODS = tuple(f"p{p:g}-{k}" for p in PS for k in KINDS)
REFERENCES = ("pretrained (0-4)", "fine-tuned (Adam)", "fine-tuned (AdamR-L2)")
SEARCH_STEPS = 8
ETAS = tuple(round(0.1 * i, 1) for i in range(1, 11))  # η grid of the analytical q


@dataclass(frozen=True)
class Config:
    test_fraction: float = 0.25
    val_fraction: float = 0.2
    split_seed: int = 0
    hidden: int = 256
    batch_size: int = 64
    pre_lr: float = 1e-3
    ft_lr: float = 1e-4
    pre_epochs: int = option(20, "pretraining epochs on digits 0-4", at_least=1)
    ft_epochs: int = option(20, "fine-tuning epochs on all digits", at_least=1)
    l2: float = option(0.1, "AdamR's L2 delta decay (weight_decay) for the adamr-dare rows", at_least=0.0)
    seeds: int = option(3, "seeds 0..N-1", at_least=1)


CONFIG = Config()


def mlp(hidden: int):
    from torch import nn

    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def _train(model, opt, x, y, epochs: int, batch_size: int, gen) -> None:
    import torch
    import torch.nn.functional as F

    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


def _accuracy(model, x, y) -> float:
    import torch

    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def _mean_inputs(model, x) -> list:
    """The mean input of each Linear layer of ``model`` over ``x`` (forward hooks)."""
    import torch
    from torch import nn

    linears = [m for m in model if isinstance(m, nn.Linear)]
    means: list = [None] * len(linears)
    hooks = [m.register_forward_hook(lambda _m, inp, _o, i=i: means.__setitem__(i, inp[0].mean(0)))
             for i, m in enumerate(linears)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return means


def _pruned(base, deltas, masks, qs):
    """A copy of ``base`` with ``W0 + Δ ⊙ keep / q`` in every parameter (``qs``: one q per parameter)."""
    import copy

    import torch

    model = copy.deepcopy(base)
    with torch.no_grad():
        for p, d, keep, q in zip(model.parameters(), deltas, masks, qs):
            p.add_(d * keep / q)
    return model


def run_seed(task, cfg: Config, seed: int) -> list[dict[str, Any]]:
    """Pretrain, fine-tune twice (Adam, AdamR-L2), then every method at every p: one row each (+ references)."""
    import copy

    import torch

    from gradwise.peft import AdamR, darex_analytical_q, darex_search_q

    t0 = time.perf_counter()
    x_tr, y_tr, x_val, y_val = task.x_train, task.y_train, task.x_val, task.y_val
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    pre = mlp(cfg.hidden)
    low = y_tr < 5
    _train(pre, torch.optim.Adam(pre.parameters(), lr=cfg.pre_lr), x_tr[low], y_tr[low], cfg.pre_epochs,
           cfg.batch_size, gen)
    w0 = [p.detach().clone() for p in pre.parameters()]
    ft = copy.deepcopy(pre)
    _train(ft, torch.optim.Adam(ft.parameters(), lr=cfg.ft_lr), x_tr, y_tr, cfg.ft_epochs, cfg.batch_size,
           torch.Generator().manual_seed(seed + 1))
    ftr = copy.deepcopy(pre)
    _train(ftr, AdamR(ftr.parameters(), w0, lr=cfg.ft_lr, weight_decay=cfg.l2), x_tr, y_tr, cfg.ft_epochs,
           cfg.batch_size, torch.Generator().manual_seed(seed + 1))
    deltas = [(p.detach() - r) for p, r in zip(ft.parameters(), w0)]
    deltas_r = [(p.detach() - r) for p, r in zip(ftr.parameters(), w0)]
    x_eval, y_eval = task.x_eval, task.y_eval

    def norm(ds) -> float:
        return float(torch.sqrt(sum((d.double() ** 2).sum() for d in ds)))

    rows = [{"method": REFERENCES[0], "seed": seed, "accuracy": _accuracy(pre, x_eval, y_eval), "delta_norm": 0.0},
            {"method": REFERENCES[1], "seed": seed, "accuracy": _accuracy(ft, x_eval, y_eval),
             "delta_norm": norm(deltas)},
            {"method": REFERENCES[2], "seed": seed, "accuracy": _accuracy(ftr, x_eval, y_eval),
             "delta_norm": norm(deltas_r)}]
    xbar = _mean_inputs(ft, x_val)
    for p in PS:
        mgen = torch.Generator().manual_seed(1000 * seed + int(round(p * 1000)))
        # the drop masks (1 = kept), as darex_prune's bernoulli(p) with 1 = dropped
        masks = [1 - torch.bernoulli(torch.full_like(d, p), generator=mgen) for d in deltas]
        dare = 1.0 - p
        # analytical q per layer (c = ΔW ⊙ x̄ with the Δbias column; the weight's q rescales its bias too),
        # η picked on the validation split as the authors' find_optimal_param
        best_an = (-1.0, None)
        for eta in ETAS:
            qs = []
            for li in range(len(deltas) // 2):
                dw, db = deltas[2 * li], deltas[2 * li + 1]
                c = torch.cat([dw * xbar[li][None, :], db[:, None]], dim=1)
                q = float(darex_analytical_q(c, p, eta=eta).mean())
                qs += [q, q]
            score = _accuracy(_pruned(pre, deltas, masks, qs), x_val, y_val)
            if score > best_an[0]:
                best_an = (score, qs)
        qs_an = best_an[1]
        grid = [dare ** (1 - i / SEARCH_STEPS) for i in range(1, SEARCH_STEPS + 1)]
        q_s, _ = darex_search_q(lambda q: _accuracy(_pruned(pre, deltas, masks, [q] * len(deltas)), x_val, y_val),
                                p, grid)
        models = {"dare": (_pruned(pre, deltas, masks, [dare] * len(deltas)), dare),
                  "darex-an": (_pruned(pre, deltas, masks, qs_an), sum(qs_an) / len(qs_an)),
                  "darex-search": (_pruned(pre, deltas, masks, [q_s] * len(deltas)), q_s),
                  "adamr-dare": (_pruned(pre, deltas_r, masks, [dare] * len(deltas)), dare)}
        for kind, (model, q) in models.items():
            rows.append({"method": f"p{p:g}-{kind}", "seed": seed, "p": p, "accuracy": _accuracy(model, x_eval, y_eval),
                         "q": q})
    wall = time.perf_counter() - t0
    for r in rows:
        r["wall_s"] = wall
    return rows


def _task(cfg: Config, methods: tuple[str, ...]):
    """The digits test split; a stratified ``val_fraction`` of the training images held out as validation."""
    from types import SimpleNamespace

    from sklearn.model_selection import train_test_split

    from gradwise.arena.tasks import digits

    t = digits(eval_split="test", test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)
    idx = list(range(len(t.y_train)))
    tr, va = train_test_split(idx, test_size=cfg.val_fraction, stratify=t.y_train.numpy(),
                              random_state=cfg.split_seed)
    return SimpleNamespace(x_train=t.x_train[tr], y_train=t.y_train[tr], x_val=t.x_train[va], y_val=t.y_train[va],
                           x_eval=t.x_eval, y_eval=t.y_eval)


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The references first (unranked), then each p's four methods ranked among themselves on accuracy."""
    keys = ("accuracy", "q", "wall_s")
    out = []
    for ref in REFERENCES:
        mine = [r for r in rows if r["method"] == ref]
        if mine:
            out.append({"method": ref, "runs": len(mine), "rank": None, "tied": False,
                        **mean_ci_fields(mine, ("accuracy", "delta_norm", "wall_s"))})
    for p in PS:
        part = []
        for m in (m for m in run.methods if m.startswith(f"p{p:g}-")):
            mine = [r for r in rows if r["method"] == m]
            if mine:
                part.append({"method": m, "runs": len(mine), **mean_ci_fields(mine, keys)})
        if part:
            out += rank_summaries(part, "accuracy")
    return out


def _plot(path: Path, summary: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gradwise.arena.report import wrap_title

    by = {s["method"]: s for s in summary}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, marker in zip(KINDS, "osD^"):
        pts = [(p, by[f"p{p:g}-{kind}"]) for p in PS if f"p{p:g}-{kind}" in by]
        if pts:
            ax.errorbar([str(p) for p, _ in pts], [s["accuracy_mean"] for _, s in pts],
                        yerr=[s["accuracy_ci"] or 0.0 for _, s in pts], marker=marker, capsize=3, label=kind)
    for ref, ls in zip(REFERENCES, (":", "--", "-.")):
        if ref in by:
            ax.axhline(by[ref]["accuracy_mean"], color="grey", ls=ls, lw=1, label=ref)
    ax.set(xlabel="drop rate p", ylabel="test accuracy (95% interval over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(wrap_title(title, 100), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"delta-pruning on digits: MLP 64-{cfg.hidden}-{cfg.hidden}-10 pretrained on 0-4 ({cfg.pre_epochs} ep), "
            f"fine-tuned on all ({cfg.ft_epochs} ep, Adam / AdamR-L2 {cfg.l2:g}), {cfg.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return ("each p ranked on its own, best first by test accuracy; q = the rescaling 1/q (mean over layers "
            "and seeds; DARE's is 1 - p); darex-search picks q on the validation split; references unranked, "
            "‖Δ‖ = the fine-tuning delta's Frobenius norm over all parameters; "
            f"{CI_NOTE}; {RANK_NOTE}")


def _cell(key: str, fmt: str):
    def cell(s: dict[str, Any]) -> str:
        return format(s[key + "_mean"], fmt) if key + "_mean" in s else ""
    return cell


STUDY = register_study(Study(
    name="delta-pruning", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    setup=_task, run_seed=lambda run, seed: run_seed(run.task, run.cfg, seed), summarize=_summarize,
    title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"), ci_column("test acc", "accuracy"),
             Column("q", _cell("q", ".3f")), Column("‖Δ‖", _cell("delta_norm", ".2f")), Column("s/seed", lambda s: f"{s['wall_s_mean']:.1f}")),
    write_files=lambda out, run, rows, summary, title: _plot(out / "delta_pruning.png", summary, title),
    outputs=("delta_pruning.png",), smoke=("--seeds", "1", "--pre-epochs", "1", "--ft-epochs", "1"),
))
# the study's entry points, as before the driver
add_arguments, run = STUDY.add_arguments, STUDY.run
