"""ReSTE's cost: ``reste_sign`` forward + backward against sign with the plain clipped STE.

    python benchmarks/reste_step.py [--sizes 65536 1048576] [--rounds 10] [--reps 5] [--threads N]
                                    [--markdown PATH] [--json PATH]

Workload: a float32 tensor of N entries drawn from N(0, 0.5^2) (binary-net weights and pre-activations
live mostly inside t = 1.5), leaf with ``requires_grad``; one step = forward, then ``backward`` with a
fixed incoming gradient, ``.grad`` reset before each step (untimed). Candidates, timed interleaved in one
process: ``gradwise.compression.reste_sign`` at o = 2 (the power branch; o = 1 is cheaper in no way) and
the baseline, a bare autograd Function written here: ``torch.sign`` forward, ``where(|x| > 1, 0, g)``
backward (BinaryConnect's clipped STE, what torchao's STE computes). ratio = median ReSTE / median STE,
target <= 2 (issue 20). ``gradwise.compression.ste_sign`` (which keeps NaN where torch.sign gives 0) is
timed beside them.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # harness.py sits beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402

TARGET = 2.0


class PlainSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.where(x.abs() > 1, 0.0, g)


def run(sizes, rounds: int, reps: int, warmup: int = 2, o: float = 2.0, seed: int = 0) -> dict:
    from gradwise.compression import reste_sign, ste_sign

    fns = {"plain STE": PlainSTE.apply, "ReSTE": lambda x: reste_sign(x, o), "gradwise ste_sign": ste_sign}
    gen = torch.Generator().manual_seed(seed)
    cands, notes = {}, []
    for n in sizes:
        x = (torch.randn(n, generator=gen) * 0.5).requires_grad_()
        g = torch.randn(n, generator=gen)

        def reset(x=x):
            x.grad = None

        for name, fn in fns.items():
            cands[f"{name} N={n}"] = harness.Candidate(f"{name} N={n}", lambda fn=fn, x=x, g=g: fn(x).backward(g),
                                                       prepare=reset)
    harness.interleave(cands, rounds=rounds, steps=reps, warmup=warmup, seed=seed, mode="shuffled", notes=notes)
    rows = []
    for n in sizes:
        med = {name: statistics.median(cands[f"{name} N={n}"].samples_ms) for name in fns}
        ratio = med["ReSTE"] / med["plain STE"]
        rows.append(dict(n=n, ste_ms=med["plain STE"], reste_ms=med["ReSTE"], ste_sign_ms=med["gradwise ste_sign"],
                         ratio=ratio, paired=harness.paired_ratio(cands[f"ReSTE N={n}"], cands[f"plain STE N={n}"]),
                         verdict="PASS" if ratio <= TARGET else "MISS"))
    return dict(rows=rows, notes=notes, o=o, rounds=rounds, reps=reps, warmup=warmup,
                machine=harness.machine_description(), **harness.machine_info())


def to_markdown(res: dict) -> str:
    lines = [
        "## ReSTE estimator time",
        "",
        "Written by `python benchmarks/reste_step.py --markdown PATH` (issue 20); every number below is from "
        "that one run.",
        "",
        *harness.info_lines(res),
        f"- Workload: float32 tensor of N entries ~ N(0, 0.5^2); one step = forward + backward with a fixed "
        f"incoming gradient; `reste_sign(x, o={res['o']:g})` (t 1.5, interval 0.1) against a bare sign + clipped "
        "STE autograd Function; `ste_sign` is gradwise's STE (NaN-keeping forward)",
        f"- Method: {res['warmup']} warm-up rounds, then {res['rounds']} rounds x {res['reps']} steps of every "
        "candidate in shuffled order; median ms/step; ratio = ReSTE / plain STE, paired = median over rounds "
        f"of the per-round ratio; target <= {TARGET} (PASS/MISS)",
        "",
        *harness.markdown_table(("N", "plain STE ms", "ReSTE ms", "ste_sign ms", "ratio", "paired", "target"),
                                ((str(r["n"]), f"{r['ste_ms']:.3f}", f"{r['reste_ms']:.3f}", f"{r['ste_sign_ms']:.3f}",
                                  f"{r['ratio']:.2f}", "" if r["paired"] is None else f"{r['paired']:.2f}",
                                  r["verdict"]) for r in res["rows"]), left=()),
    ]
    lines += harness.note_lines(res)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        harness.reexec_with_malloc_env()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[65536, 1048576])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--reps", type=int, default=5)
    harness.add_output_args(p)
    args = p.parse_args(argv)
    harness.apply_threads(args.threads)
    res = run(args.sizes, args.rounds, args.reps)
    for r in res["rows"]:
        print(f"N={r['n']:8d} STE {r['ste_ms']:8.3f} ms  ReSTE {r['reste_ms']:8.3f} ms  x{r['ratio']:.2f}  {r['verdict']}")
    for note in res["notes"]:
        print("note:", note)
    harness.save(res, args, "reste_step", to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
