"""The ``reward-diffusion`` study's work: the noisy reward model, the fine-tuning loops (ControlNet++, Ctrl-U,
AdjointDPM, D3PO, SFT on the winners), the DDIM policy with its per-step log-probabilities, the evaluation
and AdjointDPM's memory measurement. The study record, summary and report are in ``reward_diffusion_study.py``.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["Task", "make_task", "NoisyClassifier", "METHODS", "NOT_TESTED", "run_seed", "ddim_grid",
           "ddim_trajectories", "evaluate", "live_peak_bytes", "adjoint_memory"]

# methods of issue 18's list that are not implemented (their papers could not be read): reported as not tested
NOT_TESTED = ("find", "seppo")


@dataclass
class Task:
    """The cached teachers, the digits and an independent judge classifier (trained here, another seed)."""

    teacher: nn.Module
    clf: nn.Module
    judge: nn.Module
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    memory: dict[str, Any]


class NoisyClassifier(nn.Module):
    """A reward model whose output is wrong for a fraction ``p`` of its inputs: the classifier's logits,
    rolled by 1..9 classes (so the rewarded class is another digit) on the inputs a fixed pseudo-random
    function of the image picks. The choice is a function of the input (the fractional part of a fixed
    random projection, float64), so one image always gets the same output and two different images are
    corrupted independently, each with probability ``p``."""

    def __init__(self, clf: nn.Module, p: float = 0.3, seed: int = 0) -> None:
        super().__init__()
        self.clf, self.p = clf, float(p)
        g = torch.Generator().manual_seed(10_000 + seed)
        self.register_buffer("w", torch.randn(2, 64, generator=g, dtype=torch.float64))

    def corrupted(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mask [B] bool, shift [B] in 1..9) for images ``x [B, 1, 8, 8]``."""
        with torch.no_grad():
            h = (x.detach().to(torch.float64).flatten(1) @ self.w.T * 1000.0).frac().abs()
        return h[:, 0] < self.p, 1 + (h[:, 1] * 9).long().clamp(max=8)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.clf(x)
        mask, shift = self.corrupted(x)
        classes = torch.arange(logits.shape[1], device=x.device)
        idx = torch.where(mask[:, None], (classes[None] - shift[:, None]) % logits.shape[1], classes[None])
        return logits.gather(1, idx)


