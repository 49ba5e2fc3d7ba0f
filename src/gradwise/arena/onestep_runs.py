"""The ``one-step`` study's work: distilling the cached unequal-weight 2-D mixture teacher into a one-step
(or few-step) generator with DMD2's alternating loop, and what one run measures (:func:`run_method`).
The study record, summary and report are in ``onestep_study.py``.

The loop follows tianweiy/DMD2 @ 8d8fa55 ``main/edm/train_edm.py`` / ``edm_unified_model.py`` /
``edm_guidance.py`` at toy scale:

* the generator and the fake score network both start as copies of the teacher (``--initialie_generator``);
  the generator maps ``sigma_max * z`` at ``sigma_max`` (their ``conditioning_sigma`` 80) to a sample;
* every iteration updates the fake score (and the GAN discriminator); the generator is updated when
  ``iteration % ratio == 0`` (``dfake_gen_update_ratio``; 5 in the paper's ImageNet runs), so ``ratio``
  fake-score steps per generator step;
* noise levels: 1000 Karras levels in [0.002, 80] (rho 7); the distribution-matching loss draws an index in
  [20, 980] (``min/max_step_percent`` 0.02/0.98), the fake-score loss in [0, 999], the GAN noises both real
  and generated samples at an index in [0, 999] (``--diffusion_gan --diffusion_gan_max_timestep 1000``);
* AdamW (betas 0.9/0.999, weight decay 0.01) for both, gradients clipped at norm 10 (``max_grad_norm``);
* losses: :func:`gradwise.diffusion.dmd_loss`, :func:`~gradwise.diffusion.fake_score_loss`,
  :func:`~gradwise.diffusion.gan_generator_loss`, :func:`~gradwise.diffusion.gan_discriminator_loss`;
  f-distill (NVlabs/FastGen @ 34f30e8 ``f_distill.py``): the same loop with ``dmd_loss(scale=h, eps=1e-6)``,
  ``h = f_distill_weight(logits, t, divergence=...)`` from the discriminator's logits on the noised
  generated samples of the distribution-matching step, binned by noise index.
* few-step generators (DMD2's SDXL 4-step model): levels ``sigma`` at Karras indices 999, 749, 499, 249
  (their 4-step timesteps); a sample is the chain ``x <- G(x + s_k eps, s_k)``; training uses DMD2's backward
  simulation: a step k is drawn per generator update, the chain is run without gradient up to it, and the
  losses are taken on the output of step k.

Departures (toy scale): the teacher is the class-conditional mixture teacher used at its null label
(unconditional samples); the discriminator is a separate small MLP on ``(x_t, sigma)`` (DMD2 puts a
classifier head on the fake score's bottleneck; a toy MLP has none to share); learning rates, batch size,
GAN weights and the number of steps are set for 2-D data on a CPU (options of the study); no EMA of the
generator (DMD2 keeps none for ImageNet either), no learning-rate warm-up, no mixed precision.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["METHODS", "MethodSpec", "Discriminator", "generator_steps", "sample_generator", "mixture_reference",
           "light_modes", "evaluate", "run_method", "teacher_row"]

N_LEVELS = 1000            # DMD2's num_train_timesteps, Karras levels in [0.002, 80]
DM_RANGE = (20, 980)       # min/max_step_percent 0.02/0.98 of 1000
FEW_STEP_INDICES = (999, 749, 499, 249)   # DMD2's 4-step timesteps, on the Karras grid
MAX_GRAD_NORM = 10.0
# A sample counts for a mode within this distance of its centre (modes are 1.53 apart, std 0.05): wider than
# mode_recall's 0.25 default, as a one-step generator at toy scale spreads its modes more than the teacher.
EVAL_RADIUS = 0.5


@dataclass(frozen=True)
class MethodSpec:
    """One row of the study: the divergence of the generator's update (``"rkl"`` is DMD), the
    fake-score : generator update ratio, the GAN's weight in the generator loss (0: no GAN term) and the
    generator's sampling steps."""

    divergence: str = "rkl"
    ratio: int = 5
    gan: bool = False
    steps: int = 1


