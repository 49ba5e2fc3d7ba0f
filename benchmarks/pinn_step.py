"""Causal PINN weights' share of a PINN training step: ``gradwise.sciml.causal_weights`` against one whole step.

    python benchmarks/pinn_step.py [--small] [--rounds 6] [--reps 3] [--threads N] [--markdown PATH] [--json PATH]

Workload (float32, CPU): the authors' Allen-Cahn PINN (``Allen_Cahn/AC.ipynb``: periodic Fourier input with
M = 10 modes, tanh MLP 4 x 128) on their collocation grid of n_t = 100 times x n_x = 256 points (small mode:
8 x 16, width 16). One step: the residual u_t + 5u^3 - 5u - 1e-4 u_xx by autograd, chunk losses [n_t],
``causal_loss`` (eps 100) plus 100 x the initial-condition loss, backward, Adam. Candidates, timed interleaved in
one process: the whole step, and ``causal_weights`` alone on the step's chunk losses. share = median weights /
median step, target < 1 % (issue 21).
"""
from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # harness.py sits beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

TARGET = 0.01


def run(small: bool = False, rounds: int = 6, reps: int = 3, warmup: int = 1, seed: int = 0) -> dict:
    from gradwise.sciml import causal_loss, causal_weights

    torch.manual_seed(seed)
    n_t, n_x, width, modes = (8, 16, 16, 2) if small else (100, 256, 128, 10)
    net = nn.Sequential(nn.Linear(2 + 2 * modes, width), nn.Tanh(), *[m for _ in range(3) for m in
                        (nn.Linear(width, width), nn.Tanh())], nn.Linear(width, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    t = torch.linspace(0, 1, n_t).repeat_interleave(n_x)
    x = torch.linspace(-1, 1, n_x).repeat(n_t)
    x0 = torch.linspace(-1, 1, n_x)
    u0 = x0 ** 2 * torch.cos(math.pi * x0)
    k = torch.arange(1, modes + 1, dtype=torch.float32)

    def u_of(tt, xx):
        h = torch.cat([tt[:, None], torch.ones_like(tt)[:, None], torch.cos(math.pi * k * xx[:, None]),
                       torch.sin(math.pi * k * xx[:, None])], 1)
        return net(h)[:, 0]

    last = {}

    def step():
        tt, xx = t.clone().requires_grad_(True), x.clone().requires_grad_(True)
        u = u_of(tt, xx)
        u_t, u_x = torch.autograd.grad(u.sum(), (tt, xx), create_graph=True)
        u_xx = torch.autograd.grad(u_x.sum(), xx, create_graph=True)[0]
        chunk = ((u_t + 5 * u ** 3 - 5 * u - 1e-4 * u_xx) ** 2).reshape(n_t, n_x).mean(1)
        loss = causal_loss(chunk, 100.0).loss + 100 * ((u_of(torch.zeros_like(x0), x0) - u0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        last["chunk"] = chunk.detach()

    step()
    cands = {"PINN step": harness.Candidate("PINN step", step),
             "causal_weights": harness.Candidate("causal_weights", lambda: causal_weights(last["chunk"], 100.0))}
    notes: list[str] = []
    harness.interleave(cands, rounds=rounds, steps=reps, warmup=warmup, seed=seed, mode="shuffled", notes=notes)
    step_ms = statistics.median(cands["PINN step"].samples_ms)
    w_ms = statistics.median(cands["causal_weights"].samples_ms)
    share = w_ms / step_ms
    row = dict(step_ms=step_ms, weights_ms=w_ms, share=share, verdict="PASS" if share < TARGET else "MISS")
    return dict(n_t=n_t, n_x=n_x, width=width, modes=modes, **row, rows=[row], notes=notes, rounds=rounds, reps=reps,
                warmup=warmup, small=small, machine=harness.machine_description(), **harness.machine_info())


def to_markdown(res: dict) -> str:
    lines = [
        "## Causal PINN weights' share of a step",
        "",
        "Written by `python benchmarks/pinn_step.py --markdown PATH` (issue 21); every number below is from "
        "that one run.",
        "",
        *harness.info_lines(res),
        f"- Workload (float32): the authors' Allen-Cahn PINN, {res['modes']} Fourier modes, tanh MLP 4 x "
        f"{res['width']}, {res['n_t']} x {res['n_x']} collocation points; one step = residual by autograd, "
        "`causal_loss` + initial-condition loss, backward, Adam",
        f"- Method: {res['warmup']} warm-up round, then {res['rounds']} rounds x {res['reps']} calls of each "
        f"candidate in shuffled order; median ms/call; share = weights / step, target < {TARGET:.0%}",
        "",
        *harness.markdown_table(("candidate", "median ms", "share", "target"),
                                (("PINN step", f"{res['step_ms']:.2f}", "", ""),
                                 ("causal_weights", f"{res['weights_ms']:.4f}", f"{res['share']:.2%}",
                                  res["verdict"])), left=(0,)),
    ]
    lines += harness.note_lines(res)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return harness.int_options_main(
        argv, __doc__.splitlines()[0], {"rounds": 6, "reps": 3}, run, to_markdown, "pinn_step",
        lambda r: (f"PINN step {r['step_ms']:.2f} ms  causal_weights {r['weights_ms']:.4f} ms  "
                   f"share {r['share']:.2%}  {r['verdict']}"),
        flags={"small": "tiny workload (tests)"})


if __name__ == "__main__":
    sys.exit(main())
