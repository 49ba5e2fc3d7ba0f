"""Study ``unlearning``: cheap unlearning methods against retraining without the forget set, on digits.

Per seed, an MLP learns scikit-learn's digits (1,347 training, 450 test images) from the whole training set
(the *original* model). A forget set is then drawn: a random ``forget_fraction`` of the training samples
(seeded per seed), or, with ``--forget-class K``, every training sample of class K; the rest is the retain
set. The oracle, **retrain**, trains the same architecture from the same initialization and batch seed on the
retain set only, for the original's epochs. Each cheap method starts from a copy of the original and runs a
small budget (``unlearn_epochs``, default 5 against the original's 30):

* **FT** -- fine-tuning: SGD on the retain set (cross-entropy);
* **GA** -- gradient ascent: SGD on the *negated* cross-entropy of the forget set (its own ``ga_lr``: ascent
  on a small set diverges at the fine-tuning rate);
* **RL** -- random labels: :class:`gradwise.unlearning.SalUn` with ``mask=None`` (each epoch, the forget
  batches with uniformly drawn labels, then the retain batches);
* **SalUn** -- the same with the saliency mask of :func:`gradwise.unlearning.saliency_mask` at
  ``salun_ratio`` 0.5 (the authors' ``with_0.5.pt``, the median rule; the mask is computed on the forget
  batches and its time is counted).

FT, RL and SalUn share ``unlearn_lr`` (default 0.01, momentum 0.9, weight decay 5e-4: SalUn's defaults); the
original and retrain use SGD momentum 0.9, weight decay 5e-4, a cosine learning rate from ``lr``.

Measures, each in % on the final model (eval mode): **forget acc** (accuracy on the forget set), **retain
acc**, **test acc** (on the test split; in the class scenario on the test samples of the other classes, as
the forgotten class's test accuracy is 0 by design), and **MIA**, a loss-threshold membership-inference
attack: per-sample cross-entropy losses; the threshold τ is calibrated *on the evaluated model* as the loss
that best separates the retain set (members) from the test split (non-members): among every observed loss
value τ (and -inf), the one maximizing balanced accuracy ``(P(loss_retain <= τ) + P(loss_test > τ)) / 2``,
the smallest τ on ties; MIA is the fraction of forget samples with ``loss <= τ``, i.e. predicted "member"
(lower: the forget set looks less like training data; retrain is the target, not 0). **Avg. gap** (the
SalUn paper's) is the mean over these four of ``|method - retrain|`` in points, per seed against that
seed's retrain, then mean and interval over seeds. Also: wall time of the unlearning (retrain: its training).

* **DMM** -- datamodel matching (:func:`gradwise.unlearning.datamodel_matching`, "Attribute-to-Delete: Machine
  Unlearning via Datamodel Matching", seed 155): per seed, ``dm_models`` MLPs of the same recipe are trained on
  random halves of the training set and :func:`gradwise.unlearning.fit_datamodels` (difference of means) gives
  each training point's effect on the logits of every point; the retrained model's logits on a forget point
  are predicted as the model's own minus that point's effect on itself (the authors' ``diagonal_only``; a probe
  on seed 0 with 64 models: the ridge weights, any penalty 0-100, predicted margins uncorrelated with the
  retrains' (r = -0.06), the full difference-of-means sum overshot (r = 0.07), the diagonal alone followed
  them (r = 0.88, a mean drop of 0.58 against the retrains' 0.80)), and the model is fine-tuned (the authors' Adam,
  MSE to the predicted logits, the forget set and 3x as many retain points, ``unlearn_epochs`` epochs, in
  minibatches of ``batch_size`` instead of their 512) to output them. ``dm_lr`` is 5e-3, not their 5e-4: on seed 0
  their rate left the model where it was in both scenarios (45 Adam steps), 5e-3 moved it towards the prediction. The datamodels are built once per seed (their time is the row's ``dm_s``, not in
  s/run) and serve every unlearning run of that seed.

**KLoM** (the same paper's KL divergence of margins, :func:`gradwise.unlearning.klom`, the authors' 20-bin
histogram): per seed, ``klom_models`` originals and as many retrains are trained (batched, from the same
initializations pairwise), every method unlearns each original, and per point the margins of the unlearned models
are compared with those of the retrains; **KLoM forget** and **KLoM test** are the means over the forget points and
over the test points (lower is better; the original's row is doing nothing; retrain has none).

Methods are the entries of :data:`METHODS` (name -> factory of one unlearning run).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.noisy_labels_study import digits_task
from gradwise.arena.stats import CI_NOTE, RANK_NOTE, fmt_ci, mean_ci_fields, rank_summaries
from gradwise.arena.study import Column, Run, Selection, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "METHODS", "NOT_YET", "CHEAP", "STUDY", "UnlearnJob", "forget_split",
           "loss_threshold_mia", "train_model", "evaluate"]

HELP = ("machine unlearning on digits (forget 10% random or one class): retrain oracle vs FT, gradient ascent, "
        "random labels, SalUn, DMM; forget/retain/test acc, loss-threshold MIA, avg gap to retrain, KLoM")

ORACLE, ORIGINAL = "retrain", "original"
METRICS = ("forget_acc", "retain_acc", "test_acc", "mia")
NOT_YET: dict[str, str] = {}


@dataclass(frozen=True)
class Config:
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    forget_class: int = option(-1, "-1: forget a random --forget-fraction of the training set; 0-9: forget every "
                               "training sample of that class", at_least=-1, below=10)
    forget_fraction: float = option(0.1, "with --forget-class -1: fraction of the training samples forgotten",
                                    at_least=0.001, below=1.0)
    epochs: int = option(30, "epochs of the original model and of retrain", at_least=1)
    lr: float = option(0.05, "SGD learning rate of the original and retrain (cosine to 0)", at_least=1e-6)
    unlearn_epochs: int = option(5, "epochs of FT, GA, RL and SalUn", at_least=1)
    unlearn_lr: float = option(0.01, "SGD learning rate of FT, RL and SalUn (constant)", at_least=1e-6)
    ga_lr: float = option(0.01, "SGD learning rate of gradient ascent (constant)", at_least=1e-6)
    salun_ratio: float = option(0.5, "SalUn: fraction of the weights in the saliency mask (1 would be RL)",
                                at_least=1e-3, below=1.0)
    dm_models: int = option(32, "DMM: models trained on random halves of the training set for the datamodels",
                            at_least=2)
    dm_lr: float = option(5e-3, "DMM: Adam learning rate of the matching (the authors' default: 5e-4)", at_least=1e-8)
    klom_models: int = option(8, "KLoM: originals and retrains per seed whose margins are compared", at_least=2)
    batch_size: int = option(64, "minibatch size", at_least=1)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    hidden: tuple[int, ...] = (128, 128)
    threads: int = 1


@dataclass
class UnlearnJob:
    """What a method's factory gets: ``model`` (a copy of the original, changed in place), the training set
    and its forget/retain index tensors, the config and a generator seeded for this (method, seed)."""

    model: Any
    x: Any
    y: Any
    forget_idx: Any
    retain_idx: Any
    num_classes: int
    cfg: Config
    generator: Any
    datamodel: Any = None  # DMM's datamodel weights (n, n, C), built once per seed

    def batches(self, idx: Any) -> "_Shuffled":
        return _Shuffled(self.x, self.y, idx, self.cfg.batch_size, self.generator)


class _Shuffled:
    """Minibatches ``(x, y)`` of ``idx``, reshuffled on ``generator`` at every pass (re-iterable, as
    ``SalUn.fit`` needs)."""

    def __init__(self, x: Any, y: Any, idx: Any, batch_size: int, generator: Any):
        self.x, self.y, self.idx, self.batch_size, self.generator = x, y, idx, batch_size, generator

    def __iter__(self):
        import torch

        for part in self.idx[torch.randperm(len(self.idx), generator=self.generator)].split(self.batch_size):
            yield self.x[part], self.y[part]


def _sgd_epochs(job: UnlearnJob, idx: Any, lr: float, sign: float) -> None:
    """``unlearn_epochs`` of SGD (momentum, weight decay) on ``sign * cross-entropy`` over ``idx``."""
    import torch
    import torch.nn.functional as F

    c = job.cfg
    opt = torch.optim.SGD(job.model.parameters(), lr=lr, momentum=c.momentum, weight_decay=c.weight_decay)
    job.model.train()
    for _ in range(c.unlearn_epochs):
        for xb, yb in job.batches(idx):
            opt.zero_grad(set_to_none=True)
            (sign * F.cross_entropy(job.model(xb), yb)).backward()
            opt.step()


def _fine_tune(job: UnlearnJob) -> None:
    _sgd_epochs(job, job.retain_idx, job.cfg.unlearn_lr, 1.0)


def _gradient_ascent(job: UnlearnJob) -> None:
    _sgd_epochs(job, job.forget_idx, job.cfg.ga_lr, -1.0)


def _random_labels(job: UnlearnJob, mask: Any = None) -> None:
    from gradwise.unlearning import SalUn

    c = job.cfg
    SalUn(job.model, mask, lr=c.unlearn_lr, momentum=c.momentum, weight_decay=c.weight_decay).fit(
        job.batches(job.forget_idx), job.batches(job.retain_idx), num_classes=job.num_classes,
        epochs=c.unlearn_epochs, generator=job.generator)


def _salun(job: UnlearnJob) -> None:
    from gradwise.unlearning import saliency_mask

    mask = saliency_mask(job.model, job.batches(job.forget_idx), ratio=job.cfg.salun_ratio)
    _random_labels(job, mask)


def _dmm(job: UnlearnJob) -> None:
    import torch

    from gradwise.unlearning import datamodel_matching, predict_retrain_outputs

    with torch.no_grad():
        own = job.model.eval()(job.x)
    target = predict_retrain_outputs(own, job.datamodel, job.forget_idx, diagonal_only=True)
    datamodel_matching(job.model, job.forget_idx, target, job.x, retain_idx=job.retain_idx,
                       epochs=job.cfg.unlearn_epochs, lr=job.cfg.dm_lr, batch_size=job.cfg.batch_size,
                       generator=job.generator)


# name -> one unlearning run on job.model (in place)
METHODS: dict[str, Callable[[UnlearnJob], None]] = {
    "FT": _fine_tune,
    "GA": _gradient_ascent,
    "RL": _random_labels,
    "SalUn": _salun,
    "DMM": _dmm,
}
CHEAP = ("FT", "GA", "RL", "SalUn")  # the methods SalUn's claim compares (DMM needs its datamodels: not cheap)


def forget_split(y: Any, cfg: Config, seed: int) -> tuple[Any, Any]:
    """``(forget_idx, retain_idx)``, sorted: the training samples of class ``cfg.forget_class``, or a random
    ``cfg.forget_fraction`` of them (at least one, at most all but one) drawn on a generator seeded by ``seed``."""
    import torch

    n = len(y)
    if cfg.forget_class >= 0:
        forget = (y == cfg.forget_class).nonzero().flatten()
    else:
        k = min(max(1, round(cfg.forget_fraction * n)), n - 1)
        forget = torch.randperm(n, generator=torch.Generator().manual_seed(30_000 + seed))[:k].sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[forget] = False
    if not keep.any() or len(forget) == 0:
        raise ValueError(f"Invalid forget set: {len(forget)} of {n} samples (accepted: a non-empty forget set that "
                         "leaves a non-empty retain set)")
    return forget, keep.nonzero().flatten()


def train_model(x: Any, y: Any, idx: Any, num_classes: int, cfg: Config, seed: int) -> Any:
    """The MLP trained on ``idx`` of the training set: initialization and batch order seeded by ``seed``
    (the original and retrain of a seed start from the same weights), ``cfg.epochs`` epochs of SGD with a
    cosine learning rate."""
    import torch
    import torch.nn.functional as F

    from gradwise.arena.tasks import mlp

    torch.manual_seed(seed)
    model = mlp(x.shape[1], num_classes, cfg.hidden)
    gen = torch.Generator().manual_seed(seed)
    steps = cfg.epochs * -(-len(idx) // cfg.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    batches = _Shuffled(x, y, idx, cfg.batch_size, gen)
    for _ in range(cfg.epochs):
        for xb, yb in batches:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
    return model


def loss_threshold_mia(member_loss: Any, nonmember_loss: Any, target_loss: Any) -> tuple[float, float]:
    """``(rate, tau)``: the loss threshold ``tau`` that best separates ``member_loss`` (predicted member when
    ``loss <= tau``) from ``nonmember_loss`` by balanced accuracy, among every observed loss value and
    ``-inf`` (the smallest on ties), and the fraction of ``target_loss`` at or below it."""
    import torch

    if len(member_loss) == 0 or len(nonmember_loss) == 0 or len(target_loss) == 0:
        raise ValueError("Invalid losses: an empty set (accepted: non-empty member, non-member and target losses)")
    losses = torch.cat([member_loss, nonmember_loss]).double()
    is_member = torch.cat([torch.ones(len(member_loss)), torch.zeros(len(nonmember_loss))]).double()
    order = torch.argsort(losses, stable=True)
    s, m = losses[order], is_member[order]
    tpr = m.cumsum(0) / len(member_loss)  # members at or below s[i]
    fpr = (1 - m).cumsum(0) / len(nonmember_loss)
    last = torch.ones(len(s), dtype=torch.bool)  # a threshold counts every tied loss: the last of each run
    last[:-1] = s[1:] > s[:-1]
    bal = torch.where(last, (tpr + 1 - fpr) / 2, torch.full_like(tpr, -1.0))
    best = int(torch.argmax(bal))  # the first maximum: the smallest threshold
    tau = float(s[best]) if float(bal[best]) > 0.5 else float("-inf")  # 0.5: calling nothing a member
    return float((target_loss.double() <= tau).double().mean()), tau


def evaluate(model: Any, x: Any, y: Any) -> tuple[float, Any]:
    """``(accuracy in %, per-sample cross-entropy losses)`` of ``model`` in eval mode."""
    import torch
    import torch.nn.functional as F

    model.eval()
    with torch.no_grad():
        out = model(x)
    return 100.0 * float((out.argmax(1) == y).double().mean()), F.cross_entropy(out, y, reduction="none")


def _measure(model: Any, task: Any, forget: Any, retain: Any, test_keep: Any) -> dict[str, float]:
    x, y = task.x_train, task.y_train
    f_acc, f_loss = evaluate(model, x[forget], y[forget])
    r_acc, r_loss = evaluate(model, x[retain], y[retain])
    t_acc, t_loss = evaluate(model, task.x_eval[test_keep], task.y_eval[test_keep])
    mia, tau = loss_threshold_mia(r_loss, t_loss, f_loss)
    return dict(forget_acc=f_acc, retain_acc=r_acc, test_acc=t_acc, mia=100.0 * mia, mia_threshold=tau)


def _setup(cfg: Config, methods: tuple[str, ...]) -> Any:
    """The digits task, after one throwaway SGD step: torch's first optimizer step loads lazy modules (about
    3 s here), which would otherwise land in seed 0's training time."""
    import torch

    layer = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    layer(torch.zeros(1, 2)).sum().backward()
    opt.step()
    return digits_task(cfg, methods)


