"""Empirical NTK time: ``gradwise.diagnostics.empirical_ntk`` against PyTorch's NTK tutorial code.

    python benchmarks/ntk_step.py [--small] [--rounds 6] [--reps 3] [--threads N] [--markdown PATH] [--json PATH]

Workloads (float32, CPU): ``ntkmlp`` the paper's Fig. 1 network (``NTKMLP([2, 512, 512, 512, 1])``, depth 4 in its
counting is 4 layers; here 3 hidden, 1 output) on 32 x 32 points of the unit circle; ``mlp`` a plain
``nn.Sequential`` MLP [16, 256, 256, 10] on 16 x 16 random inputs (full [N, M, 10, 10] kernel); ``cnn`` a small
CNN (two 3x3 convolutions of 16 channels on 3x8x8 inputs, linear head to 10) on 8 x 8 inputs. Candidates, timed
interleaved in one process: the tutorial's ``empirical_ntk_jacobian_contraction`` and ``empirical_ntk_ntk_vps``
(its computation written out here: ``vmap(jacrev)`` of ``functional_call`` on one sample, per-parameter
``einsum`` stacked then summed; ``vjp`` then ``jvp`` over an identity basis, doubly vmapped) and gradwise's two
implementations on the same model, inputs and mode. ratio = median gradwise / median tutorial for the same
implementation, target <= 1.2 (issue 21).
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
from torch.func import functional_call, jacrev, jvp, vjp, vmap  # noqa: E402

TARGET = 1.2


def tutorial_jacobian(fnet_single, params, x1, x2, compute="full"):
    jac1 = [j.flatten(2) for j in vmap(jacrev(fnet_single), (None, 0))(params, x1).values()]
    jac2 = [j.flatten(2) for j in vmap(jacrev(fnet_single), (None, 0))(params, x2).values()]
    expr = {"full": "Naf,Mbf->NMab", "trace": "Naf,Maf->NM", "diagonal": "Naf,Maf->NMa"}[compute]
    return torch.stack([torch.einsum(expr, j1, j2) for j1, j2 in zip(jac1, jac2)]).sum(0)


def tutorial_ntk_vps(func, params, x1, x2, compute="full"):
    def get_ntk(x1, x2):
        output, vjp_fn = vjp(lambda p: func(p, x1), params)

        def get_ntk_slice(vec):
            vjps = vjp_fn(vec)
            return jvp(lambda p: func(p, x2), (params,), vjps)[1]

        basis = torch.eye(output.numel(), dtype=output.dtype, device=output.device).view(output.numel(), -1)
        return vmap(get_ntk_slice)(basis)

    result = vmap(vmap(get_ntk, (None, 0)), (0, None))(x1, x2)
    if compute == "full":
        return result
    return torch.einsum("NMKK->NM", result) if compute == "trace" else torch.einsum("NMKK->NMK", result)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3)
        self.conv2 = nn.Conv2d(16, 16, 3)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.conv2(self.conv1(x).relu()).relu().flatten(1))


def workloads(small: bool):
    from gradwise.diagnostics import NTKMLP

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    n = 4 if small else 32
    ang = torch.linspace(0, 2 * math.pi, n + 1)[:-1]
    circle = torch.stack([ang.cos(), ang.sin()], 1)
    width = 16 if small else 512
    yield "ntkmlp", NTKMLP([2, width, width, width, 1], generator=gen), circle, circle, "trace"
    m, h = (2, 32) if small else (16, 256)
    mlp = nn.Sequential(nn.Linear(16, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10))
    yield "mlp", mlp, torch.randn(m, 16, generator=gen), torch.randn(m, 16, generator=gen), "full"
    c = 2 if small else 8
    yield "cnn", SmallCNN(), torch.randn(c, 3, 8, 8, generator=gen), torch.randn(c, 3, 8, 8, generator=gen), "full"


def run(small: bool = False, rounds: int = 6, reps: int = 3, warmup: int = 1, seed: int = 0) -> dict:
    from gradwise.diagnostics import empirical_ntk

    cands, notes, meta = {}, [], []
    for name, model, x1, x2, mode in workloads(small):
        params = {k: v.detach() for k, v in model.named_parameters()}

        def single(p, x, model=model):
            return functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)

        fns = {
            "tutorial jacobian": lambda s=single, p=params, a=x1, b=x2, c=mode: tutorial_jacobian(s, p, a, b, c),
            "gradwise jacobian": lambda m=model, a=x1, b=x2, c=mode: empirical_ntk(m, a, b, mode=c),
            "tutorial ntk-vp": lambda s=single, p=params, a=x1, b=x2, c=mode: tutorial_ntk_vps(s, p, a, b, c),
            "gradwise ntk-vp": lambda m=model, a=x1, b=x2, c=mode: empirical_ntk(m, a, b, mode=c,
                                                                                  implementation="ntk-vp"),
        }
        ref = fns["tutorial jacobian"]()
        for label, fn in fns.items():  # same numbers before timing
            torch.testing.assert_close(fn(), ref, rtol=1e-4, atol=1e-5)
            cands[f"{label} {name}"] = harness.Candidate(f"{label} {name}", fn)
        meta.append(dict(workload=name, n=x1.shape[0], m=x2.shape[0], mode=mode,
                         params=sum(p.numel() for p in params.values())))
    harness.interleave(cands, rounds=rounds, steps=reps, warmup=warmup, seed=seed, mode="shuffled", notes=notes)
    rows = []
    for w in meta:
        for impl in ("jacobian", "ntk-vp"):
            t = statistics.median(cands[f"tutorial {impl} {w['workload']}"].samples_ms)
            g = statistics.median(cands[f"gradwise {impl} {w['workload']}"].samples_ms)
            rows.append(dict(**w, impl=impl, tutorial_ms=t, gradwise_ms=g, ratio=g / t,
                             paired=harness.paired_ratio(cands[f"gradwise {impl} {w['workload']}"],
                                                         cands[f"tutorial {impl} {w['workload']}"]),
                             verdict="PASS" if g / t <= TARGET else "MISS"))
    return dict(rows=rows, notes=notes, rounds=rounds, reps=reps, warmup=warmup, small=small,
                machine=harness.machine_description(), **harness.machine_info())


def to_markdown(res: dict) -> str:
    lines = [
        "## Empirical NTK time",
        "",
        "Written by `python benchmarks/ntk_step.py --markdown PATH` (issue 21); every number below is from "
        "that one run.",
        "",
        *harness.info_lines(res),
        "- Workloads (float32): `ntkmlp` NTKMLP [2, 512, 512, 512, 1] on 32 x 32 points of the circle, trace; "
        "`mlp` nn.Sequential [16, 256, 256, 10] on 16 x 16 inputs, full; `cnn` two 3x3 convs (16 channels, "
        "3x8x8 input) + linear to 10 on 8 x 8 inputs, full" + (" (small mode: smaller)" if res["small"] else ""),
        "- Baseline: PyTorch's NTK tutorial (`empirical_ntk_jacobian_contraction`, `empirical_ntk_ntk_vps`), "
        "written out in the script",
        f"- Method: {res['warmup']} warm-up round, then {res['rounds']} rounds x {res['reps']} calls of every "
        "candidate in shuffled order; median ms/call; ratio = gradwise / tutorial for the same implementation, "
        f"paired = median of per-round ratios; target <= {TARGET}",
        "",
        *harness.markdown_table(("workload", "N x M", "params", "implementation", "tutorial ms", "gradwise ms",
                                 "ratio", "paired", "target"),
                                ((r["workload"], f"{r['n']} x {r['m']}", str(r["params"]), r["impl"],
                                  f"{r['tutorial_ms']:.1f}", f"{r['gradwise_ms']:.1f}", f"{r['ratio']:.2f}",
                                  "" if r["paired"] is None else f"{r['paired']:.2f}", r["verdict"])
                                 for r in res["rows"]), left=(0, 3)),
    ]
    lines += harness.note_lines(res)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return harness.int_options_main(
        argv, __doc__.splitlines()[0], {"rounds": 6, "reps": 3}, run, to_markdown, "ntk_step",
        lambda r: (f"{r['workload']:7s} {r['impl']:8s} tutorial {r['tutorial_ms']:9.2f} ms  gradwise "
                   f"{r['gradwise_ms']:9.2f} ms  x{r['ratio']:.2f}  {r['verdict']}"),
        flags={"small": "tiny workloads (tests)"})


if __name__ == "__main__":
    sys.exit(main())
