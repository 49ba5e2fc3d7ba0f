"""Study ``sharpness``: SAF and MESA against SGD and SAM on digits with symmetric label noise.

SAF's claim (Du et al., NeurIPS 2022, arXiv 2205.14083): its trajectory loss finds minima as flat as SAM's, and
generalizes as well, at essentially the cost of the base optimizer (SAM needs a second forward-backward pass per
step). Here an MLP learns scikit-learn's digits from training labels of which a seeded ``noise`` fraction is
replaced by another class drawn uniformly (the test labels stay clean), for ``epochs`` epochs of shuffled
minibatches, with SGD (momentum 0.9, weight decay 5e-4, cosine learning rate) as the base optimizer of every
method, as in the paper's setup:

* ``sgd``: cross-entropy only;
* ``sam``: SAM (Foret et al. 2021) around the same SGD, ``rho`` = 0.05; a minimal implementation here
  (:func:`sam_step`, checked against pytorch_optimizer's ``SAM`` in the tests);
* ``saf``: cross-entropy + :class:`gradwise.losses.SAFLoss`, given each batch's training-set indices (the
  batches are slices of a seeded permutation of the indices, the same for every method of a seed; with a
  ``DataLoader``, :class:`gradwise.data_weighting.IndexedDataset` yields them, but its per-sample collation
  would cost more than this MLP's step and blur the timing);
* ``mesa``: cross-entropy + :class:`gradwise.losses.MESALoss`, its EMA updated after every step.

SAF's and MESA's hyperparameters are the authors' (λ 0.3 / 0.8, temperature 5, SAF's lag Ẽ = 2 epochs, start
after epoch 5), except MESA's EMA decay: theirs, 0.9998 per step, is a horizon of about 4 ImageNet epochs
(~1250 steps each with their batch of 1024); here an epoch has ~21 steps, so the decay is scaled to the same
horizon in epochs: ``1 - 1 / (mesa_horizon * steps_per_epoch)``.

Reported (mean and 95% interval over seeds): clean test accuracy at the end, the top eigenvalue of the
training-loss Hessian at the end (power iteration, :func:`gradwise.metrics.hessian_top_eigenvalue`, on the
cross-entropy of a fixed subset of the noisy training set; lower is flatter), the fit to the noisy training
labels (memorization), and the training wall time per epoch (the median over the run's epochs, so that a
stall of a shared machine does not count; evaluation and the Hessian excluded).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.noisy_labels_study import digits_task, noisy_seed_labels
from gradwise.arena.stats import CI_NOTE, RANK_NOTE
from gradwise.arena.study import Column, Run, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "METHODS", "STUDY", "sam_step", "train_one"]

HELP = "SAF and MESA vs SGD and SAM on digits with label noise: accuracy, top Hessian eigenvalue, time per epoch"
METHODS = ("sgd", "sam", "saf", "mesa")


@dataclass(frozen=True)
class Config:
    noise: float = option(0.2, "symmetric label noise rate of the training labels", at_least=0.0, below=0.9)
    epochs: int = option(60, "training epochs", at_least=1)
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    batch_size: int = option(64, "minibatch size", at_least=1)
    lr: float = option(0.05, "peak learning rate of SGD (cosine decay to 0)", at_least=1e-6)
    rho: float = option(0.05, "SAM's neighbourhood radius", at_least=0.0)
    saf_coef: float = option(0.3, "SAF's lambda", at_least=0.0)
    mesa_coef: float = option(0.8, "MESA's lambda", at_least=0.0)
    lag: int = option(2, "SAF's lag (epochs)", at_least=1)
    start_epoch: int = option(5, "SAF/MESA: the loss is on after this epoch", at_least=0)
    temperature: float = option(5.0, "SAF/MESA temperature", at_least=1e-6)
    mesa_horizon: float = option(4.0, "MESA's EMA horizon in epochs (decay = 1 - 1/(horizon * steps/epoch))",
                                 at_least=1e-3)
    hessian_samples: int = option(512, "training samples in the Hessian's loss", at_least=1)
    hessian_iters: int = option(100, "power iterations at most", at_least=1)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    hidden: tuple[int, ...] = (128, 128)
    threads: int = 1


def sam_step(model, params, base, loss_of, rho: float):
    """One SAM step (Foret et al. 2021): the gradient at ``w + rho g / |g|``, applied at ``w`` by ``base``.

    ``loss_of()`` computes the batch loss; returns the loss at ``w``. The perturbation and its undoing (the
    weights are restored by copy) follow pytorch_optimizer's ``SAM`` (``perturb_eps=1e-12``).
    """
    import torch

    base.zero_grad(set_to_none=True)
    loss = loss_of()
    loss.backward()
    with torch.no_grad():
        grads = [p.grad for p in params]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) + 1e-12
        old = [p.detach().clone() for p in params]
        torch._foreach_add_(params, torch._foreach_mul(grads, rho / norm))
    base.zero_grad(set_to_none=True)
    loss_of().backward()
    with torch.no_grad():
        torch._foreach_copy_(params, old)
    base.step()
    return loss


def train_one(task, y_noisy, cfg: Config, method: str, seed: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from gradwise.arena.tasks import mlp
    from gradwise.losses import MESALoss, SAFLoss
    from gradwise.metrics import hessian_top_eigenvalue

    torch.manual_seed(seed)
    model = mlp(task.num_features, task.num_classes, cfg.hidden)
    params = [p for p in model.parameters()]
    n = len(y_noisy)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-n // cfg.batch_size)
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    saf = SAFLoss(n, task.num_classes, lag=cfg.lag, start_epoch=cfg.start_epoch, coef=cfg.saf_coef,
                  temperature=cfg.temperature) if method == "saf" else None
    decay = 1.0 - 1.0 / (cfg.mesa_horizon * steps_per_epoch)
    mesa = MESALoss(model, decay=max(decay, 0.0), start_epoch=cfg.start_epoch, coef=cfg.mesa_coef,
                    temperature=cfg.temperature) if method == "mesa" else None

    def test_acc() -> float:
        model.eval()
        with torch.no_grad():
            acc = (model(task.x_eval).argmax(1) == task.y_eval).float().mean().item()
        model.train()
        return acc

    curve, epoch_s = [], []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        for index in torch.randperm(n, generator=gen).split(cfg.batch_size):
            xb, yb = task.x_train[index], y_noisy[index]
            if method == "sam":
                sam_step(model, params, opt, lambda: F.cross_entropy(model(xb), yb), cfg.rho)
            else:
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                if saf is not None:
                    loss = loss + saf(logits, index, epoch)
                elif mesa is not None:
                    loss = loss + mesa(logits, xb, epoch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if mesa is not None:
                    mesa.update(model)
            sched.step()
        epoch_s.append(time.perf_counter() - t0)
        curve.append(test_acc())
    model.eval()
    with torch.no_grad():
        fit_noisy = (model(task.x_train).argmax(1) == y_noisy).float().mean().item()
    k = min(cfg.hessian_samples, len(y_noisy))
    sub = (task.x_train[:k], y_noisy[:k])
    lam = hessian_top_eigenvalue(model, lambda m, b: F.cross_entropy(m(b[0]), b[1]), sub, iters=cfg.hessian_iters,
                                 tol=1e-4, generator=torch.Generator().manual_seed(0))
    return dict(method=method, seed=seed, test_acc=curve[-1], top_eig=float(lam), fit_noisy=fit_noisy,
                s_per_epoch=sorted(epoch_s)[len(epoch_s) // 2], curve=curve)


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    c = run.cfg
    return (f"sharpness: digits, {c.noise:.0%} symmetric label noise, MLP {c.hidden}, {c.epochs} epochs x batch "
            f"{c.batch_size}, SGD momentum {c.momentum} lr {c.lr:g} cosine, {c.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return ("best first by final clean test accuracy; top eig: largest eigenvalue of the Hessian of the training "
            f"cross-entropy on {run.cfg.hessian_samples} noisy training samples (power iteration; lower is flatter); "
            "fit noisy: training accuracy on the noisy labels; ms/epoch: median training time of an epoch, one thread; "
            f"{CI_NOTE}; {RANK_NOTE} (ranked on test accuracy)")


def _plot(out: Path, run: Run, rows: list[dict[str, Any]], summary: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gradwise.arena.report import curve_styles, wrap_title

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    styles = curve_styles(run.methods)
    for m in run.methods:
        mine = [r for r in rows if r["method"] == m]
        if not mine:
            continue
        st = styles[m]
        acc = np.array([r["curve"] for r in mine]).mean(0) * 100
        ax1.plot(np.arange(1, len(acc) + 1), acc, color=st["color"], ls=st["ls"], label=m, lw=1.3)
        ax2.scatter([r["s_per_epoch"] * 1e3 for r in mine], [r["top_eig"] for r in mine], color=st["color"],
                    marker=st["marker"] or "o", label=m)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("clean test accuracy (%), mean over seeds")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("training time per epoch (ms, one thread)")
    ax2.set_ylabel("top Hessian eigenvalue at the end (lower: flatter)")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(wrap_title(title, 120), fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "sharpness.png", dpi=120)
    plt.close(fig)


STUDY = register_study(Study(
    name="sharpness", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    setup=digits_task, seed_setup=noisy_seed_labels, seed_setup_label="noisy labels", seeds_outer=True,
    run_one=lambda run, method, seed, y_noisy: train_one(run.task, y_noisy, run.cfg, method, seed),
    summary_keys=("test_acc", "top_eig", "fit_noisy", "s_per_epoch"), rank_on="test_acc", title=_title,
    notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"), ci_column("test acc (%)", "test_acc", 2, scale=100),
             ci_column("top eig", "top_eig", 3), ci_column("fit noisy (%)", "fit_noisy", 1, scale=100),
             ci_column("ms/epoch", "s_per_epoch", 1, scale=1000)),
    csv_skip=("curve",), write_files=_plot, outputs=("sharpness.png",),
    smoke=("--seeds", "1", "--epochs", "3", "--start-epoch", "0", "--lag", "1", "--hessian-samples", "64",
           "--hessian-iters", "5"),
))
