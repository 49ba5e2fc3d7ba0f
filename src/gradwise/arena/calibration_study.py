"""Study ``calibration``: post-hoc calibration of an MLP on digits.

An MLP is trained with cross-entropy on the training portion of the digits
training split; a stratified calibration split (``CONFIG.cal_fraction`` of the
training split) is held out for fitting calibrators, and the test split is
only used for the final numbers. Three predictors are compared on the test
split: the raw model, temperature scaling (Guo et al. 2017, NLL on the
calibration split) and the correctness-aware calibrator (Liu et al. 2024: a
per-sample temperature predicted from how transformed views of the input
agree with the original top-4 classes, trained with the CA loss).

The CA calibrator runs twice: with the authors' class-balanced CA loss
(``balance=True``, half the weight on the few wrong predictions) and with the
plain mean (``balance=False``). Both start from T = 1 (``init_temperature``)
and take ``ca_epochs`` full-batch Adam steps.

Transformations (the paper uses rotation, greyscale and colour jitter on
ImageNet; digits are 8x8 greyscale): a one-pixel shift right, a one-pixel
shift down and additive Gaussian noise (sigma 0.5, in standardized units),
all on the standardized 8x8 image; seeded per run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE
from gradwise.arena.study import Column, Run, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "CONFIG", "STUDY", "add_arguments", "run", "run_seed"]

HELP = "post-hoc calibration on digits: raw MLP vs temperature scaling vs correctness-aware calibrator"

METHODS = ("raw", "temperature scaling", "CA balanced (code)", "CA unweighted")
METRICS = ("ece", "adaptive_ece", "classwise_ece", "accuracy", "nll")


@dataclass(frozen=True)
class Config:
    test_fraction: float = 0.25
    cal_fraction: float = 0.2      # of the training split, stratified, fixed by split_seed
    split_seed: int = 0
    hidden: tuple[int, ...] = (128, 128)
    batch_size: int = 64
    epochs: int = option(60, "training epochs of the MLP", at_least=1)
    lr: float = 1e-3               # Adam
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    n_bins: int = 15
    noise: float = 0.5             # std of the noise view (standardized units)
    top_k: int = 4                 # calibrator features: top-k classes x 3 views
    # authors: 10 epochs of ~50 Adam steps at lr 1e-4 on ImageNet-val; one full batch an epoch here, so more
    # epochs and a larger lr
    ca_epochs: int = option(300, "training epochs of the correctness-aware calibrator", at_least=1)
    ca_lr: float = 1e-3
    ca_init_temperature: float = 1.0  # start from the identity calibrator (see CorrectnessAwareCalibrator)
    threads: int = 1


CONFIG = Config()


def _views(x, gen, noise: float):
    """Three transformed copies of standardized 8x8 digits [N, 64]."""
    import torch

    img = x.view(-1, 8, 8)
    right = torch.zeros_like(img)
    right[:, :, 1:] = img[:, :, :-1]
    down = torch.zeros_like(img)
    down[:, 1:, :] = img[:, :-1, :]
    noisy = img + noise * torch.randn(img.shape, generator=gen)
    return [v.reshape(-1, 64) for v in (right, down, noisy)]


def _split(task, cfg: Config):
    import torch
    from sklearn.model_selection import train_test_split

    idx = torch.arange(len(task.y_train)).numpy()
    tr, cal = train_test_split(idx, test_size=cfg.cal_fraction, stratify=task.y_train.numpy(),
                               random_state=cfg.split_seed)
    tr, cal = torch.from_numpy(tr), torch.from_numpy(cal)
    return task.x_train[tr], task.y_train[tr], task.x_train[cal], task.y_train[cal]


def run_seed(task, cfg: Config, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train one MLP and calibrate it; (rows of metrics, test probabilities per method)."""
    import torch
    import torch.nn.functional as F

    from gradwise.arena.tasks import mlp
    from gradwise.calibration import (CorrectnessAwareCalibrator, TemperatureScaler, fit_correctness_aware_calibrator,
                                      transformation_features)
    from gradwise.metrics import adaptive_calibration_error, classwise_calibration_error, expected_calibration_error

    t0 = time.perf_counter()
    x_tr, y_tr, x_cal, y_cal = _split(task, cfg)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = mlp(task.num_features, task.num_classes, cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n = len(y_tr)
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, cfg.batch_size):
            b = perm[s:s + cfg.batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x_tr[b]), y_tr[b]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        def logits_and_feats(x):
            z = model(x)
            return z, transformation_features(z, [model(v) for v in _views(x, gen, cfg.noise)], k=cfg.top_k)

        z_cal, f_cal = logits_and_feats(x_cal)
        z_te, f_te = logits_and_feats(task.x_eval)
    ts = TemperatureScaler().fit(z_cal, y_cal)
    outs = {"raw": z_te, "temperature scaling": ts(z_te)}
    temps = {"raw": 1.0, "temperature scaling": ts.temperature}
    for name, balance in (("CA balanced (code)", True), ("CA unweighted", False)):
        ca = CorrectnessAwareCalibrator(f_cal.shape[1], init_temperature=cfg.ca_init_temperature)
        fit_correctness_aware_calibrator(ca, z_cal, f_cal, y_cal, epochs=cfg.ca_epochs, lr=cfg.ca_lr,
                                         balance=balance, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            outs[name] = ca(z_te, f_te)
            temps[name] = float(ca.temperature(f_te).mean())
    wall = time.perf_counter() - t0
    rows = []
    for name, z in outs.items():
        y = task.y_eval
        rows.append({
            "method": name, "seed": seed,
            "ece": expected_calibration_error(z, y, n_bins=cfg.n_bins, from_logits=True).item(),
            "adaptive_ece": adaptive_calibration_error(z, y, n_bins=cfg.n_bins, from_logits=True).item(),
            "classwise_ece": classwise_calibration_error(z, y, n_bins=cfg.n_bins, from_logits=True).item(),
            "accuracy": (z.argmax(1) == y).double().mean().item(),
            "nll": F.cross_entropy(z.double(), y).item(),
            "temperature": temps[name],
            "wall_s": wall,
        })
    return rows, {k: v.softmax(1) for k, v in outs.items()}


def _plot(path: Path, probs: dict[str, Any], y, n_bins: int, title: str,
          ece: dict[str, tuple[float, float]]) -> list[str]:
    """Reliability diagrams of the test predictions pooled over seeds; each panel's ECE is ``ece[name]``
    (the table's statistic: mean and 95% interval over seeds), not the ECE of the pooled diagram.
    Returns the panels' titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gradwise.arena.report import fmt_ci, wrap_title
    from gradwise.metrics import reliability_bins

    fig, axes = plt.subplots(1, len(probs), figsize=(3.8 * len(probs), 4.0), sharey=True)
    width = 1.0 / n_bins
    centers = [(i + 0.5) * width for i in range(n_bins)]
    for ax, (name, p) in zip(axes, probs.items()):
        conf, acc, count = reliability_bins(p, y, n_bins=n_bins, from_logits=False)
        ok = count > 0
        ax.bar([c for c, o in zip(centers, ok.tolist()) if o], acc[ok].tolist(), width=width * 0.95,
               color="C0", alpha=0.8, label="accuracy")
        ax.plot(conf[ok].tolist(), acc[ok].tolist(), "o", color="C3", ms=3, label="(mean conf, acc)")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
        ax.set_title(f"{name}\nECE {fmt_ci(*ece[name])} (mean over seeds)", fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(wrap_title(title, 120), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [ax.get_title() for ax in axes]


def _task(cfg: Config, methods: tuple[str, ...]):
    from gradwise.arena.tasks import digits

    return digits(eval_split="test", test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)


def _run_seed(run: Run, seed: int) -> list[dict[str, Any]]:
    """One seed's rows; its test probabilities are pooled over seeds for the reliability diagrams."""
    rows, probs = run_seed(run.task, run.cfg, seed)
    pooled = run.state.setdefault("pooled", {m: [] for m in METHODS})
    for m in METHODS:
        pooled[m].append(probs[m])
    return rows


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"calibration on digits: MLP 64-{'-'.join(map(str, cfg.hidden))}-10, {cfg.epochs} epochs, "
            f"{len(run.task.y_eval)} test samples, {cfg.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return (f"best first by ECE ({run.cfg.n_bins} equal-width bins, mean over seeds); {CI_NOTE}; "
            f"{RANK_NOTE} (ranked on ECE); calibrators fitted on a held-out calibration split")


