"""Study ``reward-diffusion``: reward fine-tuning of the cached class-conditional digits diffusion model with the
classifier reward log p(y|x) (issue 18's study 4).

Setup (once): the cached digits teacher (:func:`gradwise.diffusion.toy.load_teacher`, an EDM denoiser on 8x8
digits in [-1, 1]), the cached classifier (the reward model) and a *judge*: a second classifier of the same
architecture trained here on the same digits from another seed (``judge_epochs``), which is never rewarded,
so that a rise in its accuracy is not the reward model being fooled. With ``memory`` 1, AdjointDPM's memory is
measured once: the peak of live tensor bytes (a dispatch-mode count, the method of
``tests/diffusion/test_adjoint_dpm.py``) of one gradient of a sample loss through the Euler sampler of the
digits teacher (batch ``memory_batch``), at ``memory_steps`` steps, for AdjointDPM (``checkpoint="log"``),
AdjointDPM storing every state (``"all"``) and autograd through the sampler.

Per seed, every method fine-tunes a copy of the teacher (:data:`gradwise.arena.reward_diffusion_runs.METHODS`):

* ``teacher``: no fine-tuning (EDM's Heun sampler, ``eval_steps`` levels);
* ``controlnet++``: Adam (``lr``) on the EDM loss + ``reward_weight`` x
  :func:`gradwise.diffusion.single_step_reward_loss` of training digits noised up to ``reward_sigma`` (the
  authors' t <= 200), ``reward_steps`` updates of ``batch_size``;
* ``plain/noisy`` and ``ctrl-u/noisy``: the same with a **noisy reward model**
  (:class:`~gradwise.arena.reward_diffusion_runs.NoisyClassifier`): for ``noise_p`` (30 %) of the images,
  a fixed pseudo-random function of the image, the classifier's logits are rolled by 1..9 classes, so the reward
  favours another digit; ``plain`` is ControlNet++'s loss, ``ctrl-u`` is
  :func:`gradwise.diffusion.uncertainty_weighted_reward_loss` (``u_scale``, reward scale ``reward_weight``),
  whose two passes see independently corrupted outputs, so their disagreement marks the corrupted ones;
* ``adjointdpm``: the reward of samples from the Euler probability-flow sampler (``adjoint_steps`` levels),
  its weight gradient by :func:`gradwise.diffusion.adjoint_sample_grad`, Adam (``adjoint_lr``),
  ``adjoint_updates`` updates of ``adjoint_batch`` random labels;
* ``teacher-ddim``, ``sft-winners``, ``d3po``: ``pairs`` pairs of stochastic DDIM trajectories (eta 1,
  ``ddim_steps`` steps on EDM's noise levels) from the teacher, labels 0..9 in turn; in each pair the image with
  the higher classifier reward wins. ``d3po``: :func:`gradwise.preference.d3po_loss` (``beta``, clip 0.1) on
  every step's log-probability (:func:`gradwise.diffusion.ddim_step_logprob`), reference = the teacher;
  ``sft-winners``: the EDM loss on the winning images only. Both: ``pref_updates`` Adam updates (``pref_lr``)
  of ``pref_batch`` pairs (SFT: twice as many winner images, the same number of images per update), the same
  labelled pairs. These three are sampled with the DDIM policy they were trained as.

Reported per method (mean and 95 % interval over seeds): on ``eval_samples`` samples (labels 0..9 in turn, the
same noise seed for every method) the reward classifier's accuracy, the judge's accuracy, the mean reward and
the Frechet distance of the classifier's features to the test digits (lower is closer), and the fine-tuning
time. FIND and SePPO (in the issue's list) are not implemented (their papers could not be read): not tested.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE, fmt_ci
from gradwise.arena.study import Column, Run, Selection, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "STUDY", "NAMES"]

HELP = ("reward fine-tuning of the digits diffusion model with the classifier reward: ControlNet++, Ctrl-U vs the "
        "plain reward loss under a 30%-noisy reward, AdjointDPM (memory flat in steps), D3PO vs SFT on the winners")
# reward_diffusion_runs.METHODS' keys (no torch here)
NAMES = ("teacher", "controlnet++", "plain/noisy", "ctrl-u/noisy", "adjointdpm", "teacher-ddim", "sft-winners",
         "d3po")


@dataclass(frozen=True)
class Config:
    seeds: int = option(5, "seeds 0..N-1 (fine-tuning draws, pairs; the issue's 5)", at_least=1)
    eval_samples: int = option(200, "samples per method and seed for the metrics", at_least=10)
    eval_steps: int = option(10, "EDM Heun sampler levels for the evaluation", at_least=2)
    lr: float = option(1e-4, "ControlNet++/Ctrl-U: Adam learning rate", at_least=1e-8)
    batch_size: int = option(64, "ControlNet++/Ctrl-U: training digits per update", at_least=2)
    reward_steps: int = option(100, "ControlNet++/Ctrl-U: updates", at_least=1)
    reward_weight: float = option(1.0, "weight of the reward loss (ControlNet++ grad_scale; Ctrl-U reward_scale)",
                                  at_least=0.0)
    reward_sigma: float = option(0.5717, "highest noise level rewarded (the authors' t <= 200)", at_least=1e-3)
    noise_p: float = option(0.3, "fraction of images the noisy reward model gets wrong", at_least=0.0, below=1.0)
    u_scale: float = option(0.1, "Ctrl-U: uncertainty scale (the authors' argparse default; their scripts: 1)",
                           at_least=0.0)
    adjoint_steps: int = option(10, "AdjointDPM: Euler sampler levels", at_least=2)
    adjoint_updates: int = option(20, "AdjointDPM: updates", at_least=1)
    adjoint_batch: int = option(32, "AdjointDPM: samples per update", at_least=1)
    adjoint_lr: float = option(1e-4, "AdjointDPM: Adam learning rate", at_least=1e-8)
    ddim_steps: int = option(5, "D3PO/SFT: DDIM steps (eta 1)", at_least=2)
    pairs: int = option(160, "D3PO/SFT: labelled pairs of teacher trajectories", at_least=2)
    pref_updates: int = option(60, "D3PO/SFT: updates", at_least=1)
    pref_batch: int = option(16, "D3PO/SFT: pairs per update", at_least=1)
    pref_lr: float = option(1e-4, "D3PO/SFT: Adam learning rate", at_least=1e-8)
    beta: float = option(0.1, "D3PO: beta", at_least=1e-6)
    judge_epochs: int = option(20, "epochs of the judge classifier (another seed)", at_least=1)
    memory: int = option(1, "1: measure AdjointDPM's memory against the steps, 0: skip", at_least=0, below=2)
    memory_steps: tuple[int, ...] = (20, 50, 200)
    memory_batch: int = 16


def _setup(cfg: Config, methods: tuple[str, ...]) -> Any:
    import torch

    from gradwise.arena.reward_diffusion_runs import make_task

    torch.set_num_threads(1)
    return make_task(cfg)


def _run_seed(run: Run, seed: int) -> list[dict[str, Any]]:
    from gradwise.arena.reward_diffusion_runs import run_seed

    return run_seed(run.methods, run.task, run.cfg, seed)


KEYS = ("acc", "acc_judge", "reward", "frechet", "train_seconds")

COLUMNS = (
    Column("method", lambda s: s["method"], "left"),
    Column("sampler", lambda s: s["sampler"]),
    ci_column("accuracy (%)", "acc", 1, scale=100),
    ci_column("judge acc. (%)", "acc_judge", 1, scale=100),
    ci_column("reward", "reward", 3),
    ci_column("Frechet", "frechet", 2),
    ci_column("fine-tune (s)", "train_seconds", 1),
)


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gradwise.arena.driver import summarize_rows

    out = summarize_rows(STUDY, rows, run.methods, KEYS)
    for s in out:
        s["sampler"] = next(r["sampler"] for r in rows if r["method"] == s["method"])
    return out


def _title(run: Run, rows: list[Any]) -> str:
    c = run.cfg
    return (f"reward-diffusion: digits EDM teacher, reward log p(y|x) of the cached classifier; ControlNet++/Ctrl-U "
            f"{c.reward_steps} updates x {c.batch_size}, noisy reward {100 * c.noise_p:g} % wrong; AdjointDPM "
            f"{c.adjoint_updates} x {c.adjoint_batch} at {c.adjoint_steps} levels; D3PO/SFT {c.pairs} pairs, "
            f"{c.pref_updates} updates; {c.eval_samples} samples; {c.seeds} seed(s)")


def _diff(by: dict[str, dict[str, Any]], rows: list[dict[str, Any]], a: str, b: str, key: str) -> tuple[float, float]:
    """Mean and 95 % interval over seeds of the paired difference a - b of ``key``."""
    from gradwise.arena.stats import mean_ci

    ra = {r["seed"]: r[key] for r in rows if r["method"] == a}
    rb = {r["seed"]: r[key] for r in rows if r["method"] == b}
    return mean_ci([ra[s] - rb[s] for s in ra if s in rb])


def _claims(run: Run, rows: list[dict[str, Any]], by: dict[str, dict[str, Any]]) -> list[str]:
    def d(a: str, b: str, key: str, scale: float = 100, digits: int = 1) -> str:
        return fmt_ci(*_diff(by, rows, a, b, key), digits, scale=scale)

    out = []
    if {"controlnet++", "teacher"} <= set(by):
        out.append(f"ControlNet++ - teacher: accuracy {d('controlnet++', 'teacher', 'acc')} pts, judge "
                   f"{d('controlnet++', 'teacher', 'acc_judge')} pts, Frechet "
                   f"{d('controlnet++', 'teacher', 'frechet', 1, 2)}")
    if {"ctrl-u/noisy", "plain/noisy"} <= set(by):
        out.append(f"Ctrl-U - plain, noisy reward: accuracy {d('ctrl-u/noisy', 'plain/noisy', 'acc')} pts, judge "
                   f"{d('ctrl-u/noisy', 'plain/noisy', 'acc_judge')} pts, Frechet "
                   f"{d('ctrl-u/noisy', 'plain/noisy', 'frechet', 1, 2)}")
    if {"adjointdpm", "teacher"} <= set(by):
        out.append(f"AdjointDPM - teacher: accuracy {d('adjointdpm', 'teacher', 'acc')} pts, judge "
                   f"{d('adjointdpm', 'teacher', 'acc_judge')} pts, Frechet "
                   f"{d('adjointdpm', 'teacher', 'frechet', 1, 2)}")
    if {"d3po", "sft-winners"} <= set(by):
        out.append(f"D3PO - SFT on winners (same pairs): accuracy {d('d3po', 'sft-winners', 'acc')} pts, judge "
                   f"{d('d3po', 'sft-winners', 'acc_judge')} pts, Frechet {d('d3po', 'sft-winners', 'frechet', 1, 2)}")
    if {"d3po", "teacher-ddim"} <= set(by):
        out.append(f"D3PO - teacher (DDIM): accuracy {d('d3po', 'teacher-ddim', 'acc')} pts; SFT - teacher: "
                   f"{d('sft-winners', 'teacher-ddim', 'acc') if 'sft-winners' in by else 'n/a'} pts")
    return out


def _memory_line(run: Run) -> str:
    mem = getattr(run.task, "memory", None) or {}
    if not mem:
        return ""
    steps = mem["steps"]

    def row(name: str) -> str:
        v = mem[name]
        return " / ".join(f"{b / 1e6:.2f}" for b in v) + f" MB ({v[-1] / v[0]:.2f}x)"

    return (f"AdjointDPM memory (peak live tensor MB at {' / '.join(map(str, steps))} Euler steps, batch "
            f"{mem['batch']}, one gradient of a sample loss; ratio last/first): adjoint log-checkpoint {row('log')}; "
            f"adjoint storing every state {row('all')}; autograd through the sampler {row('autograd')}")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    by = {s["method"]: s for s in summary}
    rows = run.state.get("rows", [])
    lines = ["accuracy: the reward classifier's (argmax = label) on the samples; judge: a classifier trained from "
             "another seed, never rewarded; reward: mean log p(y|x); Frechet: classifier features vs the test digits; "
             f"differences are paired by seed; {CI_NOTE}; {RANK_NOTE}"]
    lines += _claims(run, rows, by)
    mem = _memory_line(run)
    if mem:
        lines.append(mem)
    lines.append("not tested: FIND, SePPO (not implemented: their papers could not be read)")
    return "\n".join(lines)


def _json_extra(run: Run, summary: list[dict[str, Any]]) -> dict[str, Any]:
    return {"memory": getattr(run.task, "memory", {}), "not_tested": ["find", "seppo"]}


def _summarize_keep(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    run.state["rows"] = rows
    return _summarize(run, rows)


def _finite(v: float) -> float:
    return v if math.isfinite(v) else 0.0


def _plot(path: Any, run: Run, rows: list[dict[str, Any]], summary: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gradwise.arena.report import wrap_title

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    for s in summary:
        ax1.errorbar(s["frechet_mean"], 100 * s["acc_mean"], xerr=_finite(s["frechet_ci"]),
                     yerr=100 * _finite(s["acc_ci"]), fmt="o", capsize=2, label=s["method"])
    ax1.set(xlabel="Frechet (classifier features; lower is closer)", ylabel="accuracy (%)", xscale="log")
    ax1.legend(fontsize=7)
    mem = getattr(run.task, "memory", None) or {}
    if mem:
        for name in ("log", "all", "autograd"):
            ax2.plot(mem["steps"], [b / 1e6 for b in mem[name]], marker="o", label=name)
        ax2.set(xlabel="Euler steps", ylabel="peak live tensor MB", xscale="log", yscale="log")
        ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    fig.suptitle(wrap_title(title, 150), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


STUDY = register_study(Study(
    name="reward-diffusion", help=HELP, description=__doc__, config=Config, methods=lambda: NAMES,
    select=Selection("methods", "method names"),
    setup=_setup, run_seed=_run_seed, summarize=_summarize_keep, rank_on="acc_judge", higher_is_better=True,
    title=_title, notes=_notes, columns=COLUMNS, json_extra=_json_extra,
    write_files=lambda out, run, rows, summary, title: _plot(out / "reward_diffusion.png", run, rows, summary, title),
    outputs=("reward_diffusion.png",),
    smoke=("--seeds", "1", "--eval-samples", "10", "--eval-steps", "2", "--reward-steps", "1", "--batch-size", "4",
           "--adjoint-updates", "1", "--adjoint-batch", "2", "--adjoint-steps", "2", "--ddim-steps", "2",
           "--pairs", "4", "--pref-updates", "1", "--pref-batch", "2", "--judge-epochs", "1", "--memory", "0"),
))
