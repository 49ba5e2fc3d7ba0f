"""The guidance study's runs (:mod:`gradwise.arena.guidance_study`): sampling loops around the cached digits
teacher, driven by diffusers guiders (:func:`gradwise.diffusion.guided_sampling.guided_prediction`) and
diffusers schedulers, and the measures the study reports.

Three parts, every sample scored by the cached digits classifier:

* ``scale``: CFG and APG at guidance scales ``w``: accuracy of the intended label, out-of-range mass
  (mean over pixels of how far they lie outside [-1, 1]; the data has none), mean per-sample L2 norm (the data's beside it);
* ``ag``: full CFG vs Adaptive Guidance vs the conditional pass alone at one ``w``: network passes per sample,
  accuracy, distance to the full-CFG sample from the same noise;
* ``solver``: UniPC vs DC-Solver at NFE 5..10 (the teacher as a VP epsilon-model): distance to a 200-step
  DDIM sample from the same noise (the authors' reference).

APG's ``momentum``/``norm_threshold`` and AG's ``gamma_bar`` are chosen here by a small validation sweep
(noise drawn apart from every seed's test noise), not taken from the papers: their text giving them could not
be read (docs/coverage_notes.md).
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from gradwise.diffusion.guided_sampling import guided_prediction
from gradwise.diffusion.toy import digits_8x8, edm_sigmas, load_teacher

__all__ = ["GuidanceTask", "load_task", "sample", "cfg_guider", "apg_guider", "ag_guider", "measure",
           "tune_apg", "tune_ag", "scale_rows", "ag_rows", "solver_rows", "VALIDATION_SEED"]

VALIDATION_SEED = 10_000  # validation noise: apart from the seeds' test noise (seeds 0..N-1)


@dataclass
class GuidanceTask:
    teacher: Any
    classifier: Any
    data_norm: float  # mean per-sample L2 norm of the test digits
    num_classes: int


def load_task() -> GuidanceTask:
    teacher, clf = load_teacher("digits"), load_teacher("classifier")
    x, _ = digits_8x8("test")
    return GuidanceTask(teacher, clf, float(x.flatten(1).norm(dim=1).mean()), int(teacher.num_classes))


def labels_and_noise(n_per_class: int, seed: int, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    noise = torch.randn(len(y), 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return y, noise


# -- guiders -------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_guiders():
    """diffusers warns that guiders are experimental each time one is built (hundreds of times a run): once is
    enough, so the warning is let through for the first guider only."""
    log = logging.getLogger("diffusers.guiders.guider_utils")
    level = log.level
    if _built[0]:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
        _built[0] = True


_built = [False]


def cfg_guider(w: float) -> Any:
    from diffusers.guiders import ClassifierFreeGuidance

    with _quiet_guiders():
        return ClassifierFreeGuidance(guidance_scale=w)


def apg_guider(w: float, momentum: float, norm_threshold: float) -> Any:
    from gradwise.diffusion import adaptive_projected_guidance

    with _quiet_guiders():
        return adaptive_projected_guidance(w, momentum=momentum, norm_threshold=norm_threshold)


def ag_guider(w: float, gamma_bar: float) -> Any:
    from gradwise.diffusion import AdaptiveGuidance

    with _quiet_guiders():
        return AdaptiveGuidance(w, gamma_bar=gamma_bar)


# -- sampling ------------------------------------------------------------------------------------------------

@torch.no_grad()
def sample(task: GuidanceTask, guider: Any, y: torch.Tensor, noise: torch.Tensor, *, steps: int
           ) -> tuple[torch.Tensor, int]:
    """EDM's Euler sampler (``steps`` levels from sigma 80 to 0.002, then 0), each step's denoised prediction
    ``D(x, sigma, y)`` guided by ``guider`` (CFG is the same in the noise or the denoised prediction; APG projects
    on the denoised prediction; AG's cosine is taken between the denoised predictions: between EDM's noise
    predictions ``(x - D) / sigma`` it starts at 0.99998 and falls as sampling goes on, so AG would switch at
    step 0). Returns the sample and the model passes per sample."""
    sigmas = edm_sigmas(steps).tolist()
    null = torch.full_like(y, task.num_classes)
    net = task.teacher

    def model(x, sigma, *, class_labels):
        return net(x, sigma, class_labels)

    x = noise * sigmas[0]
    nfe = 0
    for i, (cur, nxt) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        out, n = guided_prediction(guider, model, x, cur, step=i, num_inference_steps=steps,
                                   inputs={"class_labels": (y, null)})
        nfe += n
        x = x + (nxt - cur) * (x - out.pred) / cur
    return x, nfe


@torch.no_grad()
def measure(task: GuidanceTask, x: torch.Tensor, y: torch.Tensor, reference: torch.Tensor | None = None
            ) -> dict[str, float]:
    """acc: classifier accuracy of ``y``; oor: out-of-range mass, the mean over pixels of ``max(|x| - 1, 0)``
    (0 for the data, in [-1, 1]); norm: mean per-sample L2 norm; dist: mean per-sample RMS distance to
    ``reference`` (NaN without one)."""
    acc = float((task.classifier(x).argmax(1) == y).double().mean())
    oor = float((x.abs() - 1).clamp_min(0).double().mean())
    norm = float(x.flatten(1).norm(dim=1).mean())
    dist = math.nan if reference is None else float((x - reference).flatten(1).pow(2).mean(1).sqrt().mean())
    return {"acc": acc, "oor": oor, "norm": norm, "dist": dist}


# -- validation sweeps (not the papers' values) ---------------------------------------------------------------

def tune_apg(task: GuidanceTask, cfg: Any) -> dict[str, Any]:
    """APG's (momentum, norm_threshold) over ``cfg.apg_momenta`` x ``cfg.apg_thresholds``, at ``cfg.tune_w`` on
    validation noise: the smallest out-of-range mass among settings whose accuracy is at least CFG's at the
    same ``w`` minus ``cfg.apg_acc_slack`` (none qualifies: the most accurate)."""
    y, noise = labels_and_noise(cfg.val_per_class, VALIDATION_SEED, task.num_classes)
    base = measure(task, sample(task, cfg_guider(cfg.tune_w), y, noise, steps=cfg.steps)[0], y)
    tried = []
    for m in cfg.apg_momenta:
        for r in cfg.apg_thresholds:
            x, _ = sample(task, apg_guider(cfg.tune_w, m, r), y, noise, steps=cfg.steps)
            tried.append({"momentum": m, "norm_threshold": r, **measure(task, x, y)})
    ok = [t for t in tried if t["acc"] >= base["acc"] - cfg.apg_acc_slack]
    best = min(ok, key=lambda t: (t["oor"], -t["acc"])) if ok else max(tried, key=lambda t: t["acc"])
    return {"momentum": best["momentum"], "norm_threshold": best["norm_threshold"], "cfg": base, "tried": tried}


def tune_ag(task: GuidanceTask, cfg: Any) -> dict[str, Any]:
    """AG's gamma_bar over ``cfg.ag_gammas`` at ``cfg.ag_w`` on validation noise: the smallest (most passes
    saved) whose mean distance to full CFG is at most ``cfg.ag_tolerance`` times the conditional pass's."""
    y, noise = labels_and_noise(cfg.val_per_class, VALIDATION_SEED, task.num_classes)
    full, _ = sample(task, cfg_guider(cfg.ag_w), y, noise, steps=cfg.steps)
    cond, _ = sample(task, cfg_guider(1.0), y, noise, steps=cfg.steps)
    cond_dist = measure(task, cond, y, full)["dist"]
    tried = []
    for g in sorted(cfg.ag_gammas):
        x, nfe = sample(task, ag_guider(cfg.ag_w, g), y, noise, steps=cfg.steps)
        tried.append({"gamma_bar": g, "nfe": nfe, **measure(task, x, y, full)})
    ok = [t for t in tried if t["dist"] <= cfg.ag_tolerance * cond_dist]
    best = ok[0] if ok else min(tried, key=lambda t: t["dist"])
    return {"gamma_bar": best["gamma_bar"], "cond_dist": cond_dist, "tried": tried}


