"""Study ``distillation``: a small student MLP on digits, trained from scratch
with each distillation objective from a larger teacher MLP.

Per seed ``s``: the teacher (64-512-512-10, GELU) is trained with
cross-entropy (AdamW, weight decay 0.05, input dropout 0.2, 60 epochs);
then a student (64-32-10) is trained, from the same seeded initialization
and minibatch order for every method, with

* ``CE only`` -- no teacher;
* ``KD`` -- CE + Hinton KD (T = 4);
* ``CE+BinaryKL (1 head)`` -- CE and DHKD's BinaryKL-Norm on the *same* head
  (the combination the DHKD paper says collapses the classifier);
* ``DHKD`` -- CE on the main head + BinaryKL-Norm on an auxiliary linear head;
* ``KD++ (ND)`` -- CE + KD + 2 * ND on the student's features mapped to the
  teacher's 512 dimensions by a learned linear layer (the authors' ``EmbTrans``);
* ``DML (online)`` and ``BD-KD (online)`` -- online distillation: the student
  and a fresh teacher-sized peer are trained together from scratch, each with
  CE plus a KL towards the other (DML: forward KL both ways; BD-KD: the
  balanced student loss and the reverse-KL teacher loss).

The teacher's logits and features on the training set are computed once per
seed (there is no data augmentation). The leaderboard reports the student's
test accuracy and expected calibration error (15 bins), mean ± std over seeds.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE, fmt_ci, mean_ci, mean_std, rank_summaries
from gradwise.arena.study import Column, Run, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "CONFIG", "METHODS", "STUDY", "add_arguments", "run"]

HELP = "distillation objectives (KD, DHKD, ND/KD++, BD-KD) for a 64-32-10 student of a 64-512-512-10 digits teacher"
TEACHER = "teacher (CE)"


@dataclass(frozen=True)
class Config:
    test_fraction: float = 0.25
    split_seed: int = 0
    teacher_hidden: tuple[int, ...] = (512, 512)
    student_hidden: tuple[int, ...] = (32,)
    batch_size: int = 64
    teacher_epochs: int = option(60, "teacher epochs", at_least=1)
    teacher_lr: float = 1e-3           # AdamW with weight decay and input dropout: a teacher clearly better
    teacher_weight_decay: float = 0.05  # than the CE-only student (without them it is not, at this scale)
    teacher_input_dropout: float = 0.2
    epochs: int = option(40, "student epochs per method", at_least=1)
    lr: float = 3e-3           # Adam, students and online peers
    kd_temperature: float = 4.0
    dhkd_temperature: float = 2.0
    dhkd_alpha: float = 1.0
    nd_weight: float = 2.0
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    threads: int = 1


CONFIG = Config()
METHODS = ("CE only", "KD", "CE+BinaryKL (1 head)", "DHKD", "KD++ (ND)", "DML (online)", "BD-KD (online)")


# ----------------------------------------------------------------- training (task: the digits split)

def _batches(task, cfg: Config, epochs: int, seed: int) -> list:
    import torch

    g = torch.Generator().manual_seed(seed)
    n = len(task.y_train)
    return [idx for _ in range(epochs) for idx in torch.randperm(n, generator=g).split(cfg.batch_size)]


def _split(model):
    return model[:-1], model[-1]


def _evaluate(task, logits_fn) -> tuple[float, float]:
    import torch

    from gradwise.metrics import expected_calibration_error

    with torch.no_grad():
        logits = logits_fn(task.x_eval)
        return ((logits.argmax(1) == task.y_eval).float().mean().item(),
                float(expected_calibration_error(logits, task.y_eval)))


def _train_teacher(task, cfg: Config, seed: int):
    import torch
    import torch.nn.functional as F

    from gradwise.arena.tasks import mlp

    n_in, xtr, ytr = task.num_features, task.x_train, task.y_train
    torch.manual_seed(10_000 + seed)
    model = mlp(n_in, task.num_classes, cfg.teacher_hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.teacher_lr, weight_decay=cfg.teacher_weight_decay)
    gen = torch.Generator().manual_seed(30_000 + seed)
    for idx in _batches(task, cfg, cfg.teacher_epochs, 10_000 + seed):
        keep = torch.rand(len(idx), n_in, generator=gen) >= cfg.teacher_input_dropout
        x = xtr[idx] * keep / (1.0 - cfg.teacher_input_dropout)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), ytr[idx]).backward()
        opt.step()
    return model.eval()


def _train_student(task, cfg: Config, method: str, seed: int, t_logits, t_feats, centers):
    """Train the student with ``method``; (its test accuracy, its ECE, the online peer's accuracy or None)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from gradwise.arena.tasks import mlp
    from gradwise.losses import DualHeadKD, bdkd_loss, bdkd_teacher_loss, binary_kl_loss, kd_loss, nd_loss

    n_in, n_cls, xtr, ytr = task.num_features, task.num_classes, task.x_train, task.y_train
    torch.manual_seed(seed)
    student = mlp(n_in, n_cls, cfg.student_hidden)
    backbone, head = _split(student)
    extra: list[nn.Module] = []
    peer = peer_opt = None
    if method == "DHKD":
        dual = DualHeadKD(head, aux="linear", alpha=cfg.dhkd_alpha, temperature=cfg.dhkd_temperature)
        extra.append(dual.aux_head)
    if method == "KD++ (ND)":
        proj = nn.Linear(cfg.student_hidden[-1], cfg.teacher_hidden[-1])
        extra.append(proj)
    if method.endswith("(online)"):
        torch.manual_seed(20_000 + seed)
        peer = mlp(n_in, n_cls, cfg.teacher_hidden)
        peer_opt = torch.optim.Adam(peer.parameters(), lr=cfg.lr)
    params = [p for m in (student, *extra) for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    T = cfg.kd_temperature
    for idx in _batches(task, cfg, cfg.epochs, seed):
        x, y = xtr[idx], ytr[idx]
        feat = backbone(x)
        logits = head(feat)
        ce = F.cross_entropy(logits, y)
        if method == "CE only":
            loss = ce
        elif method == "KD":
            loss = ce + kd_loss(logits, t_logits[idx], temperature=T)
        elif method == "CE+BinaryKL (1 head)":
            loss = ce + cfg.dhkd_alpha * binary_kl_loss(logits, t_logits[idx], temperature=cfg.dhkd_temperature)
        elif method == "DHKD":
            loss = dual.loss(logits, dual.aux_head(feat), t_logits[idx], y)
        elif method == "KD++ (ND)":
            loss = (ce + kd_loss(logits, t_logits[idx], temperature=T)
                    + cfg.nd_weight * nd_loss(proj(feat), t_feats[idx], y, centers, validate=False))
        else:  # online: student and peer trained together on the same batch
            p_logits = peer(x)
            if method == "DML (online)":
                s_kd = kd_loss(logits, p_logits.detach(), temperature=T)
                p_kd = kd_loss(p_logits, logits.detach(), temperature=T)
            else:
                s_kd = bdkd_loss(logits, p_logits, temperature=T)
                p_kd = bdkd_teacher_loss(p_logits, logits, temperature=T)
            loss = ce + s_kd
            peer_opt.zero_grad(set_to_none=True)
            (F.cross_entropy(p_logits, y) + p_kd).backward()
            peer_opt.step()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    student.eval()
    acc, ece = _evaluate(task, student)
    peer_acc = _evaluate(task, peer.eval())[0] if peer is not None else None
    return acc, ece, peer_acc


# ----------------------------------------------------------------- the study on the driver

def _task(cfg: Config, methods: tuple[str, ...]):
    from gradwise.arena.tasks import digits

    return digits(eval_split="test", test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)


def _teacher(run: Run, seed: int) -> tuple[tuple[Any, Any, Any], dict[str, Any]]:
    """The seed's teacher, trained once: its logits, features and class centres on the training set (what
    every student of the seed learns from) and its row (unranked, reported beside the students)."""
    import torch

    from gradwise.losses import class_means

    task = run.task
    t0 = time.perf_counter()
    teacher = _train_teacher(task, run.cfg, seed)
    t_backbone, t_head = _split(teacher)
    with torch.no_grad():
        t_feats = t_backbone(task.x_train)
        t_logits = t_head(t_feats)
    centers = class_means(t_feats, task.y_train, task.num_classes)
    t_acc, t_ece = _evaluate(task, teacher)
    return (t_logits, t_feats, centers), dict(method=TEACHER, seed=seed, test_acc=t_acc, ece=t_ece,
                                              wall_s=time.perf_counter() - t0)


def _student(run: Run, method: str, seed: int, shared: tuple[Any, Any, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    acc, ece, peer_acc = _train_student(run.task, run.cfg, method, seed, *shared)
    return dict(method=method, seed=seed, test_acc=acc, ece=ece, peer_acc=peer_acc, wall_s=time.perf_counter() - t0)


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gradwise.arena.stats import mean_ci_fields

    summary = []
    for method in run.methods:
        rs = [r for r in rows if r["method"] == method]
        stats = mean_ci_fields(rs, ("test_acc", "ece"))
        peers = [r["peer_acc"] for r in rs if r["peer_acc"] is not None]
        summary.append(dict(name=method, runs=len(rs), acc_mean=stats["test_acc_mean"],
                            acc_std=stats["test_acc_std"], acc_ci=stats["test_acc_ci"],
                            ece_mean=stats["ece_mean"], ece_std=stats["ece_std"], ece_ci=stats["ece_ci"],
                            peer_acc_mean=statistics.fmean(peers) if peers else None,
                            wall_s_mean=statistics.fmean(r["wall_s"] for r in rs)))
    return rank_summaries(summary, "acc")


def _teacher_row(run: Run, summary: list[dict[str, Any]]) -> list[list[str]]:
    teachers = run.references
    t_acc_m, t_acc_ci = mean_ci([t["test_acc"] for t in teachers])
    t_ece_m, _ = mean_std([t["ece"] for t in teachers])
    return [["", f"[dim]{TEACHER}[/dim]", f"[dim]{fmt_ci(t_acc_m, t_acc_ci)}[/dim]", f"[dim]{t_ece_m:.4f}[/dim]", "—",
             f"[dim]{statistics.fmean(t['wall_s'] for t in teachers):.2f}[/dim]"]]


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"distillation on digits: student 64-{'-'.join(map(str, cfg.student_hidden))}-10 from teacher "
            f"64-{'-'.join(map(str, cfg.teacher_hidden))}-10, {cfg.epochs} epochs, {cfg.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return (f"best first by student test accuracy; {CI_NOTE}; {RANK_NOTE} (ranked on test accuracy; the teacher is "
            "not ranked); ECE: 15 equal-width confidence bins on the test split; peer acc: the online methods' "
            "teacher-sized peer")


def _write_plot(out: Path, run: Run, rows: list[dict[str, Any]], summary: list[dict[str, Any]], title: str) -> None:
    _plot(out / "distillation.png", summary, mean_ci([t["test_acc"] for t in run.references])[0], title)


STUDY = register_study(Study(
    name="distillation", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    setup=_task, seed_setup=_teacher, seed_setup_label="teacher", seeds_outer=True, run_one=_student,
    name_key="name", summarize=_summarize, title=_title, notes=_notes, extra_table_rows=_teacher_row,
    columns=(Column("method", lambda s: s["name"], "left"), ci_column("test acc", "acc"), ci_column("ECE", "ece"),
             Column("peer acc", lambda s: "—" if s["peer_acc_mean"] is None else f"{s['peer_acc_mean']:.4f}"),
             Column("s/run", lambda s: f"{s['wall_s_mean']:.2f}")),
    csv_fields=("method", "seed", "test_acc", "ece", "peer_acc", "wall_s"),
    write_files=_write_plot, outputs=("distillation.png",),
    smoke=("--seeds", "1", "--teacher-epochs", "2", "--epochs", "2"),
))
# the study's entry points, as before the driver
add_arguments, run = STUDY.add_arguments, STUDY.run


def _plot(path: Path, summary: list[dict[str, Any]], teacher_acc: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gradwise.arena.report import wrap_title

    names = [s["name"] for s in summary]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    def err(key: str) -> list[float]:  # the table's 95% t-interval; none drawn for one seed
        return [s[key] if math.isfinite(s[key]) else 0.0 for s in summary]

    a1.barh(names, [s["acc_mean"] for s in summary], xerr=err("acc_ci"), color="C0", capsize=3)
    a1.axvline(teacher_acc, color="grey", ls="--", lw=1, label=f"teacher {teacher_acc:.4f}")
    lo = min(min(s["acc_mean"] - e for s, e in zip(summary, err("acc_ci"))), teacher_acc)
    hi = max(teacher_acc, max(s["acc_mean"] + e for s, e in zip(summary, err("acc_ci"))))
    a1.set_xlim(max(0.0, lo - 0.02), min(1.0, hi + 0.01))
    a1.set_xlabel("student test accuracy (mean and 95% t-interval over seeds)")
    a1.invert_yaxis()
    a1.legend(loc="lower right", fontsize=8)
    a2.barh(names, [s["ece_mean"] for s in summary], xerr=err("ece_ci"), color="C1", capsize=3)
    a2.set_xlabel("expected calibration error (lower is better)")
    a2.invert_yaxis()
    a2.set_yticklabels([])
    fig.suptitle(wrap_title(title, 130), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