def _run_seed(run: Run, seed: int) -> list[dict[str, Any]]:
    """The seed's original and retrain models, then every selected method on a copy of the original; each row
    with its gap to this seed's retrain."""
    import copy
    from functools import partial

    import torch

    from gradwise.arena.unlearning_runs import datamodel, ensemble, klom_scores

    cfg, task = run.cfg, run.task
    forget, retain = forget_split(task.y_train, cfg, seed)
    test_keep = task.y_eval != cfg.forget_class  # every test sample in the random scenario (forget_class -1)
    base = dict(seed=seed, n_forget=len(forget), n_retain=len(retain))
    rows = []
    models = {}
    x, y, n = task.x_train, task.y_train, len(task.y_train)
    for name, idx in ((ORIGINAL, torch.arange(n)), (ORACLE, retain)):
        t0 = time.perf_counter()
        models[name] = train_model(x, y, idx, task.num_classes, cfg, seed)
        rows.append(dict(method=name, **base, wall_s=time.perf_counter() - t0, dm_s=0.0,
                         **_measure(models[name], task, forget, retain, test_keep)))
    # KLoM's ensembles (batched; pair k of originals and retrains shares its initialization)
    ens_seeds = [1_000 * (seed + 1) + k for k in range(cfg.klom_models)]
    originals = ensemble(x, y, torch.arange(n), task.num_classes, cfg, ens_seeds)
    retrains = ensemble(x, y, retain, task.num_classes, cfg, ens_seeds)
    scores = partial(klom_scores, retrained=retrains, x_forget=x[forget], y_forget=y[forget],
                     x_test=task.x_eval[test_keep], y_test=task.y_eval[test_keep])
    rows[0].update(scores(originals))
    rows[1].update(klom_forget=math.nan, klom_test=math.nan)
    dm, dm_s = None, 0.0
    if "DMM" in run.methods:
        t0 = time.perf_counter()
        dm = datamodel(x, y, task.num_classes, cfg, seed)
        dm_s = time.perf_counter() - t0
    for i, name in enumerate(run.methods):
        def unlearn(original: Any, k: int) -> tuple[Any, float]:
            model = copy.deepcopy(original)
            job = UnlearnJob(model, x, y, forget, retain, task.num_classes, cfg,
                             torch.Generator().manual_seed(40_000 + 100 * seed + i + 10_000 * k), dm)
            t0 = time.perf_counter()
            METHODS[name](job)
            return model, time.perf_counter() - t0

        model, wall = unlearn(models[ORIGINAL], 0)
        rows.append(dict(method=name, **base, wall_s=wall, dm_s=dm_s if name == "DMM" else 0.0,
                         **_measure(model, task, forget, retain, test_keep),
                         **scores([unlearn(m, k + 1)[0] for k, m in enumerate(originals)])))
    oracle = rows[1]
    for r in rows:
        r["avg_gap"] = sum(abs(r[k] - oracle[k]) for k in METRICS) / len(METRICS)
    return rows