# -- the three parts, one seed ---------------------------------------------------------------------------------

def scale_rows(task: GuidanceTask, cfg: Any, seed: int, apg: dict[str, Any]) -> list[dict[str, Any]]:
    y, noise = labels_and_noise(cfg.per_class, seed, task.num_classes)
    rows = []
    for w in cfg.scales:
        for name, guider in (("CFG", cfg_guider(w)), ("APG", apg_guider(w, apg["momentum"], apg["norm_threshold"]))):
            x, nfe = sample(task, guider, y, noise, steps=cfg.steps)
            rows.append({"method": f"{name} w={w:g}", "part": "scale", "seed": seed, "nfe": nfe, **measure(task, x, y)})
    return rows


def ag_rows(task: GuidanceTask, cfg: Any, seed: int, gamma_bar: float) -> list[dict[str, Any]]:
    y, noise = labels_and_noise(cfg.per_class, seed, task.num_classes)
    full, nfe_full = sample(task, cfg_guider(cfg.ag_w), y, noise, steps=cfg.steps)
    rows = [{"method": f"CFG w={cfg.ag_w:g} (full)", "part": "ag", "seed": seed, "nfe": nfe_full,
             **measure(task, full, y, full)}]
    for name, guider in ((f"AG w={cfg.ag_w:g}", ag_guider(cfg.ag_w, gamma_bar)), ("conditional only", cfg_guider(1.0))):
        x, nfe = sample(task, guider, y, noise, steps=cfg.steps)
        rows.append({"method": name, "part": "ag", "seed": seed, "nfe": nfe, **measure(task, x, y, full)})
    return rows