def log_p(logits_fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """reward(x, y) = log p(y | x) under ``logits_fn`` (:func:`gradwise.diffusion.toy.classifier_reward`'s
    reward for any logits function)."""
    return lambda x, y: logits_fn(x).log_softmax(1).gather(1, y.long()[:, None]).squeeze(1)


def make_task(cfg: Any) -> Task:
    from gradwise.diffusion.toy import digits_8x8, load_teacher, train_digits_classifier

    x, y = digits_8x8("train")
    xt, _ = digits_8x8("test")
    judge = train_digits_classifier(x, y, seed=1, epochs=cfg.judge_epochs).requires_grad_(False)
    task = Task(load_teacher("digits"), load_teacher("classifier"), judge, x, y, xt, {})
    if cfg.memory:
        task.memory = adjoint_memory(task.teacher, tuple(cfg.memory_steps), batch=cfg.memory_batch)
    return task


# ---------------------------------------------------------------------------------------------- evaluation
def labels(n: int) -> Tensor:
    return torch.arange(10).repeat(n // 10 + 1)[:n]


@torch.no_grad()
def evaluate(task: Task, sample: Callable[[Tensor, torch.Generator], Tensor], n: int, seed: int) -> dict[str, float]:
    """Draw ``n`` samples (labels 0..9 in turn) with ``sample(y, gen)``; accuracy of the reward classifier
    and of the judge, mean reward log p(y|x), feature Frechet distance to the test digits."""
    from gradwise.diffusion.toy import classifier_reward, feature_frechet

    y = labels(n)
    x = sample(y, torch.Generator().manual_seed(50_000 + seed))
    return {"acc": (task.clf(x).argmax(1) == y).float().mean().item(),
            "acc_judge": (task.judge(x).argmax(1) == y).float().mean().item(),
            "reward": classifier_reward(task.clf, x, y).mean().item(),
            "frechet": feature_frechet(task.clf, x, task.x_test).item()}


def edm_sampler(model: nn.Module, steps: int) -> Callable[[Tensor, torch.Generator], Tensor]:
    from gradwise.diffusion.toy import edm_sample

    return lambda y, g: edm_sample(model, torch.randn(len(y), 1, 8, 8, generator=g), steps=steps, class_labels=y)


# --------------------------------------------------------------------------------------- reward fine-tuning
def edm_loss(model: nn.Module, x: Tensor, y: Tensor, gen: torch.Generator, p_mean: float = -1.2,
             p_std: float = 1.2) -> Tensor:
    """EDM's denoising loss (the teacher's: log-normal sigma, Karras weight), scalar."""
    sd = model.sigma_data
    sigma = (torch.randn(len(x), generator=gen) * p_std + p_mean).exp()
    w = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
    out = model(x + sigma.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=gen), sigma, y)
    return (w.view(-1, 1, 1, 1) * (out - x) ** 2).mean()


def finetune_single_step(task: Task, cfg: Any, seed: int, *, kind: str, noisy: bool) -> nn.Module:
    """ControlNet++ (``kind="plain"``) or Ctrl-U (``"ctrl-u"``): diffusion loss on all levels + ``reward_weight``
    x the reward loss on single-step denoised training digits (noise <= ``reward_sigma``); the reward model is
    the classifier, or with ``noisy`` the :class:`NoisyClassifier` (``noise_p``)."""
    from gradwise.diffusion import single_step_reward_loss, uncertainty_weighted_reward_loss

    model = copy.deepcopy(task.teacher).requires_grad_(True).train()
    logits_fn = NoisyClassifier(task.clf, cfg.noise_p, seed) if noisy else task.clf
    reward = log_p(logits_fn)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, foreach=True)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.reward_steps):
        idx = torch.randint(len(task.y_train), (cfg.batch_size,), generator=gen)
        x, y = task.x_train[idx], task.y_train[idx]
        if kind == "ctrl-u":
            r = uncertainty_weighted_reward_loss(model, reward, x, y, logits_fn=logits_fn, sigma_max=cfg.reward_sigma,
                                                 reward_scale=cfg.reward_weight, u_scale=cfg.u_scale,
                                                 generator=gen)
        else:
            r = cfg.reward_weight * single_step_reward_loss(model, reward, x, y, sigma_max=cfg.reward_sigma,
                                                            generator=gen)
        loss = edm_loss(model, x, y, gen) + r.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


def finetune_adjoint(task: Task, cfg: Any, seed: int) -> nn.Module:
    """AdjointDPM: the reward of samples drawn by the Euler probability-flow sampler (``adjoint_steps``
    levels), its gradient in the weights by the adjoint method (``checkpoint="all"``: the same gradient, fewer
    denoiser calls than ``"log"``), Adam on ``-reward_weight * mean log p(y|x)``; no diffusion loss (as the paper)."""
    from gradwise.diffusion import adjoint_sample_grad
    from gradwise.diffusion.toy import classifier_reward, edm_sigmas

    model = copy.deepcopy(task.teacher).requires_grad_(True).eval()
    sigmas = edm_sigmas(cfg.adjoint_steps, dtype=torch.float32)[:-1]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.adjoint_lr, foreach=True)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.adjoint_updates):
        y = torch.randint(10, (cfg.adjoint_batch,), generator=gen)
        x_T = torch.randn(cfg.adjoint_batch, 1, 8, 8, generator=gen) * sigmas[0]
        opt.zero_grad(set_to_none=True)
        adjoint_sample_grad(model, x_T, sigmas, lambda x: -cfg.reward_weight * classifier_reward(task.clf, x, y).mean(),
                            wrt=("params",), class_labels=y, checkpoint="all")
        opt.step()
    return model.requires_grad_(False)


