"""Study ``continual``: split-digits, evaluated after every iteration: does the stability gap show?

De Lange, van de Ven and Tuytelaars ("Continual evaluation for lifelong learning: Identifying the stability gap",
ICLR 2023, arXiv:2205.13452) evaluate after every training iteration instead of at task ends and find that even
methods that keep old tasks at the boundaries (replay) lose much of them right after a task switch and recover
later: the *stability gap*, which boundary evaluation hides.

Setup: scikit-learn's digits (1,347 training, 450 test images, standardized), cut by
:func:`gradwise.continual.split_stream` into 5 class-incremental tasks of two classes (0-1, 2-3, ..., 8-9; one
10-way head, labels not remapped), each trained for ``steps_per_task`` minibatches of ``batch_size`` (shuffled
epochs) with plain SGD (``lr``, no momentum) on a GELU MLP 64-128-128-10. Methods (:data:`METHODS`, name ->
factory; a new method is one entry):

* ``finetune``: cross-entropy on the current task only;
* ``ER``: experience replay: a reservoir buffer of ``buffer_size`` training samples over the whole stream; from
  the second task on each step's loss is the cross-entropy of the current batch concatenated with a batch of
  ``batch_size`` drawn from the buffer; the current batch then enters the buffer by reservoir sampling;
* ``EWC``: after each task the diagonal empirical Fisher (mean over the task's training samples of the squared
  per-sample gradient of the cross-entropy at the true label) and the weights are stored; the loss adds
  ``ewc_lambda / 2 * sum_k sum_i F_k,i (w_i - w*_k,i)^2`` over the finished tasks ``k`` (one penalty per task,
  as Kirkpatrick et al.);
* ``PRD``: :func:`gradwise.continual.prd_loss` with :func:`~gradwise.continual.supcon_loss` and
  :func:`~gradwise.continual.prototype_loss` combined as the authors' ``RePE.process_inc`` does (their code,
  naderAsadi/Probing-Continual-Learning ``methods/repe.py`` @26a5ac1): two views of each batch (here: Gaussian
  noise of std ``prd_noise`` on the standardized pixels, in place of their image augmentations), the encoder
  (the MLP without its last layer, 128 features) and a linear projection head to 64 dimensions; loss = SupCon
  (temperature 0.2) on the normalized projections + 1 x prototype loss (detached features, the current task's
  two prototypes) + 1 x PRD (temperature 2) over the earlier tasks' prototypes against a copy of the encoder and
  prototypes taken at the end of the previous task; prototypes one ``nn.Linear(128, 2, bias=False)`` per task,
  trained by SGD at 0.01 without momentum (their defaults). Prediction: the cosine of the normalized feature with
  every normalized prototype, all tasks' (their ``_classify_CI``, unseen tasks' untrained prototypes included).
  Replay-free: no buffer.

* ``IBCL``: :class:`gradwise.continual.IBCL` (Lu et al., arXiv:2305.14782; ibcl-anon/ibcl@7bdfcef) through
  :class:`gradwise.arena.continual_runs.IBCLLearner`: 3 prior chains N(0, s^2), s = 0.25/0.3/0.35, each task's
  posterior the chain's next prior, mean-field VI with the authors' start (mean 0, std 1) and KL (once per
  minibatch), one Adam step (lr ``ibcl_lr`` 0.01, theirs 1e-3 over 10 epochs) per chain per minibatch, on
  softmax regression (``ibcl_hidden`` (): the authors' "small" model is a logistic regression on features).
  Evaluated as the zero-shot model (combined means) for the uniform preference over the tasks seen.
  **Its claim** (issue 17: zero-shot vs trained per preference): after the stream, for ``ibcl_prefs``
  Dirichlet(1) preferences w, the preference-weighted test accuracy sum_i w_i acc_i of the zero-shot model
  against a model of the same architecture trained for w (SGD, ``lr``, ``steps_per_task`` steps on
  sum_i w_i CE_i with a minibatch of every task: all data at hand); shown when the paired difference
  (zero-shot minus trained, mean over the preferences, one value per seed) has its 95% interval above
  -:data:`PREF_MARGIN` (:func:`ibcl_verdict`).


* ``TAME``: :class:`gradwise.continual.TAME`, task-agnostic: one expert per detected task (the same MLP with the
  authors' sigmoid output, trained by their SGD: lr 0.1, momentum 0.9, weight decay 5e-4), switched by the loss
  shift detector (window 35, their split-MNIST value; threshold 3; smoothing 0.2); it is never told the task.
  Predictions come from the active expert (the selector network is not built), so its accuracy columns are not
  the paper's. Its claim is about detection: the steps at which its training expert changed against the true
  task boundaries, precision and recall within 10 steps (:func:`boundary_scores`, :func:`tame_verdict`; shown
  when both are at least 0.9, mean over seeds).


No method of issue 17's ``continual`` bullet is left out: :data:`NOT_YET` is empty.
entry of :data:`METHODS` once written.

Evaluation: :class:`gradwise.continual.ContinualEvaluator` on each seen task's test split after every
``eval_every`` steps, at each task's last step, and before each task's first step (the zero-shot point A-GEM's LCA
needs). Reported per method (mean and 95% interval over seeds): the final average accuracy over the 5 tasks;
avg-min-ACC from the per-iteration record and from the task-boundary evaluations only (what boundary evaluation
would report); WC-ACC; windowed forgetting WF10; LCA with beta 10; the stability gap (per task, accuracy at the
end of its training minus its minimum during the next task, averaged); the *hidden dip*, boundary min-ACC
minus per-iteration min-ACC: the forgetting that only per-iteration evaluation sees; and final ACC minus
min-ACC. The claim (for ER) counts as shown when the hidden dip is at least 2 points and both differences'
95% intervals over seeds (paired: one value per seed) are above 0 (:func:`claim_verdict`).
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE, fmt_ci
from gradwise.arena.continual_tame import boundary_scores, tame_verdict
from gradwise.arena.study import Column, Run, Selection, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "METHODS", "NOT_YET", "STUDY", "Learner", "split_digits", "train_one",
           "claim_verdict", "ibcl_verdict", "boundary_scores", "tame_verdict"]

HELP = ("split-digits, 5 class-incremental tasks, evaluated every iteration: finetune, ER, EWC, PRD, IBCL, TAME; "
        "final ACC, min-ACC (per iteration and at task boundaries), WC-ACC, WF10, LCA, stability gap; IBCL zero-shot "
        "vs trained per preference; TAME's boundary precision/recall")

N_TASKS = 5
# the claim's threshold: the dip boundary evaluation misses, in accuracy (fraction), for it to count as shown
DIP_SHOWN = 0.02
# IBCL's claim: how far (accuracy, fraction) below the trained models the zero-shot ones may be and still count
PREF_MARGIN = 0.02
IBCL_KEYS = ("pref_zero_shot", "pref_trained", "pref_gap")


@dataclass(frozen=True)
class Config:
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    steps_per_task: int = option(100, "SGD steps on each task", at_least=1)
    batch_size: int = option(32, "minibatch size (ER replays as many buffer samples per step)", at_least=1)
    lr: float = option(0.05, "SGD learning rate (no momentum)", at_least=1e-6)
    buffer_size: int = option(100, "ER: reservoir buffer size", at_least=1)
    ewc_lambda: float = option(1000.0, "EWC: penalty strength lambda", at_least=0.0)
    eval_every: int = option(1, "evaluate every N steps (and at each task's last step)", at_least=1)
    hidden: tuple[int, ...] = (128, 128)
    proj_dim: int = 64                 # PRD: projection head output
    prd_noise: float = 0.3             # PRD: std of the Gaussian noise making the two views
    supcon_temperature: float = 0.2    # PRD authors' defaults (utils/parser.py @26a5ac1)
    distill_temperature: float = 2.0
    prototypes_coef: float = 1.0
    distill_coef: float = 1.0
    prototypes_lr: float = 0.01
    lca_beta: int = 10
    wf_window: int = 10
    ibcl_extremes: int = option(3, "IBCL: prior chains (extreme points per task)", at_least=1)
    ibcl_prefs: int = option(4, "IBCL: preferences drawn for the zero-shot vs trained claim", at_least=1)
    ibcl_hidden: tuple[int, ...] = ()  # IBCL: its network, softmax regression as the authors' "small" model
    ibcl_lr: float = 0.01              # IBCL: Adam's learning rate on the variational parameters
    ibcl_prior_std: float = 0.25       # IBCL: first chain's prior std; chain j: x (1 + 0.2 j), as 0.25/0.3/0.35
    ibcl_init_sigma: float = 1.0       # IBCL: the variational std's start with init "zeros" (the authors' 1)
    ibcl_init: str = "zeros"           # IBCL: each task's fit starts at mean 0 (the authors'; "prior": the chain's)
    threads: int = 1


# ---------------------------------------------------------------------------------------------------- learners
class Learner:
    """One method's training state. ``step(x, y, task)`` is one optimizer step on a batch of task ``task``;
    ``start_task`` / ``end_task`` are called around each task; ``model`` and ``predict`` are what the
    evaluator evaluates. This base class is ``finetune``: cross-entropy on the current batch."""

    predict: Callable | None = None

    def __init__(self, cfg: Config, num_features: int, num_classes: int, gen) -> None:
        import torch

        from gradwise.arena.tasks import mlp

        self.cfg, self.gen = cfg, gen
        self.model = mlp(num_features, num_classes, cfg.hidden)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr)

    def loss(self, x, y, task: int):
        import torch.nn.functional as F

        return F.cross_entropy(self.model(x), y)

    def step(self, x, y, task: int) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.loss(x, y, task).backward()
        self.opt.step()

    def start_task(self, task: int) -> None:
        pass

    def end_task(self, task: int, x, y) -> None:
        pass


class _Replay(Learner):
    """ER: a reservoir buffer (Vitter's algorithm R over every sample of the stream) replayed with each batch."""

    def __init__(self, cfg, num_features, num_classes, gen) -> None:
        import torch

        super().__init__(cfg, num_features, num_classes, gen)
        self.buf_x = torch.empty(cfg.buffer_size, num_features)
        self.buf_y = torch.empty(cfg.buffer_size, dtype=torch.long)
        self.filled, self.seen = 0, 0

    def loss(self, x, y, task: int):
        import torch
        import torch.nn.functional as F

        if self.filled:
            pick = torch.randint(0, self.filled, (self.cfg.batch_size,), generator=self.gen)
            x, y = torch.cat([x, self.buf_x[pick]]), torch.cat([y, self.buf_y[pick]])
        return F.cross_entropy(self.model(x), y)

    def step(self, x, y, task: int) -> None:
        import torch

        super().step(x, y, task)
        for i in range(x.shape[0]):  # reservoir update after the step, so the batch is not replayed with itself
            self.seen += 1
            if self.filled < self.buf_x.shape[0]:
                slot, self.filled = self.filled, self.filled + 1
            else:
                slot = int(torch.randint(0, self.seen, (), generator=self.gen))
                if slot >= self.buf_x.shape[0]:
                    continue
            self.buf_x[slot], self.buf_y[slot] = x[i], y[i]


class _EWC(Learner):
    """EWC: one quadratic penalty per finished task, weighted by its diagonal empirical Fisher."""

    def __init__(self, cfg, num_features, num_classes, gen) -> None:
        super().__init__(cfg, num_features, num_classes, gen)
        self.anchors: list[tuple[dict, dict]] = []  # (Fisher, weights) per finished task

    def loss(self, x, y, task: int):
        loss = super().loss(x, y, task)
        for fisher, old in self.anchors:
            for name, p in self.model.named_parameters():
                loss = loss + self.cfg.ewc_lambda / 2 * (fisher[name] * (p - old[name]) ** 2).sum()
        return loss

    def end_task(self, task: int, x, y) -> None:
        import torch.nn.functional as F
        from torch.func import functional_call, grad, vmap

        params = {n: p.detach() for n, p in self.model.named_parameters()}

        def sample_loss(p, xi, yi):
            return F.cross_entropy(functional_call(self.model, p, (xi[None],)), yi[None])

        per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)
        fisher = {n: (g ** 2).mean(0) for n, g in per_sample.items()}
        self.anchors.append((fisher, {n: p.clone() for n, p in params.items()}))