METHODS: dict[str, MethodSpec] = {
    "dmd": MethodSpec(),                          # DMD2 without GAN: reverse KL, ratio 5, one step
    "dmd-ratio1": MethodSpec(ratio=1),            # DMD's original one fake step per generator step
    "f-js": MethodSpec(divergence="js"),          # f-distill, Jensen-Shannon weight h(r)
    "f-kl": MethodSpec(divergence="kl"),          # f-distill, forward-KL weight h(r) = r
    "dmd-gan": MethodSpec(gan=True),              # DMD2: + GAN on real data
    "dmd-4step": MethodSpec(steps=4),             # DMD2's few-step generator with backward simulation
}


class Discriminator(nn.Module):
    """``(x_t [B, 2], sigma [B]) -> logit [B]``: EDM's input scaling ``x / sqrt(sigma^2 + sigma_data^2)``, an
    MLP with the noise embedding added to its hidden layer, one logit."""

    def __init__(self, sigma_data: float, width: int = 128):
        super().__init__()
        from gradwise.diffusion.toy import NoiseLabelEmbedding

        self.sigma_data = sigma_data
        self.embed = NoiseLabelEmbedding(width)
        self.inp = nn.Linear(2, width)
        self.hidden = nn.Linear(width, width)
        self.out = nn.Linear(width, 1)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        c_in = (sigma ** 2 + self.sigma_data ** 2).rsqrt().unsqueeze(1)
        h = nn.functional.silu(self.inp(c_in * x) + self.embed(sigma.log() / 4, None))
        return self.out(nn.functional.silu(self.hidden(h))).squeeze(1)


def _grid() -> Tensor:
    from gradwise.diffusion import karras_sigmas

    return karras_sigmas(N_LEVELS, dtype=torch.float32)


def generator_steps(steps: int) -> list[float]:
    """The generator's noise levels, first = sigma_max: Karras indices 999 (one step) or 999, 749, 499, 249."""
    grid = _grid()
    idx = FEW_STEP_INDICES[:1] if steps == 1 else FEW_STEP_INDICES
    if steps not in (1, len(FEW_STEP_INDICES)):
        raise ValueError(f"Invalid steps: {steps} (accepted: 1 or {len(FEW_STEP_INDICES)})")
    return [float(grid[i]) for i in idx]


def _chain(gen: nn.Module, z: Tensor, levels: list[float], upto: int, gnr: torch.Generator | None) -> Tensor:
    """Run the generator chain through step ``upto`` (0-based) from ``z``; fresh noise per step."""
    x = gen(z * levels[0], levels[0])
    for k in range(1, upto + 1):
        eps = torch.randn(z.shape, generator=gnr)
        x = gen(x + levels[k] * eps, levels[k])
    return x


@torch.no_grad()
def sample_generator(gen: nn.Module, z: Tensor, steps: int, gnr: torch.Generator) -> Tensor:
    levels = generator_steps(steps)
    return _chain(gen, z, levels, len(levels) - 1, gnr)


def mixture_reference(n: int, seed: int) -> Tensor:
    """``n`` samples of the true mixture the teacher was trained on."""
    from gradwise.diffusion.toy import MIXTURE_TEACHER_WEIGHTS, TEACHERS, mixture_2d

    d = TEACHERS["mixture"]["data"]
    x, _ = mixture_2d(n, modes=d["modes"], weights=MIXTURE_TEACHER_WEIGHTS, radius=d["radius"], std=d["std"],
                      generator=torch.Generator().manual_seed(seed))
    return x


