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

import argparse
import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradwise.arena import add_out_argument, add_seeds_argument, positive_int

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["HELP", "Config", "CONFIG", "METHODS", "add_arguments", "run"]

HELP = "distillation objectives (KD, DHKD, ND/KD++, BD-KD) for a 64-32-10 student of a 64-512-512-10 digits teacher"


@dataclass(frozen=True)
class Config:
    test_fraction: float = 0.25
    split_seed: int = 0
    teacher_hidden: tuple[int, ...] = (512, 512)
    student_hidden: tuple[int, ...] = (32,)
    batch_size: int = 64
    teacher_epochs: int = 60
    teacher_lr: float = 1e-3           # AdamW with weight decay and input dropout: a teacher clearly better
    teacher_weight_decay: float = 0.05  # than the CE-only student (without them it is not, at this scale)
    teacher_input_dropout: float = 0.2
    epochs: int = 40
    lr: float = 3e-3           # Adam, students and online peers
    kd_temperature: float = 4.0
    dhkd_temperature: float = 2.0
    dhkd_alpha: float = 1.0
    nd_weight: float = 2.0
    seeds: int = 3
    threads: int = 1


CONFIG = Config()
METHODS = ("CE only", "KD", "CE+BinaryKL (1 head)", "DHKD", "KD++ (ND)", "DML (online)", "BD-KD (online)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_seeds_argument(parser, CONFIG.seeds)
    parser.add_argument("--epochs", type=positive_int, default=CONFIG.epochs,
                        help=f"student epochs per method (default {CONFIG.epochs})")
    parser.add_argument("--teacher-epochs", type=positive_int, default=CONFIG.teacher_epochs,
                        help=f"teacher epochs (default {CONFIG.teacher_epochs})")
    add_out_argument(parser)


def run(args: argparse.Namespace, console: Console) -> Path:
    import torch
    import torch.nn.functional as F
    from rich.table import Table
    from torch import nn

    from gradwise.arena import report
    from gradwise.arena.runner import torch_threads
    from gradwise.arena.tasks import digits, mlp
    from gradwise.losses import (DualHeadKD, bdkd_loss, bdkd_teacher_loss, binary_kl_loss, class_means, kd_loss,
                                 nd_loss)
    from gradwise.metrics import expected_calibration_error

    cfg = replace(CONFIG, seeds=args.seeds, epochs=args.epochs, teacher_epochs=args.teacher_epochs)
    task = digits(eval_split="test", test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)
    n_in, n_cls, n = task.num_features, task.num_classes, len(task.y_train)
    xtr, ytr = task.x_train, task.y_train

    def batches(epochs: int, seed: int) -> list:
        g = torch.Generator().manual_seed(seed)
        return [idx for _ in range(epochs) for idx in torch.randperm(n, generator=g).split(cfg.batch_size)]

    def split(model: nn.Sequential) -> tuple[nn.Module, nn.Module]:
        return model[:-1], model[-1]

    @torch.no_grad()
    def evaluate(logits_fn) -> tuple[float, float]:
        logits = logits_fn(task.x_eval)
        return (logits.argmax(1) == task.y_eval).float().mean().item(), float(expected_calibration_error(logits, task.y_eval))

    def train_teacher(seed: int) -> nn.Sequential:
        torch.manual_seed(10_000 + seed)
        model = mlp(n_in, n_cls, cfg.teacher_hidden)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.teacher_lr, weight_decay=cfg.teacher_weight_decay)
        gen = torch.Generator().manual_seed(30_000 + seed)
        for idx in batches(cfg.teacher_epochs, 10_000 + seed):
            keep = torch.rand(len(idx), n_in, generator=gen) >= cfg.teacher_input_dropout
            x = xtr[idx] * keep / (1.0 - cfg.teacher_input_dropout)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), ytr[idx]).backward()
            opt.step()
        return model.eval()

    def train_student(method: str, seed: int, t_logits, t_feats, centers):
        torch.manual_seed(seed)
        student = mlp(n_in, n_cls, cfg.student_hidden)
        backbone, head = split(student)
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
        for idx in batches(cfg.epochs, seed):
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
        acc, ece = evaluate(student)
        peer_acc = evaluate(peer.eval())[0] if peer is not None else None
        return acc, ece, peer_acc

    with report.results_folder(args.out) as folder:
        out = folder.tmp
        rows: list[dict[str, Any]] = []
        teachers: list[dict[str, Any]] = []
        start_all = time.perf_counter()
        with torch_threads(cfg.threads), report.progress(console, width=34) as bar:
            job = bar.add_task("distillation", total=cfg.seeds * (1 + len(METHODS)))
            for seed in range(cfg.seeds):
                bar.update(job, description=f"teacher seed {seed}")
                t0 = time.perf_counter()
                teacher = train_teacher(seed)
                t_backbone, t_head = split(teacher)
                with torch.no_grad():
                    t_feats = t_backbone(xtr)
                    t_logits = t_head(t_feats)
                centers = class_means(t_feats, ytr, n_cls)
                t_acc, t_ece = evaluate(teacher)
                teachers.append(dict(seed=seed, test_acc=t_acc, ece=t_ece, wall_s=time.perf_counter() - t0))
                bar.advance(job)
                for method in METHODS:
                    bar.update(job, description=f"{method} seed {seed}")
                    t0 = time.perf_counter()
                    acc, ece, peer_acc = train_student(method, seed, t_logits, t_feats, centers)
                    rows.append(dict(method=method, seed=seed, test_acc=acc, ece=ece, peer_acc=peer_acc,
                                     wall_s=time.perf_counter() - t0))
                    bar.advance(job)
        total_s = time.perf_counter() - start_all

        summary = []
        for method in METHODS:
            rs = [r for r in rows if r["method"] == method]
            stats = report.mean_ci_fields(rs, ("test_acc", "ece"))
            peers = [r["peer_acc"] for r in rs if r["peer_acc"] is not None]
            summary.append(dict(name=method, runs=len(rs), acc_mean=stats["test_acc_mean"],
                                acc_std=stats["test_acc_std"], acc_ci=stats["test_acc_ci"],
                                ece_mean=stats["ece_mean"], ece_std=stats["ece_std"], ece_ci=stats["ece_ci"],
                                peer_acc_mean=statistics.fmean(peers) if peers else None,
                                wall_s_mean=statistics.fmean(r["wall_s"] for r in rs)))
        report.rank_summaries(summary, "acc")
        t_acc_m, t_acc_ci = report.mean_ci([t["test_acc"] for t in teachers])
        t_ece_m, _ = report.mean_std([t["ece"] for t in teachers])

        title = (f"distillation on digits: student 64-{'-'.join(map(str, cfg.student_hidden))}-10 from teacher "
                 f"64-{'-'.join(map(str, cfg.teacher_hidden))}-10, {cfg.epochs} epochs, {cfg.seeds} seed(s)")
        table = Table(title=title, title_justify="left")
        for col, just in (("rank", "right"), ("method", "left"), ("test acc", "right"), ("ECE", "right"),
                          ("peer acc", "right"), ("s/run", "right")):
            table.add_column(col, justify=just, no_wrap=True)
        for s in summary:
            table.add_row(report.rank_label(report.Rank(s["rank"], s["tied"])), s["name"],
                          report.fmt_ci(s["acc_mean"], s["acc_ci"]), report.fmt_ci(s["ece_mean"], s["ece_ci"]),
                          "—" if s["peer_acc_mean"] is None else f"{s['peer_acc_mean']:.4f}", f"{s['wall_s_mean']:.2f}")
        table.add_row("", "[dim]teacher (CE)[/dim]", f"[dim]{report.fmt_ci(t_acc_m, t_acc_ci)}[/dim]",
                      f"[dim]{t_ece_m:.4f}[/dim]", "—",
                      f"[dim]{statistics.fmean(t['wall_s'] for t in teachers):.2f}[/dim]")
        console.print(table)
        console.print(f"[dim]best first by student test accuracy; {report.CI_NOTE}; {report.RANK_NOTE} (ranked on "
                      "test accuracy; the teacher is not ranked); ECE: 15 equal-width confidence bins on the test "
                      f"split; peer acc: the online methods' teacher-sized peer\n{report.machine_line()}[/dim]")
        console.print(f"total wall time {total_s:.1f} s")

        report.write_csv(out / "results.csv", [{"method": "teacher (CE)", **t} for t in teachers] + rows,
                         ["method", "seed", "test_acc", "ece", "peer_acc", "wall_s"])
        report.write_json(out / "results.json", dict(study="distillation", config=asdict(cfg), summary=summary,
                                                     teacher=teachers, runs=rows, total_wall_s=total_s,
                                                     versions=report.versions()))
        _plot(out / "distillation.png", summary, t_acc_m, title)
        console.print(f"results: {folder.final}/ (results.csv, results.json, distillation.png)")
    return folder.final


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
