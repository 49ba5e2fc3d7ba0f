"""The runs of the ``consistency`` study: one consistency model trained from scratch with
:func:`gradwise.diffusion.consistency_training_loss` and evaluated with one- and two-step sampling.

Arms (``ARMS``: part, loss options):

* ``mix`` part (8-Gaussians, clean): ``ict`` (iCT: no-EMA teacher, Pseudo-Huber, lognormal levels),
  ``ema`` (an EMA teacher with the original CT's schedule mu(k) = exp(s0 ln mu0 / N(k)), mu0 = 0.9),
  ``l2`` (squared l2 in place of Pseudo-Huber), ``uniform`` (uniform in place of lognormal levels);
* ``out`` part (the same mixture with a fraction of its training points replaced by Student-t outliers):
  ``out-huber`` (iCT's Pseudo-Huber), ``out-cauchy`` (sLCT's Cauchy), and Cauchy with each of sLCT's
  other pieces: ``out-cauchy-ot`` (minibatch OT pairs), ``out-cauchy-diff`` (the low-noise diffusion
  loss, weight 5) and ``out-cauchy-scalec`` (scaling-c);
* ``dig`` part (class-conditional 8x8 digits, a smaller grid): ``dig-ict``, ``dig-ema``, ``dig-l2``.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any

__all__ = ["ARMS", "PARTS", "make_task", "run_one"]

ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "ict": ("mix", {}),
    "ema": ("mix", {"ema": True}),
    "l2": ("mix", {"metric": "l2"}),
    "uniform": ("mix", {"sigma_sampling": "uniform"}),
    "out-huber": ("out", {}),
    "out-cauchy": ("out", {"metric": "cauchy"}),
    "out-cauchy-ot": ("out", {"metric": "cauchy", "ot": True}),
    "out-cauchy-diff": ("out", {"metric": "cauchy", "diffusion_loss_weight": 5.0}),
    "out-cauchy-scalec": ("out", {"metric": "cauchy", "c": "scaling"}),
    "dig-ict": ("dig", {}),
    "dig-ema": ("dig", {"ema": True}),
    "dig-l2": ("dig", {"metric": "l2"}),
}
PARTS = {"mix": "2-D 8-Gaussians", "out": "2-D 8-Gaussians + Student-t outliers", "dig": "conditional digits"}
SIGMA_DATA = {"mix": 1.4, "out": 1.4, "dig": 0.75}  # per-coordinate std of the clean data (radius 2: sqrt 2)


def make_task(cfg, methods) -> dict[str, Any]:
    """The held-out references: clean mixture samples, the digits test set and the cached classifier."""
    import torch

    from gradwise.diffusion.toy import digits_8x8, mixture_2d

    task: dict[str, Any] = {}
    if any(ARMS[m][0] != "dig" for m in methods):
        task["mix_ref"] = mixture_2d(cfg.eval_samples, generator=torch.Generator().manual_seed(999_999))[0]
    if any(ARMS[m][0] == "dig" for m in methods):
        from gradwise.diffusion.toy import load_teacher

        task["digits_train"] = digits_8x8("train")
        task["digits_test"] = digits_8x8("test")
        task["clf"] = load_teacher("classifier")
    return task


def _outliers(n: int, df: float, scale: float, seed: int):
    import numpy as np
    import torch

    rng = np.random.default_rng(10_000 + seed)
    return torch.from_numpy(rng.standard_t(df, size=(n, 2)) * scale).float()


def _train_data(cfg, part: str, seed: int):
    import torch

    from gradwise.diffusion.toy import mixture_2d

    x, _ = mixture_2d(cfg.train_samples, generator=torch.Generator().manual_seed(seed))
    if part == "out":
        k = int(round(cfg.outlier_frac * x.shape[0]))
        pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(20_000 + seed))[:k]
        x = x.clone()
        x[pick] = _outliers(k, cfg.outlier_df, cfg.outlier_scale, seed)
    return x


def run_one(cfg, method: str, seed: int, task: dict[str, Any]) -> dict[str, Any]:
    import torch

    from gradwise.diffusion import consistency_sample, consistency_training_loss, ict_discretization_steps
    from gradwise.diffusion.toy import ConsistencyDenoiser, ToyConv8x8, ToyMLP, energy_distance, feature_frechet

    t0 = time.perf_counter()
    part, opts = ARMS[method]
    opts = dict(opts)
    ema = opts.pop("ema", False)
    if getattr(cfg, "c", 0.0) > 0 and "c" not in opts:
        opts["c"] = cfg.c
    torch.manual_seed(seed)
    if part == "dig":
        net = ToyConv8x8(10, channels=cfg.digits_channels, blocks=1)
        x, y = task["digits_train"]
        steps, batch, lr = cfg.digits_steps, cfg.digits_batch, cfg.digits_lr
    else:
        net = ToyMLP(2, width=cfg.width, depth=cfg.depth)
        x, y = _train_data(cfg, part, seed), None
        steps, batch, lr = cfg.steps, cfg.batch_size, cfg.lr
    den = ConsistencyDenoiser(net, sigma_data=SIGMA_DATA[part])
    teacher = copy.deepcopy(den).requires_grad_(False) if ema else None
    opt = torch.optim.Adam(den.parameters(), lr=lr, foreach=True)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for k in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        loss = consistency_training_loss(den, x[idx], step=k, total_steps=steps,
                                         class_labels=None if y is None else y[idx], teacher=teacher,
                                         generator=gen, s0=cfg.s0, s1=cfg.s1, sigma_max=cfg.sigma_max, **opts)
        loss = loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if teacher is not None:
            n = ict_discretization_steps(k, steps, s0=cfg.s0, s1=cfg.s1)
            mu = math.exp(cfg.s0 * math.log(cfg.ema_mu0) / n)
            with torch.no_grad():
                for pt, ps in zip(teacher.parameters(), den.parameters()):
                    pt.lerp_(ps, 1.0 - mu)
    den.eval()
    sgen = torch.Generator().manual_seed(5_000 + seed)
    row: dict[str, Any] = {"method": method, "part": part, "seed": seed}
    with torch.no_grad():
        if part == "dig":
            labels = torch.arange(10).repeat_interleave(cfg.digits_eval_per_class)
            z = torch.randn((labels.shape[0], 1, 8, 8), generator=sgen)
            xt, _ = task["digits_test"]
            clf = task["clf"]
            for name, levels in (("1", (cfg.sigma_max,)), ("2", (cfg.sigma_max, cfg.mid_sigma))):
                s = consistency_sample(den, z, sigmas=levels, class_labels=labels,
                                       generator=torch.Generator().manual_seed(6_000 + seed)).clamp(-1, 1)
                row[f"fd_{name}"] = float(feature_frechet(clf, s, xt))
                row[f"acc_{name}"] = float((clf(s).argmax(1) == labels).double().mean())
        else:
            z = torch.randn((cfg.eval_samples, 2), generator=sgen)
            for name, levels in (("1", (cfg.sigma_max,)), ("2", (cfg.sigma_max, cfg.mid_sigma))):
                s = consistency_sample(den, z, sigmas=levels, generator=torch.Generator().manual_seed(6_000 + seed))
                ed = float(energy_distance(s, task["mix_ref"]))
                row[f"ed_{name}"] = ed if math.isfinite(ed) else float("nan")
    finite = all(math.isfinite(v) for v in losses)
    tail = losses[-max(1, steps // 10):]
    row["train_loss"] = sum(tail) / len(tail) if finite else float("nan")
    row["wall_s"] = time.perf_counter() - t0
    return row