class _PRD(Learner):
    """PRD (Asadi et al., ICML 2023) as the authors' ``RePE`` combines the three losses; see the module docstring."""

    def __init__(self, cfg, num_features, num_classes, gen) -> None:
        import torch
        from torch import nn

        super().__init__(cfg, num_features, num_classes, gen)
        self.encoder = self.model[:-1]  # the MLP without its classifier: the 128 features PRD works on
        width = cfg.hidden[-1]
        self.head = nn.Linear(width, cfg.proj_dim)
        per_task = num_classes // N_TASKS
        self.prototypes = nn.ModuleList(nn.Linear(width, per_task, bias=False) for _ in range(N_TASKS))
        self.per_task = per_task
        self.opt = torch.optim.SGD([{"params": list(self.encoder.parameters()) + list(self.head.parameters())},
                                    {"params": self.prototypes.parameters(), "lr": cfg.prototypes_lr}], lr=cfg.lr)
        self.old_encoder = self.old_prototypes = None
        self.predict = self._classify

    def _classify(self, model, x):
        import torch
        import torch.nn.functional as F

        protos = torch.cat([p.weight for p in self.prototypes])
        return F.normalize(self.encoder(x), dim=1) @ F.normalize(protos, dim=1).T

    def loss(self, x, y, task: int):
        import torch
        import torch.nn.functional as F

        from gradwise.continual import prd_loss, prototype_loss, supcon_loss

        cfg, b = self.cfg, x.shape[0]
        views = torch.cat([x + cfg.prd_noise * torch.randn(x.shape, generator=self.gen) for _ in range(2)])
        feats = self.encoder(views)
        proj = F.normalize(self.head(feats), dim=1)
        loss = supcon_loss(torch.stack(proj.split(b), 1), y, temperature=cfg.supcon_temperature)
        loss = loss + cfg.prototypes_coef * prototype_loss(feats, y.repeat(2) - task * self.per_task,
                                                           self.prototypes[task].weight)
        if self.old_encoder is not None and task > 0:
            with torch.no_grad():
                old_feats = self.old_encoder(views)
            loss = loss + cfg.distill_coef * prd_loss(
                feats, [p.weight for p in self.prototypes[:task]], [p.weight for p in self.old_prototypes[:task]],
                old_feats=old_feats, temperature=cfg.distill_temperature)
        return loss

    def end_task(self, task: int, x, y) -> None:
        self.old_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.old_prototypes = copy.deepcopy(self.prototypes).requires_grad_(False)