def eps_model(task: GuidanceTask, scheduler: Any, y: torch.Tensor, w: float):
    """The teacher as the epsilon-model of ``scheduler``'s VP process (``x_t = sqrt(abar) x0 + sqrt(1 - abar)
    eps``), classifier-free guided at ``w`` on the noise prediction; ``model(x_t, t)``. Differentiable in x_t."""
    abar = scheduler.alphas_cumprod.double()
    null = torch.full_like(y, task.num_classes)
    net = task.teacher

    def model(x, t):
        a = abar[int(t)]
        sigma = float(((1 - a) / a).sqrt())
        xe = x / float(a.sqrt())
        c = net(xe, sigma, y[:x.shape[0]])
        if w == 1.0:
            d = c
        else:
            u = net(xe, sigma, null[:x.shape[0]])
            d = u + w * (c - u)
        return (xe - d) / sigma

    return model


def _run_scheduler(scheduler: Any, model, noise: torch.Tensor, nfe: int) -> torch.Tensor:
    scheduler.set_timesteps(nfe)
    x = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t), t, x, return_dict=False)[0]
    return x


def solver_rows(task: GuidanceTask, cfg: Any, seed: int) -> list[dict[str, Any]]:
    from diffusers import DDIMScheduler, UniPCMultistepScheduler

    from gradwise.diffusion import DCSolverScheduler, reference_trajectory

    y, noise = labels_and_noise(cfg.per_class, seed, task.num_classes)
    fy, fnoise = labels_and_noise(cfg.fit_per_class, seed + 5_000, task.num_classes)
    # the DDPM linear schedule (1e-4..0.02, 1000 steps) of DC-Solver's defaults; DDIM without diffusers' default
    # clipping of the x0 prediction to [-1, 1] (UniPC does not clip; Stable Diffusion's DDIM, the authors'
    # reference, does not either): with it the 200- and 500-step samples differ by 0.57 RMS, without by 0.004
    def ddim():
        return DDIMScheduler(clip_sample=False)

    model, fit_model = eps_model(task, ddim(), y, cfg.solver_w), eps_model(task, ddim(), fy, cfg.solver_w)
    reference = _run_scheduler(ddim(), model, noise, cfg.reference_steps)
    fit_ref = reference_trajectory(fit_model, ddim(), fnoise, num_inference_steps=cfg.reference_steps)
    rows = []
    for nfe in cfg.solver_nfes:
        unipc = _run_scheduler(UniPCMultistepScheduler(final_sigmas_type="sigma_min"), model, noise, nfe)
        dc = DCSolverScheduler()
        ratios = dc.fit_compensation(fit_model, fnoise, fit_ref, num_inference_steps=nfe)
        dc_x = _run_scheduler(dc, model, noise, nfe)
        for name, x in (("UniPC", unipc), ("DC-Solver", dc_x)):
            row = {"method": f"{name} NFE={nfe}", "part": "solver", "seed": seed, "nfe": nfe,
                   **measure(task, x, y, reference)}
            if name == "DC-Solver":
                row["ratios"] = [round(r, 4) for r in ratios]
            rows.append(row)
    return rows
