r"""Imprecise Bayesian Continual Learning (IBCL): a knowledge base of per-task Gaussian posteriors over the
weights (the extreme points of a finitely generated credal set, FGCS) and, for any preference over the tasks
seen, a model made by a convex combination of them, without training (zero-shot).

Paper: Lu, Caprio, Eaton, Lee, "IBCL: Zero-shot Model Generation for Task Trade-offs in Continual Learning",
arXiv:2305.14782. Authors' code: github.com/ibcl-anon/ibcl, commit 7bdfcef ("Initial submission":
``ibcl_main/fgcs_update.py``, ``ibcl_main/zero_shot_model_locate.py``), pyro. Only the paper's abstract and
introduction could be read here (docs/coverage_notes.md), so the math below is the code's; the paper's
distance check for a sublinear knowledge base is taken from its later code (see ``discard_threshold``).

**Knowledge base (FGCS update).** There are :math:`m` prior chains; chain :math:`j` starts at
:math:`p_j^0 = \mathcal N(0, s_j^2 I)` (``prior_stds``, theirs 0.25, 0.3, 0.35). On task :math:`i` each chain
fits a mean-field Gaussian :math:`q_{ij}(\theta) = \mathcal N(\mu_{ij}, \operatorname{diag}\sigma_{ij}^2)` by
variational inference with prior :math:`q_{i-1,j}` (the chain's previous posterior, :math:`p_j^0` on the first
task): Adam on, per minibatch :math:`B`,

.. math:: \mathcal L(\mu, \sigma) = -\sum_{(x, y) \in B} \log p(y \mid x, \theta) + \mathrm{KL}(q \,\|\, q_{i-1,j}),
          \qquad \theta = \mu + \sigma \odot \varepsilon,\ \varepsilon \sim \mathcal N(0, I)

(one sample per step; :math:`\sigma = e^{u}` with :math:`\mu` initialized at 0 and :math:`\sigma` at 1, as
their ``general_guide``; the KL counts once per minibatch, as their unscaled ``pyro.plate``). The
extreme points of task :math:`i` are :math:`q_{i1}, \dots, q_{im}`.

**Zero-shot model for a preference.** For :math:`w` in the simplex over the :math:`k` tasks seen, every extreme
point of task :math:`i` gets :math:`\beta_{ij} = w_i / m` and the parameters are combined,

.. math:: \hat q_w = \mathcal N\Big(\sum_{ij} \beta_{ij}\,\mu_{ij},\ \operatorname{diag}\big(\textstyle\sum_{ij}
          \beta_{ij}\,\sigma_{ij}\big)^2\Big)

(their ``pref_convex_combination``: means and standard deviations combined linearly, not a mixture). Its
highest density region at level :math:`1 - \alpha` is, per weight, the interval
:math:`[\mu + \sigma z_{\alpha/2},\ \mu + \sigma z_{1-\alpha/2}]` (:func:`normal_hdr`, their ``compute_hdr``),
and a model is drawn from it as theirs ``sample_hdr`` does: :math:`\theta = l + u\,(h - l)` with **one**
:math:`u \sim U(0, 1)` per parameter tensor. :meth:`IBCL.model_for` returns the HDR's centre (the combined
mean) when ``alpha`` is None, a draw otherwise.

**Sublinear knowledge base** (``discard_threshold`` d; off by default, as at 7bdfcef). A new posterior whose
2-Wasserstein distance to a stored one is at most d is not stored: the stored one stands for it in the task's
extreme points and becomes the chain's next prior (their later ``fgcs_update_main_sublinear``). For diagonal
Gaussians :math:`W_2^2 = \lVert \mu_a - \mu_b \rVert^2 + \lVert \sigma_a - \sigma_b \rVert^2`
(:func:`gaussian_w2`).

Defaults: theirs at 7bdfcef (``prior_stds`` (0.25, 0.3, 0.35), Adam lr 1e-3, 10 epochs, :math:`\alpha` 0.5
in their main script). Departures: the KL term is computed in closed form, where their ``Trace_ELBO`` estimates
it from the same single sample (same expectation and gradient in expectation, less noise); the likelihood is
categorical on logits (``likelihood="categorical"``) or, as theirs, Bernoulli (``"bernoulli"``, on a logit
rather than their sigmoid output); their later code measures the distance as
:math:`\lVert\Delta\mu\rVert/n + \lVert\Delta\sigma\rVert/n` (with the standard deviations listed twice), the
closed-form :math:`W_2` is used here, the distance that published reviews of the paper quote for its
Algorithm 1 (its text was not readable here). Their 7bdfcef
``fgcs_update`` calls ``general_model`` with one argument too many (it does not run as committed).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from statistics import NormalDist

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from gradwise._validate import check_choice, check_int, check_positive, check_real
from gradwise.registry import register

__all__ = ["IBCL", "convex_combination", "gaussian_w2", "normal_hdr"]

IBCL_PAPER = "IBCL: Zero-shot Model Generation for Task Trade-offs in Continual Learning"
IBCL_CODE = "https://github.com/ibcl-anon/ibcl/tree/7bdfcef5a6c85fb9c4cda79040d06c8f668b8cfb"

Posterior = dict[str, tuple[Tensor, Tensor]]  # parameter name -> (mean, standard deviation)


def _weights(name: str, weights, n: int) -> list[float]:
    try:
        w = [float(v) for v in weights]
    except (TypeError, ValueError):
        w = None
    if w is None or len(w) != n or any(not math.isfinite(v) or v < 0 for v in w) or abs(sum(w) - 1) > 1e-3:
        raise ValueError(f"Invalid {name}: {weights!r} (accepted: {n} non-negative numbers summing to 1, "
                         "within 1e-3)")
    return w


def convex_combination(posteriors: Sequence[Posterior], weights: Sequence[float]) -> Posterior:
    r""":math:`\big(\sum_k \beta_k \mu_k, \sum_k \beta_k \sigma_k\big)` per parameter (their
    ``pref_convex_combination`` once the :math:`\beta_k` are set). ``weights``: non-negative, summing to 1."""
    if isinstance(posteriors, Mapping) or not isinstance(posteriors, Sequence) or not posteriors:
        raise ValueError(f"Invalid posteriors: {type(posteriors).__name__} (accepted: a non-empty sequence of "
                         "{name: (mean, std)} dicts)")
    w = _weights("weights", weights, len(posteriors))
    out: Posterior = {}
    for name in posteriors[0]:
        mu = sum(b * p[name][0] for b, p in zip(w, posteriors))
        sigma = sum(b * p[name][1] for b, p in zip(w, posteriors))
        out[name] = (mu, sigma)
    return out


def normal_hdr(mu: Tensor, sigma: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    r"""The :math:`1 - \alpha` highest density interval of :math:`\mathcal N(\mu, \sigma^2)`, elementwise:
    :math:`\mu + \sigma\,\Phi^{-1}(\alpha/2)` and :math:`\mu + \sigma\,\Phi^{-1}(1 - \alpha/2)` (their
    ``compute_hdr``)."""
    alpha = check_real("alpha", alpha, 0.0, 1.0, lo_open=True, hi_open=True)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    return mu - sigma * z, mu + sigma * z


def gaussian_w2(a: Posterior, b: Posterior) -> float:
    r"""2-Wasserstein distance between two mean-field Gaussians over the same parameters:
    :math:`\big(\sum \lVert\mu_a - \mu_b\rVert^2 + \lVert\sigma_a - \sigma_b\rVert^2\big)^{1/2}`."""
    if set(a) != set(b):
        raise ValueError(f"Invalid b: parameters {sorted(b)} (accepted: those of a, {sorted(a)})")
    sq = sum(float(((a[n][0] - b[n][0]) ** 2).sum() + ((a[n][1] - b[n][1]) ** 2).sum()) for n in a)
    return math.sqrt(sq)


def _kl(mu: Tensor, sigma: Tensor, prior: tuple[Tensor, Tensor]) -> Tensor:
    p_mu, p_sigma = prior
    return (torch.log(p_sigma / sigma) + (sigma ** 2 + (mu - p_mu) ** 2) / (2 * p_sigma ** 2) - 0.5).sum()


@register(kind="continual-learning", paper=IBCL_PAPER, year=2023, arxiv="2305.14782", code=IBCL_CODE,
          summary="knowledge base of per-task mean-field Gaussian posteriors (a finitely generated credal set); "
                  "a model per task preference by convex combination, zero-shot, with its HDR")
class IBCL:
    r"""IBCL (arXiv:2305.14782) on any ``nn.Module``: ``IBCL(model_factory)``, then per task
    ``learn_task(batches)`` (or ``start_task()``, ``step(x, y)`` per minibatch, ``end_task()``), then
    ``model_for(preference)``. See the module docstring for the math.

    ``model_factory()`` gives the network whose parameters become random (called once; its parameter values
    are not used). ``prior_stds``: one first-task prior :math:`\mathcal N(0, s^2)` per chain, so ``m =
    len(prior_stds)`` extreme points per task. ``lr``: Adam's (theirs 1e-3). ``epochs``: passes over the
    batches in :meth:`learn_task` (theirs 10). ``likelihood``: ``"categorical"`` (logits ``[B, C]``, integer
    labels) or ``"bernoulli"`` (one logit per sample, labels 0/1). ``init_sigma``: the variational standard
    deviation's start (theirs 1). ``kl_weight``: the KL term's factor per minibatch (theirs 1; ``B / N`` gives
    the usual minibatch ELBO). ``init``: where each task's fit starts, ``"zeros"`` (theirs: mean 0, std
    ``init_sigma``) or ``"prior"`` (the chain's prior: its last posterior; keeps a deep network's posteriors in
    one basin, so that their combination is a working network). ``discard_threshold``: the sublinear
    knowledge base's d (None: keep every posterior). ``generator``: the noise of the reparameterized samples.
    """

    def __init__(self, model_factory: Callable[[], nn.Module], *, prior_stds: Sequence[float] = (0.25, 0.3, 0.35),
                 lr: float = 1e-3, epochs: int = 10, likelihood: str = "categorical", init_sigma: float = 1.0,
                 kl_weight: float = 1.0, init: str = "zeros", discard_threshold: float | None = None,
                 generator: torch.Generator | None = None) -> None:
        if isinstance(model_factory, nn.Module) or not callable(model_factory):
            raise ValueError(f"Invalid model_factory: {model_factory!r} (accepted: a callable returning an "
                             "nn.Module)")
        net = model_factory()
        if not isinstance(net, nn.Module) or not any(True for _ in net.parameters()):
            raise ValueError(f"Invalid model_factory: it returned {type(net).__name__} (accepted: an nn.Module "
                             "with parameters)")
        if isinstance(prior_stds, (str, bytes)) or not isinstance(prior_stds, Sequence) or not prior_stds:
            raise ValueError(f"Invalid prior_stds: {prior_stds!r} (accepted: a non-empty sequence of numbers > 0)")
        self.prior_stds = tuple(check_positive("prior_stds", s) for s in prior_stds)
        self.lr = check_positive("lr", lr)
        self.epochs = check_int("epochs", epochs, 1)
        self.likelihood = check_choice("likelihood", likelihood, ("categorical", "bernoulli"))
        self.init_sigma = check_positive("init_sigma", init_sigma)
        self.kl_weight = check_real("kl_weight", kl_weight, 0.0)
        self.init = check_choice("init", init, ("zeros", "prior"))
        self.discard_threshold = None if discard_threshold is None else check_real(
            "discard_threshold", discard_threshold, 0.0)
        self.generator = generator
        self.template = net.requires_grad_(False)
        self.names = [n for n, _ in net.named_parameters()]
        self.buffer: list[Posterior] = []          # the stored extreme points
        self.tasks: list[list[int]] = []           # per task: its m extreme points, as buffer indices
        self.chain: list[int | None] = [None] * len(self.prior_stds)  # each chain's prior: a buffer index
        self._fit: list[tuple[dict[str, Tensor], dict[str, Tensor], torch.optim.Optimizer]] | None = None

    # ------------------------------------------------------------------------------------------ knowledge base
    @property
    def num_extremes(self) -> int:
        return len(self.prior_stds)

    @property
    def fitting(self) -> bool:
        """Whether a task is being fitted (between :meth:`start_task` and :meth:`end_task`)."""
        return self._fit is not None

    def prior(self, j: int) -> Posterior:
        """Chain ``j``'s current prior: its last posterior, or :math:`\\mathcal N(0, s_j^2)` before any task."""
        if self.chain[j] is not None:
            return self.buffer[self.chain[j]]
        s = self.prior_stds[j]
        return {n: (torch.zeros_like(p), torch.full_like(p, s)) for n, p in self.template.named_parameters()}

    def start_task(self) -> None:
        """Fresh variational parameters for each chain (mean 0 and std ``init_sigma``, or the chain's prior with
        ``init="prior"``) and an Adam per chain."""
        self._fit = []
        for j in range(self.num_extremes):
            if self.init == "prior":
                prior = self.prior(j)
                mu = {n: prior[n][0].clone().requires_grad_(True) for n in self.names}
                u = {n: prior[n][1].log().requires_grad_(True) for n in self.names}
            else:
                mu = {n: torch.zeros_like(p).requires_grad_(True) for n, p in self.template.named_parameters()}
                u = {n: torch.full_like(p, math.log(self.init_sigma)).requires_grad_(True)
                     for n, p in self.template.named_parameters()}
            opt = torch.optim.Adam([*mu.values(), *u.values()], lr=self.lr)
            self._fit.append((mu, u, opt))

    def _nll(self, out: Tensor, y: Tensor) -> Tensor:
        if self.likelihood == "bernoulli":
            return F.binary_cross_entropy_with_logits(out.reshape(y.shape), y.to(out.dtype), reduction="sum")
        return F.cross_entropy(out, y, reduction="sum")

    def step(self, x: Tensor, y: Tensor) -> float:
        """One ELBO step of every chain on the minibatch ``(x, y)``; returns the mean loss over the chains."""
        if self._fit is None:
            raise RuntimeError("step() before start_task()")
        if not torch.is_tensor(x) or not torch.is_tensor(y) or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"Invalid y: {getattr(y, 'shape', y)!r} (accepted: a tensor with one label per row "
                             f"of x, {getattr(x, 'shape', x)!r})")
        total = 0.0
        for j, (mu, u, opt) in enumerate(self._fit):
            prior = self.prior(j)
            sigma = {n: u[n].exp() for n in self.names}
            theta = {n: mu[n] + sigma[n] * torch.randn(mu[n].shape, generator=self.generator, dtype=mu[n].dtype)
                     for n in self.names}
            kl = sum(_kl(mu[n], sigma[n], prior[n]) for n in self.names)
            loss = self._nll(functional_call(self.template, theta, (x,)), y) + self.kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        return total / self.num_extremes

    def current(self) -> list[Posterior]:
        """The chains' posteriors as fitted so far on the current task (for evaluation during training)."""
        if self._fit is None:
            return []
        return [{n: (mu[n].detach().clone(), u[n].detach().exp()) for n in self.names} for mu, u, _ in self._fit]

    def end_task(self) -> list[int]:
        """Stores the task's posteriors as its extreme points (reusing a stored one within
        ``discard_threshold``) and makes them the chains' next priors; returns their buffer indices."""
        posts = self.current()
        if not posts:
            raise RuntimeError("end_task() before start_task()")
        self._fit = None
        idx = []
        for j, post in enumerate(posts):
            near = None
            if self.discard_threshold is not None and self.buffer:
                dists = [gaussian_w2(post, b) for b in self.buffer]
                k = min(range(len(dists)), key=dists.__getitem__)
                near = k if dists[k] <= self.discard_threshold else None
            if near is None:
                self.buffer.append(post)
                near = len(self.buffer) - 1
            idx.append(near)
            self.chain[j] = near
        self.tasks.append(idx)
        return idx

    def learn_task(self, batches: Iterable[tuple[Tensor, Tensor]], *, epochs: int | None = None) -> list[int]:
        """Fits the task's extreme points on ``batches`` (a re-iterable of ``(x, y)``) for ``epochs`` passes
        (default: the constructor's) and stores them (:meth:`end_task`)."""
        epochs = self.epochs if epochs is None else check_int("epochs", epochs, 1)
        self.start_task()
        for _ in range(epochs):
            for x, y in batches:
                self.step(x, y)
        return self.end_task()

    # ------------------------------------------------------------------------------------------ zero-shot
    def posterior_for(self, preference: Sequence[float], *, include_current: bool = False) -> Posterior:
        """:math:`\\hat q_w` for ``preference`` w over the tasks stored (plus, with ``include_current``, the
        task being fitted, as the last entry of w)."""
        groups = [[self.buffer[k] for k in t] for t in self.tasks]
        if include_current and self._fit is not None:
            groups.append(self.current())
        if not groups:
            raise RuntimeError("no task learned yet")
        w = _weights("preference", preference, len(groups))
        posts = [p for g in groups for p in g]
        beta = [wi / len(g) for wi, g in zip(w, groups) for _ in g]
        return convex_combination(posts, beta)

    def hdr_for(self, preference: Sequence[float], alpha: float = 0.5) -> dict[str, tuple[Tensor, Tensor]]:
        """Per parameter, the :math:`1 - \\alpha` HDR interval of :math:`\\hat q_w` (their ``compute_hdr``)."""
        return {n: normal_hdr(mu, sigma, alpha) for n, (mu, sigma) in self.posterior_for(preference).items()}

    def model_for(self, preference: Sequence[float], *, alpha: float | None = None,
                  generator: torch.Generator | None = None, include_current: bool = False) -> nn.Module:
        """A copy of the network for ``preference``: the combined mean (``alpha`` None), or a draw from the
        :math:`1 - \\alpha` HDR with one uniform number per parameter tensor, in ``named_parameters`` order
        (their ``sample_hdr``). No training."""
        post = self.posterior_for(preference, include_current=include_current)
        net = copy.deepcopy(self.template)
        with torch.no_grad():
            for n, p in net.named_parameters():
                mu, sigma = post[n]
                if alpha is None:
                    p.copy_(mu)
                else:
                    lo, hi = normal_hdr(mu, sigma, alpha)
                    p.copy_(lo + torch.rand(1, generator=generator, dtype=lo.dtype) * (hi - lo))
        return net

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The knowledge base: stored extreme points (means and stds), each task's indices and the chains."""
        return {"buffer": [{n: (m.clone(), s.clone()) for n, (m, s) in p.items()} for p in self.buffer],
                "tasks": [list(t) for t in self.tasks], "chain": list(self.chain)}

    def load_state_dict(self, state: Mapping) -> None:
        try:
            buffer, tasks, chain = state["buffer"], state["tasks"], state["chain"]
            ok = len(chain) == self.num_extremes and all(set(p) == set(self.names) for p in buffer) and all(
                len(t) == self.num_extremes and all(0 <= k < len(buffer) for k in t) for t in tasks) and all(
                c is None or 0 <= c < len(buffer) for c in chain)
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise ValueError(f"Invalid state: not an IBCL state_dict for parameters {self.names} and "
                             f"{self.num_extremes} chains")
        self.buffer = [{n: (m.clone(), s.clone()) for n, (m, s) in p.items()} for p in buffer]
        self.tasks = [list(t) for t in tasks]
        self.chain = list(chain)
        self._fit = None