LearnerFactory = Callable[[Config, int, int, Any], Learner]
# The methods, in the leaderboard's default order: a new method is one entry here.
def _ibcl(cfg: Config, num_features: int, num_classes: int, gen) -> Any:
    from gradwise.arena.continual_runs import IBCLLearner

    return IBCLLearner(cfg, num_features, num_classes, gen)


def _tame(cfg: Config, num_features: int, num_classes: int, gen) -> Any:
    from gradwise.arena.continual_tame import TAMELearner

    return TAMELearner(cfg, num_features, num_classes, gen)


METHODS: dict[str, LearnerFactory] = {"finetune": Learner, "ER": _Replay, "EWC": _EWC, "PRD": _PRD, "IBCL": _ibcl,
                                      "TAME": _tame}
# issue 17's continual methods not in gradwise yet (none left): one METHODS entry each once they are
NOT_YET: dict[str, str] = {}
# ---------------------------------------------------------------------------------------------------- runs
def split_digits(cfg: Any = None, methods: tuple[str, ...] = ()) -> dict[str, Any]:
    """The digits task cut into 5 class-incremental tasks (classes in order 0-1, ..., 8-9): training and test
    pairs ``(x_k, y_k)`` per task."""
    from gradwise.arena.tasks import digits
    from gradwise.continual import split_stream

    d = digits(eval_split="test")
    order = list(range(d.num_classes))
    return dict(train=split_stream(d.x_train, d.y_train, N_TASKS, class_order=order),
                test=split_stream(d.x_eval, d.y_eval, N_TASKS, class_order=order),
                num_features=d.num_features, num_classes=d.num_classes)


