"""What one run of the ``causal-pinn`` study trains: a PINN on a damped oscillator or on the 1-D Allen-Cahn
equation, with the plain residual loss (eps = 0) or the causal one (:func:`gradwise.sciml.causal_loss` with the
authors' eps schedule, :class:`gradwise.sciml.CausalEpsilonSchedule`), and the reference solutions it is
scored against (the oscillator's closed form; an ETDRK4 spectral solve for Allen-Cahn, written here after
Kassam and Trefethen, "Fourth-order time-stepping for stiff PDEs", SIAM J. Sci. Comput. 26(4), 2005).

Patent notice: causal PINN training is patented (University of Pennsylvania, per the authors' README); this is
an independent implementation and gradwise grants no patent rights.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

__all__ = ["oscillator_exact", "allen_cahn_reference", "train_pinn"]


def oscillator_exact(t: np.ndarray, *, zeta: float, omega: float) -> np.ndarray:
    """u'' + 2 zeta omega u' + omega^2 u = 0, u(0) = 1, u'(0) = 0 (underdamped, zeta < 1)."""
    wd = omega * math.sqrt(1.0 - zeta ** 2)
    return np.exp(-zeta * omega * t) * (np.cos(wd * t) + zeta * omega / wd * np.sin(wd * t))


def allen_cahn_reference(nu: float, t_end: float, n_x: int = 256, dt: float = 1e-4, n_out: int = 51):
    """u_t = nu u_xx + 5 u - 5 u^3 on x in [-1, 1) (periodic), u0 = x^2 cos(pi x): ETDRK4 in Fourier space
    (Kassam & Trefethen 2005, with their contour-integral coefficients, 32 points). Returns (t [n_out],
    x [n_x], u [n_out, n_x])."""
    x = np.linspace(-1.0, 1.0, n_x, endpoint=False)
    u = x ** 2 * np.cos(np.pi * x)
    k = np.fft.fftfreq(n_x, d=2.0 / n_x) * 2 * np.pi
    lin = -nu * k ** 2
    e, e2 = np.exp(dt * lin), np.exp(dt * lin / 2)
    r = np.exp(1j * np.pi * (np.arange(1, 33) - 0.5) / 32)
    lr = dt * lin[:, None] + r[None, :]
    q = dt * np.real(np.mean((np.exp(lr / 2) - 1) / lr, axis=1))
    f1 = dt * np.real(np.mean((-4 - lr + np.exp(lr) * (4 - 3 * lr + lr ** 2)) / lr ** 3, axis=1))
    f2 = dt * np.real(np.mean((2 + lr + np.exp(lr) * (-2 + lr)) / lr ** 3, axis=1))
    f3 = dt * np.real(np.mean((-4 - 3 * lr - lr ** 2 + np.exp(lr) * (4 - lr)) / lr ** 3, axis=1))

    def nonlin(v_hat):
        w = np.real(np.fft.ifft(v_hat))
        return np.fft.fft(5 * w - 5 * w ** 3)

    n_steps = int(round(t_end / dt))
    every = n_steps // (n_out - 1)
    v = np.fft.fft(u)
    out = [u.copy()]
    for step in range(1, n_steps + 1):
        nv = nonlin(v)
        a = e2 * v + q * nv
        na = nonlin(a)
        b = e2 * v + q * na
        nb = nonlin(b)
        c = e2 * a + q * (2 * nb - nv)
        nc = nonlin(c)
        v = e * v + nv * f1 + 2 * (na + nb) * f2 + nc * f3
        if step % every == 0:
            out.append(np.real(np.fft.ifft(v)))
    return np.linspace(0.0, t_end, n_out), x, np.stack(out[:n_out])


def _mlp(d_in: int, width: int, depth: int):
    from torch import nn

    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.Tanh()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 1)).double()


def _spearman(a: list[float], b: list[float]) -> float:
    if len(a) < 3:
        return math.nan
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


class _Oscillator:
    def __init__(self, cfg):
        import torch

        self.cfg = cfg
        self.t = torch.linspace(0.0, cfg.t_end, cfg.chunks * cfg.points_per_chunk, dtype=torch.float64)
        self.t_eval = np.linspace(0.0, cfg.t_end, 401)
        self.u_eval = oscillator_exact(self.t_eval, zeta=cfg.zeta, omega=cfg.omega)

    def build(self):
        return _mlp(1, self.cfg.width, self.cfg.depth)

    def _u(self, net, t):
        return net((t / self.cfg.t_end)[:, None])[:, 0]

    def losses(self, net):
        import torch

        cfg = self.cfg
        t = self.t.clone().requires_grad_(True)
        u = self._u(net, t)
        u_t = torch.autograd.grad(u.sum(), t, create_graph=True)[0]
        u_tt = torch.autograd.grad(u_t.sum(), t, create_graph=True)[0]
        r = u_tt + 2 * cfg.zeta * cfg.omega * u_t + cfg.omega ** 2 * u
        chunk = (r ** 2).reshape(cfg.chunks, cfg.points_per_chunk).mean(1)
        t0 = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        u0 = self._u(net, t0)
        du0 = torch.autograd.grad(u0.sum(), t0, create_graph=True)[0]
        return chunk, (u0 - 1.0).pow(2).sum() + du0.pow(2).sum()

    def errors(self, net) -> tuple[float, float, float]:
        import torch

        with torch.no_grad():
            u = self._u(net, torch.as_tensor(self.t_eval)).numpy()
        return _rel_errors(u[:, None], self.u_eval[:, None])


class _AllenCahn:
    def __init__(self, cfg):
        import torch

        self.cfg = cfg
        t_ref, x_ref, u_ref = allen_cahn_reference(cfg.nu, cfg.ac_t_end)
        self.t_eval, self.x_eval, self.u_eval = t_ref, x_ref[::4], u_ref[:, ::4]
        t = torch.linspace(0.0, cfg.ac_t_end, cfg.chunks, dtype=torch.float64)
        x = torch.linspace(-1.0, 1.0, cfg.ac_points, dtype=torch.float64)
        self.t, self.x = t.repeat_interleave(cfg.ac_points), x.repeat(cfg.chunks)
        self.x0 = torch.as_tensor(x_ref[::2])
        self.u0 = torch.as_tensor(u_ref[0, ::2])

    def build(self):
        return _mlp(2 + 2 * self.cfg.ac_modes, self.cfg.width, self.cfg.depth)

    def _u(self, net, t, x):
        import torch

        k = torch.arange(1, self.cfg.ac_modes + 1, dtype=torch.float64)
        h = torch.cat([(t / self.cfg.ac_t_end)[:, None], torch.ones_like(t)[:, None],
                       torch.cos(math.pi * k * x[:, None]), torch.sin(math.pi * k * x[:, None])], 1)
        return net(h)[:, 0]

    def losses(self, net):
        import torch

        cfg = self.cfg
        t, x = self.t.clone().requires_grad_(True), self.x.clone().requires_grad_(True)
        u = self._u(net, t, x)
        u_t, u_x = torch.autograd.grad(u.sum(), (t, x), create_graph=True)
        u_xx = torch.autograd.grad(u_x.sum(), x, create_graph=True)[0]
        r = u_t + 5 * u ** 3 - 5 * u - cfg.nu * u_xx
        chunk = (r ** 2).reshape(cfg.chunks, cfg.ac_points).mean(1)
        u0 = self._u(net, torch.zeros_like(self.x0), self.x0)
        return chunk, ((u0 - self.u0) ** 2).mean()

    def errors(self, net):
        import torch

        tt = torch.as_tensor(np.repeat(self.t_eval, len(self.x_eval)))
        xx = torch.as_tensor(np.tile(self.x_eval, len(self.t_eval)))
        with torch.no_grad():
            u = self._u(net, tt, xx).reshape(len(self.t_eval), len(self.x_eval)).numpy()
        return _rel_errors(u, self.u_eval)


def _rel_errors(u: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """Relative L2 error over all times, over the first quarter and over the last quarter of the times."""
    q = max(1, len(ref) // 4)

    def rel(a, b):
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))

    return rel(u, ref), rel(u[:q], ref[:q]), rel(u[-q:], ref[-q:])


def train_pinn(cfg, problem: str, method: str, seed: int) -> dict[str, Any]:
    """Train one PINN (``problem`` "oscillator" or "allen-cahn") and score it. ``method``: "plain" (eps 0),
    "causal" (fixed eps ``cfg.causal_eps``, as the authors' Allen-Cahn notebook) or "causal-annealed" (the
    authors' KS schedule 1e-2 ... 100)."""
    import torch

    from gradwise.sciml import CausalEpsilonSchedule, causal_loss, causal_weights

    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    task = _Oscillator(cfg) if problem == "oscillator" else _AllenCahn(cfg)
    net = task.build()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.9 ** (i / 5000))  # the authors' decay
    eps_sched = CausalEpsilonSchedule() if method == "causal-annealed" else None
    track_eps = cfg.track_eps
    min_w, errs, stages = [], [], []
    for step in range(cfg.steps):
        chunk, ic = task.losses(net)
        eps = eps_sched.eps if eps_sched is not None else cfg.causal_eps if method == "causal" else 0.0
        loss = causal_loss(chunk, eps).loss + cfg.ic_weight * ic
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % cfg.check_every == 0:
            if eps_sched is not None and not eps_sched.done:
                eps_sched.update(causal_weights(chunk, eps_sched.eps))
            # min w at one fixed eps for every method: the convergence indicator the paper proposes
            min_w.append(float(causal_weights(chunk, track_eps).min()))
            errs.append(task.errors(net)[0])
            stages.append(eps_sched.stage if eps_sched is not None else -1)
    err, early, late = task.errors(net)
    return {"problem": problem, "kind": method, "method": f"{method}@{problem}", "seed": seed,
            "rel_l2": err, "rel_l2_early": early, "rel_l2_late": late, "min_w": min_w[-1] if min_w else math.nan,
            "final_stage": stages[-1] if stages else -1,
            "spearman_minw_err": _spearman(min_w, errs), "curve_min_w": min_w, "curve_err": errs,
            "wall_s": time.perf_counter() - t0}