# ------------------------------------------------------------------------------------------- memory (AdjointDPM)
class _LiveBytes(TorchDispatchMode):
    """Peak bytes of live tensor storages created under the mode (a storage counts until it is freed)."""

    def __init__(self) -> None:
        super().__init__()
        self.cur = self.peak = 0

    def _free(self, key: int, n: int) -> None:
        self.cur -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import weakref

        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, Tensor):
                st = t.untyped_storage()
                if not getattr(st, "_rd_counted", False):
                    n = st.nbytes()
                    self.cur += n
                    self.peak = max(self.peak, self.cur)
                    try:
                        st._rd_counted = True
                        weakref.finalize(st, self._free, id(st), n)
                    except (AttributeError, TypeError):
                        pass
        return out


def live_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak of live tensor bytes allocated while ``fn`` runs (a dispatch-mode count, as AdjointDPM's test)."""
    with _LiveBytes() as m:
        fn()
    return m.peak


def adjoint_memory(model: nn.Module, steps: tuple[int, ...], *, batch: int = 16) -> dict[str, Any]:
    """Peak live bytes of one gradient of the reward through the sampler, per number of steps: AdjointDPM
    (``checkpoint="log"``), AdjointDPM storing every state (``"all"``) and autograd through the Euler sampler."""
    from gradwise.diffusion import adjoint_sample_grad
    from gradwise.diffusion.toy import edm_sigmas

    model = copy.deepcopy(model).requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(batch, 1, 8, 8, generator=gen) * 80.0
    y = labels(batch)

    def loss(x: Tensor) -> Tensor:
        return x.square().mean()

    def autograd(sigmas: Tensor) -> None:
        x = x_T
        for cur, nxt in zip(sigmas[:-1], sigmas[1:]):
            x = x + (nxt - cur) * (x - model(x, cur.expand(batch), y)) / cur
        loss(x).backward()

    out: dict[str, Any] = {"steps": list(steps), "batch": batch}
    for name in ("log", "all", "autograd"):
        peaks, secs = [], []
        for n in steps:
            sigmas = edm_sigmas(n + 1, dtype=torch.float32)[:-1]
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            if name == "autograd":
                peaks.append(live_peak_bytes(lambda: autograd(sigmas)))
            else:
                peaks.append(live_peak_bytes(lambda: adjoint_sample_grad(
                    model, x_T, sigmas, loss, wrt=("params",), class_labels=y, checkpoint=name)))
            secs.append(time.perf_counter() - t)
        out[name] = peaks
        out[name + "_seconds"] = secs
    return out


# ------------------------------------------------------------------------------------------------ DDIM policy
def ddim_grid(steps: int) -> Tensor:
    """alphas_cumprod of the DDIM steps, ``steps + 1`` values from sigma 80 to 0.002 (EDM's levels,
    alpha = 1 / (1 + sigma^2)), float32."""
    from gradwise.diffusion.toy import edm_sigmas

    return 1.0 / (1.0 + edm_sigmas(steps + 1, dtype=torch.float32)[:-1] ** 2)


def _ddim_eps(model: nn.Module, x_vp: Tensor, a: Tensor, y: Tensor) -> Tensor:
    """The epsilon-prediction of the EDM denoiser at the VP state ``x_vp = sqrt(a) (x0 + sigma eps)``."""
    sigma = ((1 - a) / a).sqrt()
    x = x_vp / a.sqrt()
    return (x - model(x, sigma.expand(len(x)), y)) / sigma


def ddim_mean_std(eps: Tensor, x_vp: Tensor, a: Tensor, a_prev: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std of the DDIM step with eta = 1 (DDIM Eqs. 12, 16)."""
    std = ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
    x0 = (x_vp - (1 - a).sqrt() * eps) / a.sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev - std ** 2).sqrt() * eps, std


@torch.no_grad()
def ddim_trajectories(model: nn.Module, y: Tensor, steps: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Stochastic DDIM (eta 1) from pure noise: the VP states ``[T + 1, B, 1, 8, 8]`` and the per-step
    log-probabilities ``[B, T]`` (:func:`gradwise.diffusion.ddim_step_logprob`). The image is
    ``states[-1] / sqrt(alpha_T)``."""
    from gradwise.diffusion import ddim_step_logprob

    alphas = ddim_grid(steps)
    x = torch.randn(len(y), 1, 8, 8, generator=gen)
    states, logps = [x], []
    for k in range(steps):
        a, a_prev = alphas[k], alphas[k + 1]
        eps = _ddim_eps(model, x, a, y)
        mean, std = ddim_mean_std(eps, x, a, a_prev)
        x = mean + std * torch.randn(x.shape, generator=gen)
        logps.append(ddim_step_logprob(eps, states[-1], x, a, a_prev))
        states.append(x)
    return torch.stack(states), torch.stack(logps, 1)


def ddim_images(states: Tensor, steps: int) -> Tensor:
    return states[-1] / ddim_grid(steps)[-1].sqrt()


def ddim_sampler(model: nn.Module, steps: int) -> Callable[[Tensor, torch.Generator], Tensor]:
    return lambda y, g: ddim_images(ddim_trajectories(model, y, steps, g)[0], steps)


def policy_logps(model: nn.Module, states: Tensor, y: Tensor, steps: int) -> Tensor:
    """Per-step log-probabilities ``[B, T]`` of stored trajectories ``states [T + 1, B, ...]`` under ``model``
    (one batched call over the steps)."""
    from gradwise.diffusion import ddim_step_logprob

    alphas = ddim_grid(steps)
    t, b = steps, states.shape[1]
    a = alphas[:-1].repeat_interleave(b)
    a_prev = alphas[1:].repeat_interleave(b)
    x, x_prev = states[:-1].reshape(t * b, 1, 8, 8), states[1:].reshape(t * b, 1, 8, 8)
    sigma = ((1 - a) / a).sqrt()
    xe = x / a.sqrt().view(-1, 1, 1, 1)
    eps = (xe - model(xe, sigma, y.repeat(t))) / sigma.view(-1, 1, 1, 1)
    return ddim_step_logprob(eps, x, x_prev, a, a_prev).reshape(t, b).T


def preference_pairs(task: Task, cfg: Any, seed: int) -> dict[str, Tensor]:
    """``pairs`` pairs of teacher DDIM trajectories per label, judged by the classifier reward (the higher
    log p(y|x) wins): winner and loser states, labels, the teacher's log-probabilities."""
    from gradwise.diffusion.toy import classifier_reward

    gen = torch.Generator().manual_seed(20_000 + seed)
    y = labels(cfg.pairs)
    s1, lp1 = ddim_trajectories(task.teacher, y, cfg.ddim_steps, gen)
    s2, lp2 = ddim_trajectories(task.teacher, y, cfg.ddim_steps, gen)
    with torch.no_grad():
        r1 = classifier_reward(task.clf, ddim_images(s1, cfg.ddim_steps), y)
        r2 = classifier_reward(task.clf, ddim_images(s2, cfg.ddim_steps), y)
    first = (r1 >= r2).view(1, -1, 1, 1, 1)
    return {"y": y, "win": torch.where(first, s1, s2), "lose": torch.where(first, s2, s1),
            "ref_win": torch.where(first.view(-1, 1), lp1, lp2), "ref_lose": torch.where(first.view(-1, 1), lp2, lp1)}


def finetune_d3po(task: Task, cfg: Any, seed: int, pairs: dict[str, Tensor]) -> nn.Module:
    """D3PO on the teacher's labelled pairs: every denoising step of a pair is one DPO decision
    (:func:`gradwise.preference.d3po_loss`, beta, eps = 0.1), reference = the teacher."""
    from gradwise.preference import d3po_loss

    model = copy.deepcopy(task.teacher).requires_grad_(True).eval()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.pref_lr, foreach=True)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.pref_updates):
        i = torch.randint(cfg.pairs, (cfg.pref_batch,), generator=gen)
        both = torch.cat([pairs["win"][:, i], pairs["lose"][:, i]], 1)
        lp = policy_logps(model, both, pairs["y"][i].repeat(2), cfg.ddim_steps)
        loss = d3po_loss(lp[:len(i)], lp[len(i):], pairs["ref_win"][i], pairs["ref_lose"][i], beta=cfg.beta).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.requires_grad_(False)