def train_one(task: dict[str, Any], cfg: Config, method: str, seed: int) -> dict[str, Any]:
    import torch

    from gradwise.arena.runner import batches
    from gradwise.continual import ContinualEvaluator, min_acc

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    learner = METHODS[method](cfg, task["num_features"], task["num_classes"], gen)
    ev = ContinualEvaluator(learner.model, task["test"], every=cfg.eval_every, predict=learner.predict)
    step, boundary = 0, []
    start = time.perf_counter()
    for k, (xk, yk) in enumerate(task["train"]):
        learner.start_task(k)
        ev.evaluate_now(step, k)  # before the task's first update: LCA's zero-shot point
        for idx in batches(len(yk), cfg.batch_size, cfg.steps_per_task, gen):
            learner.model.train()
            learner.step(xk[idx], yk[idx], k)
            step += 1
            if ev.track(step, k) is None and step == (k + 1) * cfg.steps_per_task:
                ev.evaluate_now(step, k)  # each task's last step is always evaluated
        boundary.append(len(ev.history) - 1)
        learner.end_task(k, xk, yk)
    wall = time.perf_counter() - start
    extra = learner.report(task) if hasattr(learner, "report") else {}
    acc, cur = ev.accuracy, ev.current_task
    m = ev.metrics(windows=(cfg.wf_window,))
    idx = torch.tensor(boundary)
    boundary_min = float(min_acc(acc[:, idx], cur[idx])[-1])
    return dict(method=method, seed=seed, final_acc=m["final_avg_acc"], boundary_min_acc=boundary_min,
                avg_min_acc=m["avg_min_acc"], wc_acc=m["wc_acc"], wf10=m[f"wf{cfg.wf_window}"],
                lca=float(ev.lca(cfg.lca_beta)), stability_gap=m["stability_gap"],
                hidden_dip=boundary_min - m["avg_min_acc"], final_minus_min=m["final_avg_acc"] - m["avg_min_acc"],
                boundary_acc=acc[:, idx].T.tolist(), wall_s=wall,
                curve_steps=ev.steps.tolist(), task1_curve=acc[0].tolist(), **extra,
                **boundary_scores(learner, cfg.steps_per_task, N_TASKS))


