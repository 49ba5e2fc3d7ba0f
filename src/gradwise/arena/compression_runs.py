"""What the ``compression`` study trains (see :mod:`gradwise.arena.compression_study`).

Part 1, in one process: distributed least squares over ``n`` simulated workers whose local optima differ,
optimized by gradient descent on the average of the workers' messages: uncompressed, Top-K without error
feedback, and Top-K with error feedback as gradwise's DDP hook keeps it
(:class:`gradwise.distributed.CompressedAllreduceState`): ``x_i = g_i + e_i``, ``m_i = C(x_i)``,
``e_i = x_i - m_i``, step on the mean of the ``m_i``. Top-K is gradwise's own
(:class:`gradwise.distributed.TopK`).

Part 2, on ``world_size`` local processes (gloo, :func:`gradwise.distributed.launch.run_local`): a small
CNN on scikit-learn's digits under DDP with a communication hook: dense all-reduce, torch's PowerSGD at a
uniform rank (error feedback and warm start on, :func:`gradwise.distributed.powersgd_hook`), and L-GreCo
(:func:`gradwise.distributed.lgreco_hook`), each counting the bytes one worker sends per step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gradwise.arena.compression_study import CNN_METHODS, LS_METHODS

__all__ = ["LS_METHODS", "CNN_METHODS", "LeastSquares", "least_squares_problem", "run_least_squares",
           "DigitsCNN", "CnnSetup", "train_cnn_rank"]

@dataclass(frozen=True)
class LeastSquares:
    r"""``f(x) = 1/n sum_i f_i(x)``, ``f_i(x) = ||A_i x - b_i||^2 / (2 m)``: ``a`` is ``[n, m, d]``, ``b``
    ``[n, m]`` (float64); ``x_star`` the minimizer of ``f`` and ``f_star`` its value; ``smoothness`` the
    largest eigenvalue of the Hessian of ``f``; ``local_optima`` ``[n, d]`` the minimizers of the ``f_i``."""

    a: Tensor
    b: Tensor
    x_star: Tensor
    f_star: float
    smoothness: float
    local_optima: Tensor

    def loss(self, x: Tensor) -> Tensor:
        return 0.5 * (torch.einsum("nmd,d->nm", self.a, x) - self.b).square().mean()

    def grads(self, x: Tensor) -> Tensor:
        """The workers' gradients ``[n, d]`` at ``x``."""
        resid = torch.einsum("nmd,d->nm", self.a, x) - self.b
        return torch.einsum("nmd,nm->nd", self.a, resid) / self.a.shape[1]


def least_squares_problem(workers: int, dim: int, samples: int, heterogeneity: float, seed: int) -> LeastSquares:
    """Worker ``i``'s rows ``A_i`` are standard Gaussian (``samples x dim``) and its targets ``b_i = A_i
    (x_c + heterogeneity * u_i)`` with ``x_c, u_i`` standard Gaussian: each worker's local optimum is
    ``x_c + heterogeneity * u_i`` (noiseless), so ``heterogeneity = 0`` gives one common optimum."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(workers, samples, dim, generator=g, dtype=torch.float64)
    center = torch.randn(dim, generator=g, dtype=torch.float64)
    local = center + heterogeneity * torch.randn(workers, dim, generator=g, dtype=torch.float64)
    b = torch.einsum("nmd,nd->nm", a, local)
    hess = torch.einsum("nmd,nme->de", a, a) / (workers * samples)
    x_star = torch.linalg.solve(hess, torch.einsum("nmd,nm->d", a, b) / (workers * samples))
    p = LeastSquares(a, b, x_star, 0.0, float(torch.linalg.eigvalsh(hess)[-1]), local)
    return LeastSquares(a, b, x_star, float(p.loss(x_star)), p.smoothness, local)


def run_least_squares(p: LeastSquares, method: str, *, ratio: float, steps: int, lr_scale: float, noise: float,
                      seed: int, points: int = 100) -> dict[str, Any]:
    """``steps`` steps of ``x <- x - (lr_scale / L) * mean_i m_i`` from ``x = 0``, ``m_i`` the message of
    worker ``i`` (``method`` one of :data:`LS_METHODS`); each worker's gradient gets Gaussian noise of
    standard deviation ``noise`` per entry (0: exact local gradients). Returns the final relative
    distance ``||x - x*|| / ||x_0 - x*||``, optimality gap ``f(x) - f*`` and ``points`` of their curve,
    and the bytes one worker sends per step (float64 values; Top-K adds int32 indices)."""
    from gradwise.distributed.compressors import NoCompression, TopK, topk_decompress

    if method not in LS_METHODS:
        raise ValueError(f"Invalid method: {method!r} (accepted: {', '.join(LS_METHODS)})")
    n, _, d = p.a.shape
    gen = torch.Generator().manual_seed(10_000 + seed)
    comp = NoCompression() if method == "ls-sgd" else TopK(ratio)
    lr = lr_scale / p.smoothness
    x = torch.zeros(d, dtype=torch.float64)
    err = torch.zeros(n, d, dtype=torch.float64)
    d0 = float((x - p.x_star).norm())
    every = max(1, steps // points)
    curve: list[tuple[int, float, float]] = [(0, 1.0, float(p.loss(x)) - p.f_star)]
    for t in range(1, steps + 1):
        g = p.grads(x)
        if noise > 0:
            g = g + noise * torch.randn(n, d, generator=gen, dtype=torch.float64)
        if method == "ls-sgd":
            update = g.mean(0)
        else:
            xin = g + err if method == "ls-topk-ef" else g
            msgs = torch.stack([topk_decompress(*comp.encode(row, [d]), d) for row in xin])
            if method == "ls-topk-ef":
                err = xin - msgs
            update = msgs.mean(0)
        x = x - lr * update
        if t % every == 0 or t == steps:
            curve.append((t, float((x - p.x_star).norm()) / d0, float(p.loss(x)) - p.f_star))
    nbytes = comp.message_bytes(d, torch.float64) if method == "ls-sgd" else comp.message_bytes([d], torch.float64)
    finite = all(c[1] == c[1] and c[1] != float("inf") for c in curve)
    return {"dist": curve[-1][1], "gap": curve[-1][2], "curve": curve, "bytes_per_step": nbytes,
            "bytes_total": nbytes * steps, "diverged": not finite}


class DigitsCNN(nn.Module):
    """Conv 1->c (3x3) - ReLU - max-pool 2 - conv c->2c (3x3) - ReLU - max-pool 2 - linear 8c->hidden - ReLU
    - linear hidden->10, on 8x8 digits; initialized from torch's global RNG (seed it first)."""

    def __init__(self, channels: int = 16, hidden: int = 64):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * channels, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x.view(-1, 1, 8, 8)))


