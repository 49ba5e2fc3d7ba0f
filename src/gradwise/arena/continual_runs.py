"""The ``continual`` study's IBCL learner and its claim's measurement: zero-shot models per preference against
models trained per preference (the study record, the other learners and the report are in
``continual_study.py``).

IBCL (:class:`gradwise.continual.IBCL`) keeps ``ibcl_extremes`` prior chains; on each task every chain fits
a mean-field Gaussian posterior over the MLP's weights by VI (Adam), one ELBO step per chain on each of the
study's minibatches. What the evaluator sees during the stream is the zero-shot model for the uniform
preference over the tasks seen so far, the task being fitted included (its weights: the combined means).

After the stream, :meth:`IBCLLearner.report` draws ``ibcl_prefs`` preferences ``w`` over the 5 tasks
(Dirichlet(1), seeded) and measures, for each, the preference-weighted test accuracy ``sum_i w_i acc_i`` of

* the zero-shot model: :meth:`~gradwise.continual.IBCL.model_for` ``(w)``, no training;
* a model trained for that preference: a fresh MLP trained with SGD (the study's ``lr``) for
  ``steps_per_task`` steps on ``sum_i w_i CE_i`` over a minibatch of ``batch_size`` from every task's training
  set (all data at hand: a rehearsal baseline with an unbounded buffer, retrained per preference).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

__all__ = ["IBCLLearner", "preference_accuracy"]


def preference_accuracy(predict, test: list[tuple[torch.Tensor, torch.Tensor]], w: list[float]) -> float:
    """``sum_i w_i acc_i`` with ``acc_i`` the accuracy of ``predict(x)`` (logits, argmax) on test set i."""
    with torch.no_grad():
        return sum(wi * float((predict(x).argmax(1) == y).float().mean()) for wi, (x, y) in zip(w, test))


class IBCLLearner:
    """IBCL in the study's learner interface (``model``, ``predict``, ``step``, ``start_task``, ``end_task``)
    plus ``report(task)``, the zero-shot vs trained comparison run once the stream is over."""

    def __init__(self, cfg: Any, num_features: int, num_classes: int, gen: torch.Generator) -> None:
        from gradwise.arena.tasks import mlp
        from gradwise.continual import IBCL

        self.cfg, self.gen = cfg, gen
        self.num_features, self.num_classes = num_features, num_classes
        self.model = mlp(num_features, num_classes, cfg.ibcl_hidden)
        stds = tuple(cfg.ibcl_prior_std * (1 + 0.2 * j) for j in range(cfg.ibcl_extremes))
        self.ibcl = IBCL(lambda: mlp(num_features, num_classes, cfg.ibcl_hidden), prior_stds=stds, lr=cfg.ibcl_lr,
                         init_sigma=cfg.ibcl_init_sigma, init=cfg.ibcl_init, generator=gen)
        self._version, self._cache = 0, (-1, None)
        self.predict = self._predict

    def _params(self) -> dict[str, torch.Tensor]:
        if self._cache[0] != self._version:
            k = len(self.ibcl.tasks) + self.ibcl.fitting
            post = self.ibcl.posterior_for([1 / k] * k, include_current=True)
            self._cache = (self._version, {n: mu for n, (mu, _) in post.items()})
        return self._cache[1]

    def _predict(self, model, x):
        return functional_call(self.model, self._params(), (x,))

    def start_task(self, task: int) -> None:
        self.ibcl.start_task()
        self._version += 1

    def step(self, x, y, task: int) -> None:
        self.ibcl.step(x, y)
        self._version += 1

    def end_task(self, task: int, x, y) -> None:
        self.ibcl.end_task()
        self._version += 1

    def report(self, task: dict[str, Any]) -> dict[str, Any]:
        from gradwise.arena.runner import batches
        from gradwise.arena.tasks import mlp

        cfg, test, train = self.cfg, task["test"], task["train"]
        n = len(train)
        prefs = _dirichlet(n, cfg.ibcl_prefs, self.gen)
        zero, trained = [], []
        for w in prefs:
            net = self.ibcl.model_for(w)
            zero.append(preference_accuracy(net, test, w))
            model = mlp(self.num_features, self.num_classes, cfg.ibcl_hidden)
            opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
            picks = [batches(len(yk), cfg.batch_size, cfg.steps_per_task, self.gen) for _, yk in train]
            for s in range(cfg.steps_per_task):
                loss = sum(wi * F.cross_entropy(model(xk[p[s]]), yk[p[s]])
                           for wi, (xk, yk), p in zip(w, train, picks))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            trained.append(preference_accuracy(model, test, w))
        zs, tr = sum(zero) / len(zero), sum(trained) / len(trained)
        return dict(pref_zero_shot=zs, pref_trained=tr, pref_gap=zs - tr, prefs=[list(map(float, w)) for w in prefs],
                    pref_zero_shot_each=zero, pref_trained_each=trained)


def _dirichlet(n: int, count: int, gen: torch.Generator) -> list[list[float]]:
    """``count`` draws from Dirichlet(1, ..., 1) over ``n`` tasks (normalized exponentials), seeded by ``gen``."""
    e = -torch.log(torch.rand(count, n, generator=gen, dtype=torch.float64))
    return (e / e.sum(1, keepdim=True)).tolist()
