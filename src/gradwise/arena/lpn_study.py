"""Study ``lpn``: learned proximal networks (Fang, Buchanan, Sulam, arXiv:2310.14344) trained with proximal
matching, L2 or L1, read through the regulariser they are the prox of; and the same network as the prior of a
plug-and-play deblurring.

Part 1, 1-D Laplacian (their ``exps/laplacian`` notebook, smaller): clean x ~ Laplace(0, 1), noisy
y = x + N(0, 1). The MAP denoiser is the prox of |x| (soft thresholding at 1), so a proximal-matching LPN
should give a regulariser phi(x) = |x| + c; an L2-trained one is the posterior mean, an L1-trained one the
posterior median, neither a prox of |x|. Methods ``laplace-l2``, ``laplace-l1`` (Adam lr 1e-3, ``steps``
updates) and ``laplace-pm`` (L1 for a third of the updates, then proximal matching with the authors' gamma
schedule, 4 stages from 8 gamma_min down to gamma_min = ``gamma_min``). Measured on a grid of [-3, 3]:
the regulariser's distance to |x| (RMS of phi - min phi - |x|; :func:`gradwise.sciml.lpn_regularizer`) and the
prox's to soft thresholding (RMS).

Part 2, 8x8 digits (scikit-learn's, in [0, 1]): an LPN on 64 pixels trained as a denoiser (noise 0.1, L1
pretraining then proximal matching, their gamma_min 0.08 sqrt(64)) on the training split; method
``digits-pnp``. Then (a) PnP-ADMM (:func:`gradwise.sciml.pnp_admm`, penalty ``rho``) deblurs 32 test
digits blurred by a 3x3 Gaussian kernel (std 1, zero padding) plus noise 0.01: the primal residual
||x_k - z_k|| at the end against the start, and the PSNR of the result against the blurred input's and
against Tikhonov regularisation with the same rho (no learned prior);
(b) the learned regulariser at clean test digits and at the same digits plus Gaussian noise of std 0.05, 0.1,
0.2 (the paper's perturbation study): it should rise with the noise.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from gradwise.arena.stats import CI_NOTE
from gradwise.arena.study import Column, Run, Study, option, register_study

__all__ = ["HELP", "Config", "CONFIG", "METHODS", "STUDY", "run_one", "laplace_run", "digits_run", "blur_ops"]

HELP = "learned proximal networks: proximal matching recovers |x| (1-D Laplacian); PnP-ADMM deblurs digits"
METHODS = ("laplace-pm", "laplace-l1", "laplace-l2", "digits-pnp")
NOISE_LEVELS = (0.05, 0.1, 0.2)


@dataclass(frozen=True)
class Config:
    steps: int = option(2000, "updates per 1-D Laplacian run", at_least=1)
    digits_steps: int = option(1000, "updates of the digits LPN", at_least=1)
    gamma_min: float = option(0.1, "last proximal-matching gamma (1-D)", at_least=1e-6)
    rho: float = option(0.1, "PnP-ADMM penalty rho (the regulariser's weight)", at_least=1e-6)
    admm_iters: int = option(60, "PnP-ADMM iterations", at_least=1)
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    inv_steps: int = option(500, "Adam steps of the regulariser's convex inversion", at_least=1)
    batch_size: int = 256
    hidden: int = 32
    layers: int = 2
    beta: float = 10.0
    digits_hidden: int = 128
    digits_batch: int = 128
    digits_noise: float = 0.1
    threads: int = 1


CONFIG = Config()


def _train(model, sample, steps: int, loss_at, lr_at, generator):
    """Adam, one batch per step (``sample(generator) -> (noisy, clean)``), ``clip_weights_`` after each step;
    ``loss_at(step) -> (name, gamma)`` chooses L1 / L2 / proximal matching."""
    import torch
    import torch.nn.functional as F

    from gradwise.sciml import proximal_matching_loss

    opt = torch.optim.Adam(model.parameters(), lr=lr_at(0))
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        noisy, clean = sample(generator)
        out = model(noisy)
        kind, gamma = loss_at(step)
        if kind == "l2":
            loss = (out - clean).pow(2).sum(1).mean()
        elif kind == "l1":
            loss = F.l1_loss(out, clean)
        else:
            loss = proximal_matching_loss(out, clean, gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.clip_weights_()
    return model


def _pm_schedule(steps: int, gamma_min: float):
    from gradwise.sciml import proximal_matching_gamma

    pretrain = steps // 3
    stages = 4 if steps - pretrain >= 4 else 1

    def loss_at(step):
        g = proximal_matching_gamma(step, total=steps, pretrain=pretrain, stages=stages, gamma_min=gamma_min) \
            if steps - pretrain >= stages else gamma_min
        return ("l1", None) if g is None else ("pm", g)

    return loss_at, (lambda step: 1e-3 if step < pretrain else 1e-4)


def laplace_run(cfg: Config, method: str, seed: int) -> dict[str, Any]:
    import torch

    from gradwise.sciml import LPN, lpn_regularizer

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    model = LPN(1, cfg.hidden, layers=cfg.layers, beta=cfg.beta).init_weights_(generator=gen)
    def sample(g):
        # Laplace by inverse CDF of a generator-driven uniform (Distribution.sample takes no generator)
        u = torch.rand(cfg.batch_size, 1, generator=g) - 0.5
        x = -torch.sign(u) * torch.log1p(-2 * u.abs())
        return x + torch.randn(cfg.batch_size, 1, generator=g), x

    if method == "laplace-pm":
        loss_at, lr_at = _pm_schedule(cfg.steps, cfg.gamma_min)
    else:
        kind = method.split("-")[1]
        loss_at, lr_at = (lambda s: (kind, None)), (lambda s: 1e-3)
    _train(model, sample, cfg.steps, loss_at, lr_at, gen)
    grid = torch.linspace(-3, 3, 61)[:, None]
    phi = lpn_regularizer(model, grid, steps=cfg.inv_steps)
    phi = phi - phi.min()
    with torch.no_grad():
        prox = model(grid)
    soft = torch.sign(grid) * (grid.abs() - 1).clamp(min=0)
    return {"phi_err": float((phi - grid[:, 0].abs()).pow(2).mean().sqrt()),
            "prox_err": float((prox - soft).pow(2).mean().sqrt()),
            "phi_at_2": float(phi[50]), "prox_at_0.5": float(prox[35, 0])}


def blur_ops(kernel_std: float = 1.0):
    """A 3x3 Gaussian blur of 8x8 images stored as [B, 64] (zero padding) and its adjoint."""
    import torch
    import torch.nn.functional as F

    t = torch.tensor([-1.0, 0.0, 1.0])
    k1 = torch.exp(-t ** 2 / (2 * kernel_std ** 2))
    k = (k1[:, None] * k1[None, :])
    k = (k / k.sum())[None, None]

    def A(v):
        return F.conv2d(v.reshape(-1, 1, 8, 8), k, padding=1).reshape(-1, 64)

    def At(w):
        return F.conv_transpose2d(w.reshape(-1, 1, 8, 8), k, padding=1).reshape(-1, 64)

    return A, At


def _psnr(x, ref) -> float:
    import torch

    mse = (x.clamp(0, 1) - ref).pow(2).mean(1)
    return float((10 * torch.log10(1.0 / mse)).mean())


def digits_run(cfg: Config, seed: int) -> dict[str, Any]:
    import torch
    from sklearn.datasets import load_digits

    from gradwise.sciml import LPN, lpn_regularizer, pnp_admm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(2000 + seed)
    x = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(7))
    train, test = x[perm[:1500]], x[perm[1500:1532]]
    model = LPN(64, cfg.digits_hidden, layers=2, beta=1.0).init_weights_(generator=gen)

    def sample(g):
        clean = train[torch.randint(0, train.shape[0], (cfg.digits_batch,), generator=g)]
        return clean + cfg.digits_noise * torch.randn(clean.shape, generator=g), clean

    loss_at, lr_at = _pm_schedule(cfg.digits_steps, 0.08 * math.sqrt(64))
    _train(model, sample, cfg.digits_steps, loss_at, lr_at, gen)
    A, At = blur_ops()
    y = A(test) + 0.01 * torch.randn(test.shape, generator=gen)
    res = pnp_admm(model, A, At, y, rho=cfg.rho, iters=cfg.admm_iters)
    # baseline without a learned prior: Tikhonov, (A^T A + rho I) x = A^T y, solved exactly on the 64 pixels
    mat = A(torch.eye(64)).T  # A as a [64, 64] matrix acting on columns
    tik = torch.linalg.solve(mat.T @ mat + cfg.rho * torch.eye(64), (y @ mat).T).T
    with torch.no_grad():
        denoised = model(test + cfg.digits_noise * torch.randn(test.shape, generator=gen))
    phis = [float(lpn_regularizer(model, test, steps=cfg.inv_steps).mean())]
    for s in NOISE_LEVELS:
        phis.append(float(lpn_regularizer(model, test + s * torch.randn(test.shape, generator=gen),
                                          steps=cfg.inv_steps).mean()))
    r = res.residual
    return {"resid_ratio": float(r[-1] / r[0]), "resid_last": float(r[-1]),
            "resid_monotone_tail": float((r[len(r) // 2:].diff() <= 1e-6).float().mean()),
            "psnr_blurred": _psnr(y, test), "psnr_pnp": _psnr(res.x, test),
            "psnr_gain": _psnr(res.x, test) - _psnr(y, test), "psnr_tikhonov": _psnr(tik, test),
            "psnr_denoise": _psnr(denoised, test),
            **{f"phi_{s:g}": p for s, p in zip((0.0, *NOISE_LEVELS), phis)},
            "phi_rises": float(all(b > a for a, b in zip(phis, phis[1:])))}


def run_one(cfg: Config, method: str, seed: int) -> dict[str, Any]:
    import torch

    if method not in METHODS:
        raise ValueError(f"Invalid method: {method!r} (accepted: {', '.join(METHODS)})")
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    out = laplace_run(cfg, method, seed) if method.startswith("laplace") else digits_run(cfg, seed)
    return {"method": method, "seed": seed, **out, "wall_s": time.perf_counter() - t0}


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gradwise.arena.stats import mean_ci

    out = []
    for m in run.methods:
        rs = [x for x in rows if x["method"] == m]
        if not rs:
            continue
        s: dict[str, Any] = {"method": m, "runs": len(rs), "wall_s_mean": statistics.fmean(x["wall_s"] for x in rs)}
        keys = ("phi_err", "prox_err") if m.startswith("laplace") else \
            ("resid_ratio", "psnr_blurred", "psnr_pnp", "psnr_gain", "psnr_tikhonov", "psnr_denoise", "phi_rises",
             *(f"phi_{v:g}" for v in (0.0, *NOISE_LEVELS)))
        for k in keys:
            s[k + "_mean"], s[k + "_ci"] = mean_ci([x[k] for x in rs])
        out.append(s)
    lap = sorted((s for s in out if s["method"].startswith("laplace")), key=lambda s: s["phi_err_mean"])
    for i, s in enumerate(lap):
        s["rank"], s["tied"] = i + 1, False
    for s in out:  # ranks are within each part; the digits part has one row
        if not s["method"].startswith("laplace"):
            s["rank"], s["tied"] = 1, False
    return lap + [s for s in out if not s["method"].startswith("laplace")]


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"lpn: 1-D Laplacian, LPN {cfg.hidden}x{cfg.layers + 1}, {cfg.steps} updates; digits 8x8 LPN "
            f"{cfg.digits_hidden}x3, {cfg.digits_steps} updates, PnP-ADMM rho {cfg.rho:g} x {cfg.admm_iters}; "
            f"{cfg.seeds} seed(s)")


def _ci(s, key, d=3):
    m, c = s.get(key + "_mean"), s.get(key + "_ci")
    if m is None or m != m:
        return "-"
    return f"{m:.{d}f}" + ("" if c is None or c != c else f" ± {c:.{d}f}")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    lines = ["Laplacian rows ranked on phi err = RMS of phi - |x| over [-3, 3] (phi shifted to min 0); prox err: RMS "
             "against soft thresholding at 1; ranks are within each part (the digits row is alone in its part)",
             CI_NOTE]
    for s in summary:
        if s["method"] == "digits-pnp":
            phis = ", ".join(f"{v:g}: {_ci(s, f'phi_{v:g}', 1)}" for v in (0.0, *NOISE_LEVELS))
            lines.append(f"digits: PSNR blurred {_ci(s, 'psnr_blurred', 2)} dB -> PnP-ADMM {_ci(s, 'psnr_pnp', 2)} "
                         f"dB (Tikhonov, same rho, no prior: {_ci(s, 'psnr_tikhonov', 2)} dB; LPN denoising at "
                         f"noise {run.cfg.digits_noise:g}: {_ci(s, 'psnr_denoise', 2)} dB); "
                         f"PnP residual ||x - z|| last/first {_ci(s, 'resid_ratio', 5)}; mean phi at noise std {phis}; "
                         f"phi rising in {s['phi_rises_mean'] * s['runs']:.0f}/{s['runs']} seeds")
    return "; ".join(lines)


STUDY = register_study(Study(
    name="lpn", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    run_one=lambda run, method, seed, _: run_one(run.cfg, method, seed),
    summarize=_summarize, title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"),
             Column("phi err", lambda s: _ci(s, "phi_err")),
             Column("prox err", lambda s: _ci(s, "prox_err")),
             Column("PnP dB gain", lambda s: _ci(s, "psnr_gain", 1)),
             Column("resid ratio", lambda s: _ci(s, "resid_ratio", 4)),
             Column("phi rises", lambda s: "-" if "phi_rises_mean" not in s
                    else f"{s['phi_rises_mean'] * s['runs']:.0f}/{s['runs']}"),
             Column("s/run", lambda s: f"{s['wall_s_mean']:.1f}")),
    outputs=(), smoke=("--seeds", "1", "--steps", "6", "--digits-steps", "6", "--admm-iters", "2",
                       "--inv-steps", "5"),
))
add_arguments, run = STUDY.add_arguments, STUDY.run
