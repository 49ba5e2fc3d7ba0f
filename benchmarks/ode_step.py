"""solve_ode's cost per function evaluation against torchdiffeq's dopri5, and what R_E adds.

    python benchmarks/ode_step.py [--batch 256] [--hidden 64] [--rounds 10] [--reps 3] [--threads N]
                                  [--markdown PATH] [--json PATH]

Workload: a neural ODE on a 2-D state (MLP 2 -> hidden -> hidden -> 2, tanh, float32), a batch of points,
t in [0, 1], rtol 1e-3, atol 1e-6; one step = solve forward, mean-squared loss at t = 1, backward through the
solver's steps (discrete adjoint, no adjoint method). Candidates, timed interleaved in one process:
torchdiffeq 0.2.5 ``odeint(method="dopri5")``; ``gradwise.sciml.solve_ode(method="dopri5",
controller="torchdiffeq")`` (the same steps, so the same NFE); the same with ``regularize="error"`` (loss +
0.1 R_E); and ``solve_ode`` with its defaults (tsit5, landing controller) for reference. ratio = (median ms /
NFE) gradwise / torchdiffeq, target <= 1.5; R_E overhead = median(with R_E) / median(without), target <= 1.05
(issue 21).
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # harness.py sits beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402

TARGET = 1.5
TARGET_REG = 1.05


def _model(hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, hidden),
                               torch.nn.Tanh(), torch.nn.Linear(hidden, 2))


def run(batch: int, hidden: int, rounds: int, reps: int, warmup: int = 2, seed: int = 0) -> dict:
    from gradwise.sciml import solve_ode

    notes: list[str] = []
    try:
        from torchdiffeq import odeint
    except ImportError:  # the sciml extra is missing: nothing to compare with
        odeint = None
        notes.append("torchdiffeq not installed: no baseline")
    net = _model(hidden, seed)
    gen = torch.Generator().manual_seed(seed)
    y0 = torch.randn(batch, 2, generator=gen)
    target = torch.randn(batch, 2, generator=gen)
    t = torch.tensor([0.0, 1.0])

    def f(s, y):
        return net(y)

    nfe = {}

    def step_gw(name, **kw):
        def go():
            net.zero_grad(set_to_none=True)
            sol = solve_ode(f, y0, t, **kw)
            loss = (sol.ys[-1] - target).pow(2).mean()
            if kw.get("regularize"):
                loss = loss + 0.1 * sol.reg
            loss.backward()
            nfe[name] = sol.nfe
        return go

    class Counted(torch.nn.Module):
        n = 0

        def forward(self, s, y):
            Counted.n += 1
            return net(y)

    def step_tdq():
        net.zero_grad(set_to_none=True)
        Counted.n = 0
        ys = odeint(Counted(), y0, t, method="dopri5", rtol=1e-3, atol=1e-6)
        (ys[-1] - target).pow(2).mean().backward()
        nfe["torchdiffeq dopri5"] = Counted.n

    cands = {
        "gradwise dopri5": harness.Candidate("gradwise dopri5", step_gw("gradwise dopri5", method="dopri5",
                                                                         controller="torchdiffeq")),
        "gradwise dopri5 + R_E": harness.Candidate("gradwise dopri5 + R_E", step_gw(
            "gradwise dopri5 + R_E", method="dopri5", controller="torchdiffeq", regularize="error")),
        "gradwise tsit5 (default)": harness.Candidate("gradwise tsit5 (default)", step_gw("gradwise tsit5 (default)")),
    }
    if odeint is not None:
        cands["torchdiffeq dopri5"] = harness.Candidate("torchdiffeq dopri5", step_tdq)
    harness.interleave(cands, rounds=rounds, steps=reps, warmup=warmup, seed=seed, mode="shuffled", notes=notes)
    rows = []
    base = cands.get("torchdiffeq dopri5")
    base_per = statistics.median(base.samples_ms) / nfe["torchdiffeq dopri5"] if base is not None else None
    for name, c in cands.items():
        med = statistics.median(c.samples_ms)
        per = med / nfe[name]
        r = None if base_per is None else per / base_per
        rows.append(dict(name=name, ms=med, nfe=nfe[name], ms_per_nfe=per, ratio=r,
                         verdict="" if r is None or name.startswith("torchdiffeq") else
                         ("PASS" if r <= TARGET else "MISS")))
    plain = statistics.median(cands["gradwise dopri5"].samples_ms)
    reg_ratio = statistics.median(cands["gradwise dopri5 + R_E"].samples_ms) / plain
    paired = harness.paired_ratio(cands["gradwise dopri5 + R_E"], cands["gradwise dopri5"])
    return dict(rows=rows, reg_ratio=reg_ratio, reg_paired=paired,
                reg_verdict="PASS" if reg_ratio <= TARGET_REG else "MISS", notes=notes, batch=batch, hidden=hidden,
                rounds=rounds, reps=reps, warmup=warmup, machine=harness.machine_description(),
                **harness.machine_info())


def to_markdown(res: dict) -> str:
    lines = [
        "## Neural-ODE solve time per function evaluation",
        "",
        "Written by `python benchmarks/ode_step.py --markdown PATH` (issue 21); every number below is from that "
        "one run.",
        "",
        *harness.info_lines(res),
        f"- Workload: MLP 2-{res['hidden']}-{res['hidden']}-2 (tanh, float32) neural ODE, batch {res['batch']}, "
        "t in [0, 1], rtol 1e-3, atol 1e-6; one step = solve, MSE at t = 1, backward through the steps",
        f"- Method: {res['warmup']} warm-up rounds, then {res['rounds']} rounds x {res['reps']} steps of every "
        "candidate in shuffled order; median ms/step; ratio = (ms / NFE) / torchdiffeq's, target <= "
        f"{TARGET}; the torchdiffeq controller takes odeint's steps, so its NFE is odeint's",
        "",
        *harness.markdown_table(("candidate", "ms", "NFE", "ms / NFE", "ratio", "target"),
                                ((r["name"], f"{r['ms']:.2f}", str(r["nfe"]), f"{r['ms_per_nfe']:.3f}",
                                  "" if r["ratio"] is None else f"{r['ratio']:.2f}", r["verdict"])
                                 for r in res["rows"])),
        "",
        f"R_E overhead (dopri5 with / without `regularize=\"error\"`): {res['reg_ratio']:.3f}"
        + ("" if res["reg_paired"] is None else f" (paired {res['reg_paired']:.3f})")
        + f", target <= {TARGET_REG}: {res['reg_verdict']}.",
    ]
    lines += harness.note_lines(res)
    return "\n".join(lines) + "\n"


def _row_line(r: dict) -> str:
    ratio = "" if r["ratio"] is None else f"x{r['ratio']:.2f}"
    return f"{r['name']:26s} {r['ms']:8.2f} ms  NFE {r['nfe']:4d}  {r['ms_per_nfe']:.3f} ms/NFE {ratio} {r['verdict']}"


def main(argv: list[str] | None = None) -> int:
    return harness.int_options_main(
        argv, __doc__.splitlines()[0], {"batch": 256, "hidden": 64, "rounds": 10, "reps": 3}, run, to_markdown,
        "ode_step", _row_line, footer=lambda res: f"R_E overhead x{res['reg_ratio']:.3f} {res['reg_verdict']}")


if __name__ == "__main__":
    sys.exit(main())
