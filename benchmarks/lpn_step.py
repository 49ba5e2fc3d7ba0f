"""LPN's cost: a training step (prox forward, double backward to the weights) against the authors' module.

    LPN_REPO=/path/to/learned-proximal-networks python benchmarks/lpn_step.py [--rounds 10] [--reps 5]
                                               [--threads N] [--markdown PATH] [--json PATH]

Workload, two sizes: their Laplacian notebook's network (in_dim 1, hidden 50, 4 layers, softplus beta 10, batch
2000) and an 8x8-digits size (in_dim 64, hidden 256, 2 layers, beta 1, batch 256); float32. One step =
``zero_grad``, prox forward on noisy inputs, ``mean((f(x) - target)^2).backward()`` (the weights' gradient goes
through the input gradient: a double backward). Candidates, timed interleaved in one process:
``gradwise.sciml.LPN`` and the authors' ``LPN`` (``exps/laplacian/network.py`` at commit cbc3cfa, read from
their repository with ``git show`` at run time, not copied; ``LPN_REPO`` points at a git directory of theirs,
by default the search tool's mirror), same weights. Theirs sets ``requires_grad`` on its input, so it gets a
fresh ``detach()`` of the input each step (gradwise detaches internally). ratio = median gradwise / median
theirs, target <= 1.1 (issue 21).
"""
from __future__ import annotations

import importlib
import os
import statistics
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # harness.py sits beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402

TARGET = 1.1
COMMIT = "cbc3cfa"
SIZES = {"laplacian": (1, 50, 4, 10.0, 2000), "digits": (64, 256, 2, 1.0, 256)}
DEFAULT_REPO = "/work/.mirror/ZhenghanFang+learned-proximal-networks/repo"


def _their_lpn_class():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "golden"))
    from authors_code import extract

    extract(os.environ.get("LPN_REPO", DEFAULT_REPO), COMMIT, ["exps/laplacian/network.py"],
            on_path=("exps/laplacian",))
    return importlib.import_module("network").LPN


def run(rounds: int, reps: int, warmup: int = 2, seed: int = 0, sizes=tuple(SIZES)) -> dict:
    from gradwise.sciml import LPN

    Theirs = _their_lpn_class()
    gen = torch.Generator().manual_seed(seed)
    cands, notes = {}, []
    for size in sizes:
        in_dim, hidden, layers, beta, batch = SIZES[size]
        ours = LPN(in_dim, hidden, layers=layers, beta=beta).init_weights_(generator=gen)
        theirs = Theirs(in_dim=in_dim, hidden=hidden, layers=layers, beta=beta)
        theirs.load_state_dict(ours.state_dict())
        target = torch.randn(batch, in_dim, generator=gen)
        x = target + 0.5 * torch.randn(batch, in_dim, generator=gen)

        def step_ours(m=ours, x=x, t=target):
            m.zero_grad(set_to_none=True)
            (m(x) - t).pow(2).mean().backward()

        def step_theirs(m=theirs, x=x, t=target):
            m.zero_grad(set_to_none=True)
            (m(x.detach()) - t).pow(2).mean().backward()

        cands[f"gradwise {size}"] = harness.Candidate(f"gradwise {size}", step_ours)
        cands[f"theirs {size}"] = harness.Candidate(f"theirs {size}", step_theirs)
    harness.interleave(cands, rounds=rounds, steps=reps, warmup=warmup, seed=seed, mode="shuffled", notes=notes)
    rows = []
    for size in sizes:
        ours_ms = statistics.median(cands[f"gradwise {size}"].samples_ms)
        theirs_ms = statistics.median(cands[f"theirs {size}"].samples_ms)
        ratio = ours_ms / theirs_ms
        rows.append(dict(size=size, config=list(SIZES[size]), ours_ms=ours_ms, theirs_ms=theirs_ms, ratio=ratio,
                         paired=harness.paired_ratio(cands[f"gradwise {size}"], cands[f"theirs {size}"]),
                         verdict="PASS" if ratio <= TARGET else "MISS"))
    return dict(rows=rows, notes=notes, rounds=rounds, reps=reps, warmup=warmup,
                machine=harness.machine_description(), **harness.machine_info())


def to_markdown(res: dict) -> str:
    lines = [
        "## LPN training-step time",
        "",
        "Written by `python benchmarks/lpn_step.py --markdown PATH` (issue 21); every number below is from "
        "that one run.",
        "",
        *harness.info_lines(res),
        "- Workload: float32; one step = zero_grad, prox forward, mean((f(x) - target)^2).backward() (a double "
        "backward); `gradwise.sciml.LPN` against the authors' `LPN` (`exps/laplacian/network.py` @ cbc3cfa) "
        "with the same weights; config = (in_dim, hidden, layers, beta, batch)",
        f"- Method: {res['warmup']} warm-up rounds, then {res['rounds']} rounds x {res['reps']} steps of every "
        "candidate in shuffled order; median ms/step; ratio = gradwise / theirs, paired = median over rounds "
        f"of the per-round ratio; target <= {TARGET} (PASS/MISS)",
        "",
        *harness.markdown_table(("size", "config", "theirs ms", "gradwise ms", "ratio", "paired", "target"),
                                ((r["size"], str(tuple(r["config"])), f"{r['theirs_ms']:.3f}", f"{r['ours_ms']:.3f}",
                                  f"{r['ratio']:.2f}", "" if r["paired"] is None else f"{r['paired']:.2f}",
                                  r["verdict"]) for r in res["rows"]), left=(0, 1)),
    ]
    lines += harness.note_lines(res)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        harness.reexec_with_malloc_env()
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--sizes", nargs="+", choices=tuple(SIZES), default=list(SIZES))
    harness.add_output_args(p)
    args = p.parse_args(argv)
    harness.apply_threads(args.threads)
    res = run(args.rounds, args.reps, sizes=tuple(args.sizes))
    for r in res["rows"]:
        print(f"{r['size']:10s} theirs {r['theirs_ms']:8.3f} ms  gradwise {r['ours_ms']:8.3f} ms  "
              f"x{r['ratio']:.2f}  {r['verdict']}")
    for note in res["notes"]:
        print("note:", note)
    harness.save(res, args, "lpn_step", to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
