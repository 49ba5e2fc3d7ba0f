"""Forward + backward time of ScaleLong's skip scaling, the MIP hypernetwork and OutputScale, each against its
closest plain-torch equivalent, as ratios of medians measured interleaved in one process.

    OMP_NUM_THREADS=1 python tools/bench/issue10_layers.py [--rounds 15] [--steps 5] [--threads 1]

It lives outside benchmarks/ (whose scripts are a fixed set that save their results) and uses that folder's
harness for the interleaved timing; its rows are meant for the layer benchmark there.

Shapes (small, realistic):
* ScaleLong: 6 long skips of a UViT-like net, [32, 65, 256] each; a step scales them (CS, or LS with one
  shared calibration module) and backpropagates ``sum(skip.sum())``; the baseline passes the skips unchanged.
* MIP: a hypernetwork with input size 2 and hidden sizes [64, 128] predicting the 7.0k parameters of an MLP
  32-64-64-10 for a batch of 16 inputs; the baseline is the same plain ``nn.Sequential`` MLP with one flat
  output (no encoding, no split into named tensors).
* OutputScale: an MLP 64-256-256-10 on a batch of 128; the baseline is the bare model. Centering runs a second
  forward pass at the initial parameters (under no_grad), so it costs more than the bare model by design.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for folder in (ROOT / "benchmarks", ROOT / "src"):  # the harness, and gradwise from a checkout
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import harness  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from gradwise.nn import LongSkipScaling, MIPHyperNet, OutputScale  # noqa: E402


def candidates() -> dict[str, tuple[str, harness.Candidate]]:
    torch.manual_seed(0)
    out = {}
    skips = [torch.randn(32, 65, 256, requires_grad=True) for _ in range(6)]

    def skip_step(f):
        def step():
            for s in skips:
                s.grad = None
            sum(s.sum() for s in f(skips)).backward()
        return step

    out["plain skip"] = ("scalelong", harness.Candidate("plain skip", skip_step(lambda xs: xs)))
    cs = LongSkipScaling(6, mode="cs", kappa=0.5)
    ls = LongSkipScaling(6, features=65, mode="ls")
    out["LongSkipScaling cs"] = ("scalelong", harness.Candidate("LongSkipScaling cs", skip_step(cs)))
    out["LongSkipScaling ls"] = ("scalelong", harness.Candidate("LongSkipScaling ls", skip_step(ls)))

    target = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    total = sum(p.numel() for p in target.parameters())
    gamma = torch.rand(16, 2)
    mip = MIPHyperNet(target, input_size=2, hidden_sizes=[64, 128])
    plain = nn.Sequential(nn.Linear(2, 64), nn.LeakyReLU(), nn.Linear(64, 128), nn.LeakyReLU(), nn.Linear(128, total))

    def mip_step():
        mip.zero_grad(set_to_none=True)
        sum(v.sum() for v in mip(gamma).values()).backward()

    def plain_step():
        plain.zero_grad(set_to_none=True)
        plain(gamma).sum().backward()

    out["plain MLP hypernet"] = ("mip", harness.Candidate("plain MLP hypernet", plain_step))
    out["MIPHyperNet"] = ("mip", harness.Candidate("MIPHyperNet", mip_step))

    model = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10))
    x = torch.randn(128, 64)
    scaled = OutputScale(model, alpha=2.0)
    uncentered = OutputScale(model, alpha=2.0, center=False)

    def model_step(f):
        def step():
            model.zero_grad(set_to_none=True)
            f(x).sum().backward()
        return step

    out["bare model"] = ("outputscale", harness.Candidate("bare model", model_step(model)))
    out["OutputScale centered"] = ("outputscale", harness.Candidate("OutputScale centered", model_step(scaled)))
    out["OutputScale center=False"] = ("outputscale",
                                       harness.Candidate("OutputScale center=False", model_step(uncentered)))
    return out


BASE = {"scalelong": "plain skip", "mip": "plain MLP hypernet", "outputscale": "bare model"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    harness.apply_threads(args.threads)
    todo = candidates()
    cands = {k: c for k, (_, c) in todo.items()}
    notes: list[str] = []
    harness.interleave(cands, rounds=args.rounds, steps=args.steps, warmup=3, mode="shuffled", notes=notes)
    info = harness.machine_info()
    print(f"# {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['torch_threads']} thread(s), "
          f"load {info['load_average']}")
    print("| layer | median ms | baseline | baseline ms | ratio | paired ratio |")
    print("|---|---:|---|---:|---:|---:|")
    for label, (group, cand) in todo.items():
        base = cands[BASE[group]]
        med, bmed = statistics.median(cand.samples_ms), statistics.median(base.samples_ms)
        paired = harness.paired_ratio(cand, base)
        print(f"| {label} | {med:.3f} | {base.label} | {bmed:.3f} | {med / bmed:.2f} | "
              f"{paired:.2f} |" if paired is not None else f"| {label} | {med:.3f} | {base.label} | {bmed:.3f} | "
              f"{med / bmed:.2f} | - |")
    for n in notes:
        print("note:", n)


if __name__ == "__main__":
    main()