def finetune_sft(task: Task, cfg: Any, seed: int, pairs: dict[str, Tensor]) -> nn.Module:
    """Supervised fine-tuning on the winners only: the teacher's EDM loss on the winning images, same updates,
    batch (in images) and learning rate as D3PO."""
    model = copy.deepcopy(task.teacher).requires_grad_(True).train()
    x, y = ddim_images(pairs["win"], cfg.ddim_steps), pairs["y"]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.pref_lr, foreach=True)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.pref_updates):
        i = torch.randint(cfg.pairs, (2 * cfg.pref_batch,), generator=gen)
        loss = edm_loss(model, x[i], y[i], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------- the methods
def _edm(fit: Callable[[Task, Any, int], nn.Module]) -> Callable[..., tuple[Callable, str]]:
    return lambda task, cfg, seed, ctx: (edm_sampler(fit(task, cfg, seed), cfg.eval_steps), "edm")


def _ddim(fit: Callable[..., nn.Module]) -> Callable[..., tuple[Callable, str]]:
    return lambda task, cfg, seed, ctx: (ddim_sampler(fit(task, cfg, seed, ctx.get("pairs")), cfg.ddim_steps), "ddim")


# name -> (task, cfg, seed, ctx) -> (sampler, sampler name); a new method is one entry
METHODS: dict[str, Callable[..., tuple[Callable, str]]] = {
    "teacher": _edm(lambda task, cfg, seed: task.teacher),
    "controlnet++": _edm(lambda task, cfg, seed: finetune_single_step(task, cfg, seed, kind="plain", noisy=False)),
    "plain/noisy": _edm(lambda task, cfg, seed: finetune_single_step(task, cfg, seed, kind="plain", noisy=True)),
    "ctrl-u/noisy": _edm(lambda task, cfg, seed: finetune_single_step(task, cfg, seed, kind="ctrl-u", noisy=True)),
    "adjointdpm": _edm(finetune_adjoint),
    "teacher-ddim": _ddim(lambda task, cfg, seed, pairs: task.teacher),
    "sft-winners": _ddim(finetune_sft),
    "d3po": _ddim(finetune_d3po),
}
PREFERENCE = ("sft-winners", "d3po")


def run_seed(methods: tuple[str, ...], task: Task, cfg: Any, seed: int) -> list[dict[str, Any]]:
    """Every method of ``methods`` on seed ``seed``: fine-tune (seeded), sample ``eval_samples`` digits, score."""
    ctx: dict[str, Any] = {}
    if set(methods) & set(PREFERENCE):
        ctx["pairs"] = preference_pairs(task, cfg, seed)
    rows = []
    for m in methods:
        torch.manual_seed(seed)
        t = time.perf_counter()
        sampler, kind = METHODS[m](task, cfg, seed, ctx)
        secs = time.perf_counter() - t
        row = {"method": m, "seed": seed, "sampler": kind, "train_seconds": secs}
        row |= evaluate(task, sampler, cfg.eval_samples, seed)
        if not math.isfinite(row["frechet"]):
            row["frechet"] = float("nan")
        rows.append(row)
    return rows
