"""LAME's cost: a LAME call (forward + affinity + solver) against the bare forward pass it wraps.

    python benchmarks/lame_step.py [--sizes 8 64 256] [--rounds 10] [--reps 3] [--threads N]
                                   [--markdown PATH] [--json PATH]

Workload: a BatchNorm CNN for 8x8 digits (conv 16, conv 32, max-pool, linear 64, linear 10; the
arena's kind of model), trained for a few epochs on scikit-learn's digits (random images if
scikit-learn is missing, or untrained on random images with ``epochs=0``, the tests' small mode),
in eval mode, under ``torch.no_grad``; the batches are digits images. For each batch size N,
``model(x)`` and ``LAME(model)(x)`` (defaults: rbf, knn 5, lambda 1, at most 100 steps) are timed
interleaved in one process; ratio = median LAME / median forward, target <= 2 (issue 17, N <= 256).
The solver's step count on the timed batch is given beside it.
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
from torch import nn  # noqa: E402

TARGET = 2.0


def digits(n: int, seed: int = 0, real: bool = True) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        if not real:
            raise ImportError
        from sklearn.datasets import load_digits
    except ImportError:
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen), "random images"
    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return x, torch.as_tensor(y), "scikit-learn digits"


def model(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10))
    if epochs == 0:
        return net.eval()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def solver_steps(net: nn.Module, x: torch.Tensor) -> int:
    """Updates the solver makes on ``x`` (the fewest max_steps that give the 100-step result)."""
    from gradwise.tta import lame

    feats = []
    hook = net[-1].register_forward_pre_hook(lambda m, a: feats.append(a[0]))
    with torch.no_grad():
        probs = net(x).softmax(-1)
    hook.remove()
    full = lame(probs, feats[0])
    return next(s for s in range(101) if torch.equal(lame(probs, feats[0], max_steps=s), full))


def run(sizes, rounds: int, reps: int, warmup: int = 2, epochs: int = 3, seed: int = 0) -> dict:
    from gradwise.tta import LAME

    x_all, y_all, source = digits(max(sizes), seed, real=epochs > 0)  # untrained: random images
    net = model(x_all, y_all, epochs, seed)
    wrapped = LAME(net)
    gen = torch.Generator().manual_seed(seed)
    batches = {n: x_all[torch.randperm(len(x_all), generator=gen)[:n]] for n in sizes}
    cands, notes = {}, []
    for n, xb in batches.items():
        cands[f"forward N={n}"] = harness.Candidate(f"forward N={n}", lambda xb=xb: net(xb))
        cands[f"LAME N={n}"] = harness.Candidate(f"LAME N={n}", lambda xb=xb: wrapped(xb))
    with torch.no_grad():
        harness.interleave(cands, rounds=rounds, steps=reps, warmup=warmup, seed=seed, mode="shuffled", notes=notes)
    rows = []
    for n, xb in batches.items():
        fwd, lam = (statistics.median(cands[f"{k} N={n}"].samples_ms) for k in ("forward", "LAME"))
        rows.append(dict(n=n, forward_ms=fwd, lame_ms=lam, ratio=lam / fwd, steps=solver_steps(net, xb),
                         paired=harness.paired_ratio(cands[f"LAME N={n}"], cands[f"forward N={n}"]),
                         verdict="PASS" if lam / fwd <= TARGET else "MISS"))
    return dict(rows=rows, notes=notes, source=source, epochs=epochs, rounds=rounds, reps=reps, warmup=warmup,
                machine=harness.machine_description(), **harness.machine_info())


def to_markdown(res: dict) -> str:
    lines = [
        "## LAME call time",
        "",
        "Written by `python benchmarks/lame_step.py --markdown PATH` (issue 17); every number below is from "
        "that one run.",
        "",
        *harness.info_lines(res),
        f"- Workload: a BatchNorm CNN for 8x8 digits (conv 16, conv 32, max-pool, linear 64, linear 10) trained "
        f"{res['epochs']} epochs on {res['source']}, eval mode, `torch.no_grad`; batches of N digits images; "
        "`LAME(model)` with its defaults (rbf, knn 5, lambda 1, at most 100 steps; features = input of the "
        "last linear layer)",
        f"- Method: {res['warmup']} warm-up rounds, then {res['rounds']} rounds x {res['reps']} calls of every "
        "candidate in shuffled order; median ms/call; ratio = LAME / forward, paired = median over rounds of "
        f"the per-round ratio; target <= {TARGET} for N <= 256 (PASS/MISS); steps = the solver's updates on "
        "that batch",
        "",
        *harness.markdown_table(("N", "forward ms", "LAME ms", "ratio", "paired", "steps", "target"),
                                ((str(r["n"]), f"{r['forward_ms']:.3f}", f"{r['lame_ms']:.3f}", f"{r['ratio']:.2f}",
                                  "" if r["paired"] is None else f"{r['paired']:.2f}", str(r["steps"]), r["verdict"])
                                 for r in res["rows"]), left=()),
    ]
    lines += harness.note_lines(res)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        harness.reexec_with_malloc_env()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 64, 256])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    harness.add_output_args(p)
    args = p.parse_args(argv)
    harness.apply_threads(args.threads)
    res = run(args.sizes, args.rounds, args.reps)
    for r in res["rows"]:
        print(f"N={r['n']:4d} forward {r['forward_ms']:8.3f} ms  LAME {r['lame_ms']:8.3f} ms  x{r['ratio']:.2f}  "
              f"steps {r['steps']:3d}  {r['verdict']}")
    for note in res["notes"]:
        print("note:", note)
    harness.save(res, args, "lame_step", to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