KEYS = (*METRICS, "avg_gap", "klom_forget", "klom_test", "wall_s", "dm_s")


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Retrain and the original first, unranked; the methods ranked on the average gap (lower first)."""
    def one(name: str) -> dict[str, Any]:
        mine = [r for r in rows if r["method"] == name]
        if name == ORACLE:  # no KLoM against itself
            nan = {f"{k}_{s}": math.nan for k in ("klom_forget", "klom_test") for s in ("mean", "std", "ci")}
            return {"method": name, "runs": len(mine), **mean_ci_fields(mine, [k for k in KEYS if "klom" not in k]),
                    **nan}
        return {"method": name, "runs": len(mine), **mean_ci_fields(mine, KEYS)}

    refs = [{**one(name), "rank": None, "tied": False} for name in (ORACLE, ORIGINAL)]
    return refs + rank_summaries([one(m) for m in run.methods], "avg_gap", higher_is_better=False)


def _lowest(summary: list[dict[str, Any]], names: tuple[str, ...], key: str, who: str, what: str) -> str:
    """Whether ``who`` has the lowest mean ``key`` among the ranked methods in ``names`` that ran, its interval
    clear of every other's (ties where the intervals overlap), in words."""
    from gradwise.arena.stats import tie_ranks

    group = [s for s in summary if s.get("rank") is not None and s["method"] in names]
    ran = [s["method"] for s in group]
    if who not in ran or len(ran) < 2:
        return f"not tested (needs {who} and another method)"
    ranks = dict(zip(ran, tie_ranks([s[key + "_mean"] for s in group], [s[key + "_ci"] for s in group],
                                    higher_is_better=False)))
    best = min(group, key=lambda s: s[key + "_mean"])["method"]
    mine = ranks[who]
    if mine.rank == 1 and not mine.tied:
        return f"shown ({who} has the smallest {what}, its interval clear of {', '.join(n for n in ran if n != who)})"
    if mine.rank == 1:
        tied = ", ".join(n for n in ran if n != who and ranks[n].rank == 1)
        return f"not shown (tied with {tied}: intervals overlap; smallest mean: {best})"
    return f"not shown ({who} ranks {mine.rank} of {len(ran)}; smallest {what}: {best})"