def light_modes(count: int = 2) -> list[int]:
    """The ``count`` lightest modes of the teacher's mixture."""
    from gradwise.diffusion.toy import MIXTURE_TEACHER_WEIGHTS

    w = MIXTURE_TEACHER_WEIGHTS
    return sorted(range(len(w)), key=lambda k: w[k])[:count]


def evaluate(x: Tensor, ref: Tensor) -> dict[str, float]:
    """Energy distance to the true mixture (``ref``), mode recall (all modes), light-mode recall and mass:
    the share of the samples within :data:`EVAL_RADIUS` of a light mode's centre over its weight (1: full
    weight)."""
    from gradwise.diffusion.toy import (MIXTURE_TEACHER_WEIGHTS, TEACHERS, energy_distance, mixture_2d_centers,
                                        mode_recall)
    from gradwise.diffusion.toy.metrics import MODE_RECALL_FRACTION

    if not bool(torch.isfinite(x).all()):
        return {"ed": math.inf, "recall": 0.0, "light_recall": 0.0, "light_mass": 0.0}
    d = TEACHERS["mixture"]["data"]
    centers = mixture_2d_centers(d["modes"], d["radius"])
    w = torch.tensor(MIXTURE_TEACHER_WEIGHTS, dtype=torch.float64)
    w = w / w.sum()
    dist = torch.cdist(x.double(), centers.double())
    near = dist.min(1)
    share = torch.bincount(near.indices[near.values <= EVAL_RADIUS], minlength=len(w)).double() / x.shape[0]
    light = light_modes()
    return {"ed": float(energy_distance(x, ref)),
            "recall": float(mode_recall(x, centers, MIXTURE_TEACHER_WEIGHTS, EVAL_RADIUS)),
            "light_recall": float((share[light] >= MODE_RECALL_FRACTION * w[light]).double().mean()),
            "light_mass": float(share[light].sum() / w[light].sum())}


def _adamw(module: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.999),
                             weight_decay=0.01, foreach=True)


def _step(opt: torch.optim.Optimizer, module: nn.Module, loss: Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), MAX_GRAD_NORM)
    opt.step()