def _write_plot(out: Path, run: Run, rows: list[dict[str, Any]], summary: list[dict[str, Any]], title: str) -> None:
    import torch

    cfg = run.cfg
    probs = {m: torch.cat(v) for m, v in run.state["pooled"].items()}
    _plot(out / "reliability.png", probs, run.task.y_eval.repeat(cfg.seeds), cfg.n_bins,
          f"reliability on the digits test split: bins pooled over {cfg.seeds} seed(s); panel ECE: mean ± 95% "
          "interval over seeds, as in the table", {s["method"]: (s["ece_mean"], s["ece_ci"]) for s in summary})


STUDY = register_study(Study(
    name="calibration", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    setup=_task, run_seed=_run_seed,
    summary_keys=(*METRICS, "temperature"), rank_on="ece", higher_is_better=False,  # per method, over seeds
    title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"), ci_column("ECE", "ece"),
             ci_column("adaptive ECE", "adaptive_ece"), ci_column("classwise ECE", "classwise_ece"),
             ci_column("accuracy", "accuracy"), ci_column("NLL", "nll"),
             Column("mean T", lambda s: f"{s['temperature_mean']:.2f}")),
    write_files=_write_plot, outputs=("reliability.png",),
    smoke=("--seeds", "1", "--epochs", "2", "--ca-epochs", "2"),
))
# the study's entry points, as before the driver
add_arguments, run = STUDY.add_arguments, STUDY.run