@dataclass(frozen=True)
class CnnSetup:
    """What each rank of the CNN part needs: the digits tensors (flat, standardized) and the settings."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    epochs: int
    batch_size: int
    lr: float
    start_iter: int
    lgreco_rank: int
    channels: int = 16
    hidden: int = 64
    momentum: float = 0.9


def _hook(method: str, s: CnnSetup, seed: int, steps_per_epoch: int) -> tuple[Any, Any]:
    from gradwise.distributed import (CompressedAllreduceState, LGreCoState, PowerSGDBytesState,
                                      compressed_allreduce_hook, lgreco_hook, powersgd_hook)

    if method == "cnn-dense":  # plain DDP's all-reduce, bit for bit, with its bytes counted
        return CompressedAllreduceState(), compressed_allreduce_hook
    if method == "cnn-lgreco":  # ranks re-chosen once per epoch from the last (up to) 10 steps
        return LGreCoState(matrix_approximation_rank=s.lgreco_rank, start_powerSGD_iter=s.start_iter,
                           adjust_freq=steps_per_epoch, acc_iter=min(10, steps_per_epoch),
                           random_seed=seed), lgreco_hook
    rank = int(method.rsplit("-", 1)[1])
    return PowerSGDBytesState(process_group=None, matrix_approximation_rank=rank, start_powerSGD_iter=s.start_iter,
                              min_compression_rate=2, use_error_feedback=True, warm_start=True,
                              random_seed=seed), powersgd_hook


def train_cnn_rank(rank: int, world_size: int, setup: CnnSetup, methods: tuple[str, ...], seed: int) -> dict:
    """One rank's share of the CNN part: each of ``methods`` in turn, from the same initialization, on
    this rank's shard of the training set (a seeded split, reshuffled every epoch); SGD with momentum.
    Returns per method: final test accuracy, one worker's bytes per step, the curve (epoch, bytes so far,
    test accuracy) and, for L-GreCo, the ranks it chose per compressed layer, in the model's order."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    s = setup
    n = s.x_train.shape[0]
    shard = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[rank::world_size]
    shortest = n // world_size  # every rank takes the same number of steps
    steps_per_epoch = max(1, shortest // s.batch_size)
    out: dict[str, Any] = {}
    for method in methods:
        torch.manual_seed(seed)
        model = DDP(DigitsCNN(s.channels, s.hidden))
        state, hook = _hook(method, s, seed, steps_per_epoch)
        model.register_comm_hook(state, hook)
        opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum)
        order_gen = torch.Generator().manual_seed(1000 * seed + rank)
        curve: list[tuple[int, int, float]] = []
        train_s = 0.0
        for epoch in range(1, s.epochs + 1):
            t0 = time.perf_counter()
            order = shard[torch.randperm(len(shard), generator=order_gen)]
            model.train()
            for i in range(steps_per_epoch):
                idx = order[i * s.batch_size:(i + 1) * s.batch_size]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(s.x_train[idx]), s.y_train[idx]).backward()
                opt.step()
            train_s += time.perf_counter() - t0
            model.eval()
            with torch.no_grad():
                acc = float((model.module(s.x_test).argmax(1) == s.y_test).float().mean())
            curve.append((epoch, sum(state.bytes_history), acc))
        hist = list(state.bytes_history)
        compressed = hist[s.start_iter:] or hist
        row = {"test_acc": curve[-1][2], "bytes_per_step": sum(compressed) / len(compressed),
               "bytes_total": sum(hist), "steps": len(hist), "train_s": train_s, "curve": curve}
        if method == "cnn-lgreco":  # the hook holds layers in DDP's bucket order (gradient-ready: output first)
            chosen = {shape: r for b in sorted(state.ranks) for shape, r in zip(state.shapes[b], state.ranks[b])}
            shapes = [(p.shape[0], p[0].numel()) for p in model.module.parameters() if p.dim() > 1]
            row["ranks"] = [chosen[sh] for sh in shapes if sh in chosen]  # in the model's order
        out[method] = row
        dist.barrier()
    return out