def claim_verdict(summary: list[dict[str, Any]], method: str = "ER") -> str:
    """The claim's line for ``method``: per-iteration evaluation shows a dip that boundary evaluation hides.
    Shown when both paired differences are clear of 0: the hidden dip (boundary min-ACC minus per-iteration
    min-ACC) is at least :data:`DIP_SHOWN` with its 95% interval above 0, and final ACC minus min-ACC has its
    interval above 0."""
    row = next((s for s in summary if s["method"] == method), None)
    if row is None:
        return f"stability-gap claim: {method} not run"
    dip, half = row["hidden_dip_mean"], row["hidden_dip_ci"] or 0.0
    gap, gap_half = row["final_minus_min_mean"], row["final_minus_min_ci"] or 0.0
    shown = dip >= DIP_SHOWN and dip - half > 0 and gap - gap_half > 0
    return (f"stability-gap claim ({method}): per-iteration min-ACC {100 * row['avg_min_acc_mean']:.1f}% vs "
            f"task-boundary min-ACC {100 * row['boundary_min_acc_mean']:.1f}% (hidden dip "
            f"{fmt_ci(dip, half, 1, scale=100)} points) and final ACC {100 * row['final_acc_mean']:.1f}% (final "
            f"minus min-ACC {fmt_ci(gap, gap_half, 1, scale=100)} points): {'SHOWN' if shown else 'NOT SHOWN'} "
            f"(shown: hidden dip >= {100 * DIP_SHOWN:g} points, both intervals above 0)")