def claim_verdicts(run: Run, summary: list[dict[str, Any]]) -> dict[str, str]:
    """The issue's two claims, in words: SalUn's avg gap against the other cheap methods run, and DMM's KLoM on
    the forget set against every other method run (each ranked among those only, ties where the intervals
    overlap)."""
    return {"SalUn has the smallest gap to retrain among the cheap methods":
            _lowest(summary, CHEAP, "avg_gap", "SalUn", "avg gap"),
            "DMM has the lowest KLoM": _lowest(summary, tuple(METHODS), "klom_forget", "DMM", "KLoM on the forget set")
            + f" (on the test points: {_lowest(summary, tuple(METHODS), 'klom_test', 'DMM', 'KLoM')})"}


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    c = run.cfg
    what = f"class {c.forget_class}" if c.forget_class >= 0 else f"a random {c.forget_fraction:.0%}"
    return (f"unlearning: digits, MLP {c.hidden}, forget {what} of the training set; original and retrain "
            f"{c.epochs} epochs (SGD lr {c.lr:g} cosine), methods {c.unlearn_epochs} epochs (lr {c.unlearn_lr:g}, "
            f"GA {c.ga_lr:g}, SalUn mask {c.salun_ratio:g}, DMM Adam {c.dm_lr:g} on {c.dm_models} datamodel runs), KLoM "
            f"over {c.klom_models} models, {c.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    test = "the test samples of the other classes" if run.cfg.forget_class >= 0 else "the test split"
    verdicts = "; ".join(f"claim '{k}': {v}" for k, v in claim_verdicts(run, summary).items())
    return (f"ranked on avg gap (lower first): mean over forget, retain, test acc and MIA of |method - retrain| "
            f"(points), per seed; test acc on {test}; MIA: % of forget samples predicted member by a per-sample "
            f"loss threshold fitted (best balanced accuracy) to the losses of the retain set vs {test}; s/run: the "
            f"unlearning's wall time (retrain, original: training; DMM without its datamodels, built once per seed "
            f"in {_dm_time(summary)}); KLoM forget/test: mean over the forget/test points of the KL divergence of "
            f"the margins of {run.cfg.klom_models} unlearned models from those of as many retrains (20 bins; lower "
            f"is better; original: doing nothing); retrain (oracle) and original are not ranked; {CI_NOTE}; "
            f"{RANK_NOTE}; {verdicts}")


def _dm_time(summary: list[dict[str, Any]]) -> str:
    dmm = [s for s in summary if s["method"] == "DMM"]
    return f"{dmm[0]['dm_s_mean']:.1f} s" if dmm else "- (DMM not run)"


def _plot(out: Path, run: Run, rows: list[dict[str, Any]], summary: list[dict[str, Any]], title: str) -> None:
    """One panel per measure: mean over seeds and its 95% interval per method, retrain's mean as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gradwise.arena.plots import wrap_title

    names = [s["method"] for s in summary]
    labels = {"forget_acc": "forget acc (%)", "retain_acc": "retain acc (%)", "test_acc": "test acc (%)",
              "mia": "MIA: forget predicted member (%)", "avg_gap": "avg gap to retrain (points)",
              "klom_forget": "KLoM on the forget set (retrain: none)"}
    fig, axes = plt.subplots(1, len(labels), figsize=(21, 4))
    for ax, (key, label) in zip(axes, labels.items()):
        means = [s[key + "_mean"] if math.isfinite(s[key + "_mean"]) else 0.0 for s in summary]  # retrain's KLoM
        halves = [s[key + "_ci"] if math.isfinite(s[key + "_ci"]) else 0.0 for s in summary]  # one seed: none
        ax.bar(range(len(names)), means, yerr=halves, capsize=3,
               color=["0.6" if s.get("rank") is None else f"C{i}" for i, s in enumerate(summary)])
        if math.isfinite(summary[0][key + "_mean"]):
            ax.axhline(summary[0][key + "_mean"], color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(names)), names, rotation=45, fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(wrap_title(title, 170), fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "unlearning.png", dpi=110)
    plt.close(fig)


def _klom_column(label: str, key: str) -> Column:
    """KLoM's mean ± interval; a dash for retrain (compared with itself it has none)."""
    from gradwise.arena.stats import DASH

    return Column(label, lambda s: DASH if s["method"] == ORACLE else fmt_ci(s[key + "_mean"], s[key + "_ci"], 2))


def _methods_cell(s: dict[str, Any]) -> str:
    return f"{s['method']} (oracle)" if s["method"] == ORACLE else s["method"]


STUDY = register_study(Study(
    name="unlearning", help=HELP, description=__doc__, config=Config, methods=lambda: tuple(METHODS),
    select=Selection("methods", "method names"),
    setup=_setup, run_seed=_run_seed, summarize=_summarize, title=_title, notes=_notes,
    columns=(Column("method", _methods_cell, "left"), ci_column("forget acc", "forget_acc", 1),
             ci_column("retain acc", "retain_acc", 1), ci_column("test acc", "test_acc", 1),
             ci_column("MIA", "mia", 1), ci_column("avg gap", "avg_gap", 2), _klom_column("KLoM forget", "klom_forget"),
             _klom_column("KLoM test", "klom_test"), Column("s/run", lambda s: f"{s['wall_s_mean']:.2f}")),
    csv_fields=("method", "seed", "n_forget", "n_retain", *METRICS, "mia_threshold", "avg_gap", "klom_forget",
                "klom_test", "wall_s", "dm_s"),
    json_extra=lambda run, summary: {"claims": claim_verdicts(run, summary), "not_yet": NOT_YET},
    write_files=_plot, outputs=("unlearning.png",),
    smoke=("--seeds", "1", "--epochs", "2", "--unlearn-epochs", "1", "--dm-models", "4", "--klom-models", "2"),
))