def run_method(spec: MethodSpec, teacher: nn.Module, seed: int, cfg: Any, ref: Tensor,
               eval_noise: Tensor) -> dict[str, Any]:
    """Distil ``teacher`` with ``spec`` for ``cfg.gen_steps`` generator updates (``spec.ratio`` fake-score
    updates each); returns the final metrics and the energy-distance curve at ``cfg.checkpoints`` points."""
    from gradwise.diffusion import (dmd_loss, f_distill_weight, fake_score_loss, gan_discriminator_loss,
                                    gan_generator_loss)

    torch.manual_seed(seed)
    gnr = torch.Generator().manual_seed(seed)
    grid = _grid()
    sigma_data = float(teacher.sigma_data)
    gen = copy.deepcopy(teacher).requires_grad_(True).train()
    fake = copy.deepcopy(teacher).requires_grad_(True).train()
    use_disc = spec.gan or spec.divergence != "rkl"
    disc = Discriminator(sigma_data) if use_disc else None
    opt_g, opt_f = _adamw(gen, cfg.gen_lr), _adamw(fake, cfg.fake_lr)
    opt_d = _adamw(disc, cfg.fake_lr) if disc is not None else None
    levels = generator_steps(spec.steps)
    B = cfg.batch_size
    data_seed = 10_000 + seed
    every = max(cfg.gen_steps // cfg.checkpoints, 1)
    curve: list[float] = []
    dm_norm: list[float] = []
    gen_updates = 0
    for it in range(cfg.gen_steps * spec.ratio):
        z = torch.randn(B, 2, generator=gnr)
        k = int(torch.randint(len(levels), (1,), generator=gnr)) if len(levels) > 1 else 0
        if k:
            with torch.no_grad():
                x_prev = _chain(gen, z, levels, k - 1, gnr)
            x_in = x_prev + levels[k] * torch.randn(B, 2, generator=gnr)
        else:
            x_in = z * levels[0]
        if it % spec.ratio == 0:               # the generator's turn (COMPUTE_GENERATOR_GRADIENT)
            fake.requires_grad_(False)
            x = gen(x_in, levels[k])
            idx = torch.randint(DM_RANGE[0], DM_RANGE[1] + 1, (B,), generator=gnr)
            sig = grid[idx]
            with torch.no_grad():
                x_t = x + sig[:, None] * torch.randn(B, 2, generator=gnr)
                real_x0, fake_x0 = teacher(x_t, sig), fake(x_t, sig)
            scale, eps = None, 0.0
            if spec.divergence != "rkl":
                with torch.no_grad():
                    logits = disc(x_t, sig)
                scale = f_distill_weight(logits, idx.float(), divergence=spec.divergence,
                                         t_range=(float(DM_RANGE[0]), float(DM_RANGE[1] + 1)))
                eps = 1e-6
            loss = dmd_loss(x, real_x0, fake_x0, scale=scale, eps=eps).mean()
            dm_norm.append(float(loss.detach()))
            if spec.gan:
                disc.requires_grad_(False)
                gi = torch.randint(0, N_LEVELS, (B,), generator=gnr)
                noisy = x + grid[gi][:, None] * torch.randn(B, 2, generator=gnr)
                loss = loss + cfg.gan_weight * gan_generator_loss(disc(noisy, grid[gi])).mean()
                disc.requires_grad_(True)
            _step(opt_g, gen, loss)
            fake.requires_grad_(True)
            x = x.detach()
            gen_updates += 1
            if gen_updates % every == 0:
                curve.append(evaluate(sample_generator(gen, eval_noise, spec.steps, torch.Generator().manual_seed(1)),
                                      ref)["ed"])
        else:
            with torch.no_grad():
                x = gen(x_in, levels[k])
        # the fake score's (and discriminator's) turn, every iteration
        fi = torch.randint(0, N_LEVELS, (B,), generator=gnr)
        fs = grid[fi]
        pred = fake(x + fs[:, None] * torch.randn(B, 2, generator=gnr), fs)
        _step(opt_f, fake, fake_score_loss(pred, x, fs, sigma_data=sigma_data).mean())
        if disc is not None:
            real = mixture_reference(B, data_seed + it)
            di = torch.randint(0, N_LEVELS, (B,), generator=gnr)
            ds = grid[di]
            lr_ = disc(real + ds[:, None] * torch.randn(B, 2, generator=gnr), ds)
            lf = disc(x + ds[:, None] * torch.randn(B, 2, generator=gnr), ds)
            _step(opt_d, disc, gan_discriminator_loss(lr_, lf).mean())
    final = evaluate(sample_generator(gen, eval_noise, spec.steps, torch.Generator().manual_seed(1)), ref)
    tail = curve[len(curve) // 2:]
    finite = [v for v in tail if math.isfinite(v)]
    mean_tail = sum(finite) / len(finite) if finite else math.inf
    sd = (sum((v - mean_tail) ** 2 for v in finite) / max(len(finite) - 1, 1)) ** 0.5 if finite else math.inf
    return {**final, "ed_curve": curve, "ed_tail_sd": sd,
            "diverged": float(not math.isfinite(final["ed"]) or final["ed"] > cfg.diverge_ed),
            "nfe": len(levels), "iterations": cfg.gen_steps * spec.ratio}


@torch.no_grad()
def teacher_row(teacher: nn.Module, eval_noise: Tensor, ref: Tensor, steps: int) -> dict[str, Any]:
    """The teacher's own samples (EDM's Heun sampler, ``steps`` levels, at the null label) as a reference."""
    from gradwise.diffusion.toy import edm_sample

    x = edm_sample(teacher, eval_noise, steps=steps)
    return {**evaluate(x, ref), "nfe": 2 * steps - 1}