def ibcl_verdict(summary: list[dict[str, Any]]) -> str:
    """IBCL's claim line: zero-shot models per preference against models trained per preference. Shown when
    the paired difference (zero-shot minus trained preference-weighted accuracy) has its 95% interval above
    -:data:`PREF_MARGIN`."""
    row = next((s for s in summary if s["method"] == "IBCL" and "pref_gap_mean" in s), None)
    if row is None:
        return "IBCL zero-shot vs trained claim: IBCL not run"
    gap, half = row["pref_gap_mean"], row["pref_gap_ci"]
    shown = half is not None and math.isfinite(half) and gap - half > -PREF_MARGIN
    return (f"IBCL zero-shot vs trained claim: preference-weighted ACC zero-shot "
            f"{100 * row['pref_zero_shot_mean']:.1f}% (no training per preference) vs trained per preference "
            f"{100 * row['pref_trained_mean']:.1f}% "
            f"(zero-shot minus trained {fmt_ci(gap, half, 1, scale=100)} points): {'SHOWN' if shown else 'NOT SHOWN'}"
            f" (shown: interval above -{100 * PREF_MARGIN:g} points)")


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The driver's summary; IBCL's row adds its claim's means and intervals over seeds, TAME's the mean and
    interval of its boundary precision, recall and expert count."""
    from gradwise.arena.driver import summarize_rows
    from gradwise.arena.stats import mean_ci_fields

    out = summarize_rows(STUDY, rows, run.methods)
    mine = [r for r in rows if r["method"] == "IBCL" and "pref_gap" in r]
    tame = [r for r in rows if r["method"] == "TAME"]
    for s in out:
        if s["method"] == "IBCL" and mine:
            s.update(mean_ci_fields(mine, IBCL_KEYS))
        if s["method"] == "TAME" and tame:  # the other methods detect no boundaries (NaN, left out)
            s.update(mean_ci_fields(tame, ("boundary_precision", "boundary_recall", "n_experts")))
    return out


# ---------------------------------------------------------------------------------------------------- report
def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    c = run.cfg
    return (f"continual: split-digits, {N_TASKS} class-incremental tasks of 2 classes, MLP {c.hidden}, SGD lr "
            f"{c.lr:g}, {c.steps_per_task} steps x batch {c.batch_size} per task, evaluated every {c.eval_every} "
            f"step(s), {c.seeds} seed(s); ER buffer {c.buffer_size}, EWC lambda {c.ewc_lambda:g}; IBCL "
            f"{c.ibcl_extremes} chains, {c.ibcl_prefs} preferences")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    c = run.cfg
    return (f"best first by final average accuracy; min-ACC: avg-min-ACC over tasks 1-{N_TASKS - 1} from the "
            f"per-iteration record; boundary min-ACC: the same from the task-end evaluations only; hidden dip: "
            f"boundary min-ACC minus min-ACC; WF{c.wf_window}: windowed forgetting (window {c.wf_window} "
            f"evaluations), mean over tasks; LCA{c.lca_beta}: A-GEM's learning curve area; stab. gap: accuracy "
            f"at the end of a task minus its minimum during the next, mean over tasks 1-{N_TASKS - 1}; "
            f"{claim_verdict(summary)}; IBCL: the zero-shot model of the uniform preference over the tasks seen; "
            f"{ibcl_verdict(summary)}; {tame_verdict(summary, N_TASKS)}; not yet in gradwise: {', '.join(NOT_YET) or 'none'}; "
            f"{CI_NOTE}; {RANK_NOTE} "
            f"(ranked on final ACC)")


def _write_plot(out: Path, run: Run, rows: list[dict[str, Any]], summary: list[dict[str, Any]],
                title: str) -> None:
    """Task 1's test accuracy against the iteration, mean over seeds, one line per method; task ends marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gradwise.arena.plots import curve_styles, wrap_title

    styles = curve_styles(run.methods)
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for m in run.methods:
        mine = [r for r in rows if r["method"] == m]
        if not mine:
            continue
        acc = np.array([r["task1_curve"] for r in mine], dtype=float).mean(0) * 100
        ax.plot(mine[0]["curve_steps"], acc, label=m, color=styles[m]["color"], ls=styles[m]["ls"], lw=1.2)
    for k in range(1, N_TASKS):
        ax.axvline(k * run.cfg.steps_per_task, color="0.5", ls=":", lw=1)
    ax.set_xlabel("training iteration (dotted: task boundaries)")
    ax.set_ylabel("task 1 (digits 0-1) test accuracy (%), mean over seeds")
    ax.set_title(wrap_title(title, 110), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "task1_accuracy.png", dpi=120)
    plt.close(fig)


STUDY = register_study(Study(
    name="continual", help=HELP, description=__doc__, config=Config, methods=lambda: tuple(METHODS),
    select=Selection("methods", "method names"), setup=split_digits,
    run_one=lambda run, method, seed, shared: train_one(run.task, run.cfg, method, seed),
    summary_keys=("final_acc", "boundary_min_acc", "avg_min_acc", "wc_acc", "wf10", "lca", "stability_gap",
                  "hidden_dip", "final_minus_min", "wall_s"),
    rank_on="final_acc", summarize=_summarize, title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"), ci_column("final ACC (%)", "final_acc", 1, scale=100),
             ci_column("boundary min-ACC (%)", "boundary_min_acc", 1, scale=100),
             ci_column("min-ACC (%)", "avg_min_acc", 1, scale=100), ci_column("WC-ACC (%)", "wc_acc", 1, scale=100),
             ci_column("WF10 (%)", "wf10", 1, scale=100), ci_column("LCA10 (%)", "lca", 1, scale=100),
             ci_column("stab. gap (%)", "stability_gap", 1, scale=100),
             ci_column("hidden dip (%)", "hidden_dip", 1, scale=100),
             Column("s/run", lambda s: f"{s['wall_s_mean']:.1f}")),
    csv_skip=("boundary_acc", "curve_steps", "task1_curve", "prefs", "pref_zero_shot_each", "pref_trained_each",
              "tame_boundaries", *IBCL_KEYS),
    json_extra=lambda run, summary: {"not_yet": dict(NOT_YET), "claim": claim_verdict(summary),
                                     "ibcl_claim": ibcl_verdict(summary), "tame_claim": tame_verdict(summary, N_TASKS)},
    write_files=_write_plot, outputs=("task1_accuracy.png",),
    smoke=("--seeds", "1", "--steps-per-task", "3", "--batch-size", "8", "--eval-every", "2"),
))
