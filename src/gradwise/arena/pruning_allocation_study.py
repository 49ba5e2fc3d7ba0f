"""Study ``pruning-allocation``: layer-wise sparsity by RD dynamic programming against uniform and global magnitude.

Xu et al. ("Efficient Joint Optimization of Layer-Adaptive Weight Pruning in Deep Neural Networks", ICCV 2023,
arXiv 2308.10438; :mod:`gradwise.compression.rd_prune`) choose each layer's pruning amount by minimising the sum
of per-layer output distortions under a weight budget, solved by dynamic programming over rate-distortion
curves (RD-DP). Their claims here: at equal sparsity RD-DP keeps more accuracy than uniform or global magnitude
pruning, and output distortion is (approximately) additive over layers -- the joint distortion of pruning
several layers is close to the sum of the distortions of pruning each alone, the assumption the DP rests on.

Model: scikit-learn's 8x8 digits (1,347 training, 450 test images), a CNN of five prunable layers: conv 1->16,
conv 16->32, max-pool, conv 32->32, max-pool (all 3x3, ReLU), linear 128->64, linear 64->10. Adam (lr 1e-3,
batch 64, ``epochs``). Then one-shot unstructured magnitude pruning of the five weights at each target sparsity
s in {0.5, 0.6, 0.7, 0.8, 0.9}, no fine-tuning after (the authors also fine-tune; not here, for time).

Methods (``s<s>-<method>``; amounts from :mod:`gradwise.compression.rd_prune`, applied by
:func:`prune_by_magnitude_`):

* ``uniform`` -- every layer at s;
* ``global`` -- the smallest ``|w|`` over all layers together;
* ``lamp`` -- LAMP scores with one global threshold (a cheap extra baseline of the authors' code);
* ``rd-dp`` -- :func:`allocate_sparsity_dp` on :func:`rd_curves` measured on ``calib`` training images at the
  amounts 0, 0.02, ..., 1 (one shot, no iterations).

Reported per run: test accuracy; the joint output distortion ``mean((f(x) - f_pruned(x))^2)`` on the
calibration images; the sum over layers of the distortion of pruning that layer alone at its amount; and their
ratio (1 = additive). LAPP (seed 104) is not built: its method text could not be read (docs/coverage_notes.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE, fmt_ci, mean_ci_fields, rank_summaries
from gradwise.arena.study import Column, Run, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "CONFIG", "SPARSITIES", "METHODS", "STUDY", "add_arguments", "run", "run_seed",
           "cnn", "prunable"]

HELP = "digits CNN pruned one-shot at 50-90% sparsity: uniform vs global magnitude vs LAMP vs RD-DP, and distortion additivity"
SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9)
KINDS = ("uniform", "global", "lamp", "rd-dp")
METHODS = tuple(f"s{s:g}-{k}" for s in SPARSITIES for k in KINDS)
KEYS = ("accuracy", "joint_distortion", "sum_distortion", "additivity", "wall_s")


@dataclass(frozen=True)
class Config:
    test_fraction: float = 0.25
    split_seed: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    grid: int = 50
    epochs: int = option(15, "training epochs of the dense CNN", at_least=1)
    calib: int = option(256, "calibration images for the RD curves and distortions", at_least=1)
    seeds: int = option(3, "seeds 0..N-1", at_least=1)


CONFIG = Config()


def cnn():
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def prunable(model) -> list:
    from torch import nn

    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _distortion(model, pruned, x) -> float:
    import torch

    with torch.no_grad():
        return float((model(x) - pruned(x)).double().pow(2).mean())


def run_seed(task, cfg: Config, seed: int) -> list[dict[str, Any]]:
    """Train one dense CNN, then every method at every sparsity on a copy of it: one row each."""
    import copy

    import torch
    import torch.nn.functional as F

    from gradwise.compression import (allocate_sparsity_dp, global_magnitude_amounts, lamp_amounts,
                                      prune_by_magnitude_, rd_curves, uniform_amounts)

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = cnn()
    x, y = task.x_train.reshape(-1, 1, 8, 8), task.y_train
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    x_cal = x[torch.randperm(len(x), generator=gen)[:cfg.calib]]
    x_ev, y_ev = task.x_eval.reshape(-1, 1, 8, 8), task.y_eval

    def accuracy(m) -> float:
        with torch.no_grad():
            return float((m(x_ev).argmax(1) == y_ev).double().mean())

    layers = prunable(model)
    amounts = [i / cfg.grid for i in range(cfg.grid + 1)]
    curves = rd_curves(model, layers, x_cal, amounts).double()
    nweights = [m.weight.numel() for m in layers]
    t_dense = time.perf_counter() - t0
    rows = [{"method": "dense", "seed": seed, "accuracy": accuracy(model), "sparsity": 0.0}]
    work = copy.deepcopy(model)  # pruned copies are this one, reloaded with the dense weights each time
    w_layers = prunable(work)
    dense = copy.deepcopy(model.state_dict())

    def accuracy_after(amt) -> float:
        work.load_state_dict(dense)
        prune_by_magnitude_(w_layers, amt.tolist())
        return accuracy(work)

    for s in SPARSITIES:
        allocs = {"uniform": uniform_amounts(layers, s), "global": global_magnitude_amounts(layers, s),
                  "lamp": lamp_amounts(layers, s), "rd-dp": allocate_sparsity_dp(curves, amounts, nweights, s)}
        for kind, amt in allocs.items():
            t1 = time.perf_counter()
            work.load_state_dict(dense)
            prune_by_magnitude_(w_layers, amt.tolist())
            kept = sum(int(m.weight.count_nonzero()) for m in w_layers)
            joint = _distortion(model, work, x_cal)
            # each layer pruned alone at its amount (the same rounding rule as the joint prune)
            alone = []
            for li in range(len(layers)):
                work.load_state_dict(dense)
                prune_by_magnitude_([w_layers[li]], [float(amt[li])])
                alone.append(_distortion(model, work, x_cal))
            total = sum(alone)
            rows.append({"method": f"s{s:g}-{kind}", "seed": seed, "sparsity": 1 - kept / sum(nweights),
                         "accuracy": accuracy_after(amt), "joint_distortion": joint, "sum_distortion": total,
                         "additivity": joint / total if total > 0 else float("nan"),
                         "amounts": [round(float(a), 4) for a in amt],
                         "wall_s": time.perf_counter() - t1 + t_dense / (len(SPARSITIES) * len(allocs))})
    rows[0]["wall_s"] = t_dense
    return rows


def _task(cfg: Config, methods: tuple[str, ...]):
    from gradwise.arena.tasks import digits

    return digits(eval_split="test", test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The dense model first (unranked), then each sparsity's methods ranked among themselves on accuracy."""
    dense = [r for r in rows if r["method"] == "dense"]
    out = []
    if dense:
        out.append({"method": "dense", "runs": len(dense), "rank": None, "tied": False,
                    **mean_ci_fields(dense, ("accuracy", "sparsity", "wall_s"))})
    for s in SPARSITIES:
        part = []
        for m in (m for m in run.methods if m.startswith(f"s{s:g}-")):
            mine = [r for r in rows if r["method"] == m]
            if mine:
                part.append({"method": m, "runs": len(mine), "amounts": mine[0]["amounts"],
                             **mean_ci_fields(mine, (*KEYS, "sparsity"))})
        if part:
            out += rank_summaries(part, "accuracy")
    return out


def _cell(key: str, fmt: str):
    def cell(s: dict[str, Any]) -> str:
        v = s.get(key + "_mean")
        return "" if v is None or v != v else format(v, fmt)
    return cell


def _plot(path: Path, rows: list[dict[str, Any]], summary: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gradwise.arena.report import wrap_title

    by = {s["method"]: s for s in summary}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for kind, marker in zip(KINDS, "osD^"):
        pts = [(s, by[f"s{s:g}-{kind}"]) for s in SPARSITIES if f"s{s:g}-{kind}" in by]
        axes[0].errorbar([s for s, _ in pts], [v["accuracy_mean"] for _, v in pts],
                         yerr=[v["accuracy_ci"] or 0.0 for _, v in pts], marker=marker, capsize=3, label=kind)
        mine = [r for r in rows if r["method"].endswith("-" + kind) and r["method"] != "dense"]
        axes[1].scatter([r["sum_distortion"] for r in mine], [r["joint_distortion"] for r in mine], marker=marker,
                        s=14, label=kind)
    if "dense" in by:
        axes[0].axhline(by["dense"]["accuracy_mean"], color="grey", ls="--", lw=1, label="dense")
    lim = [min(r["sum_distortion"] for r in rows if "sum_distortion" in r) or 1e-6,
           max(r["sum_distortion"] for r in rows if "sum_distortion" in r)]
    axes[1].plot(lim, lim, color="grey", lw=1, ls=":", label="joint = sum")
    axes[0].set(xlabel="target sparsity", ylabel="test accuracy (95% interval over seeds)")
    axes[1].set(xscale="log", yscale="log", xlabel="sum over layers of the distortion of pruning it alone",
                ylabel="joint distortion (all layers pruned)", title="additivity (one point per run)")
    for ax in axes:
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(wrap_title(title, 140), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"pruning-allocation on digits: CNN (3 convs, 2 linears; 5 prunable layers), Adam {cfg.lr:g}, "
            f"{cfg.epochs} epochs, one-shot magnitude pruning, RD curves on {cfg.calib} images, {cfg.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return ("each sparsity ranked on its own, best first by test accuracy, no fine-tuning after pruning; "
            "joint = mean squared change of the logits with every layer pruned, Σ alone = the sum of the changes "
            "of pruning each layer alone at its amount, joint/Σ = 1 when distortion is additive; "
            f"{CI_NOTE}; {RANK_NOTE}")


STUDY = register_study(Study(
    name="pruning-allocation", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    setup=_task, run_seed=lambda run, seed: run_seed(run.task, run.cfg, seed), summarize=_summarize,
    title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"), ci_column("test acc", "accuracy"),
             Column("joint", _cell("joint_distortion", ".3g")), Column("Σ alone", _cell("sum_distortion", ".3g")),
             Column("joint/Σ", lambda s: fmt_ci(s["additivity_mean"], s["additivity_ci"], 2) if "additivity_mean" in s else ""),
             Column("amounts", lambda s: " ".join(f"{a:.2f}" for a in s.get("amounts", ())), "left")),
    csv_skip=("amounts",),
    write_files=lambda out, run, rows, summary, title: _plot(out / "pruning_allocation.png", rows, summary, title),
    outputs=("pruning_allocation.png",), smoke=("--seeds", "1", "--epochs", "1", "--calib", "16"),
))
# the study's entry points, as before the driver
add_arguments, run = STUDY.add_arguments, STUDY.run
