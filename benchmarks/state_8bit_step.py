"""AdamW step time with 8-bit state: gradwise (fused kernel and the decode/update/encode path) against
bitsandbytes' and torchao's 8-bit AdamW on CPU, and gradwise's 32-bit AdamW.

    python benchmarks/state_8bit_step.py [--steps 20] [--warmup 5] [--rounds 3] [--threads 1]

The model of issue 12: 8 x Linear(512, 512) (2.1M parameters; the weights get 8-bit state, the biases
stay 32-bit under bitsandbytes' and gradwise's min_8bit_size=4096). Every optimizer steps its own copy
with the same fixed gradients; the optimizers take turns step by step (interleaved), so a busy neighbour
on a shared machine slows all of them alike, and the median of each one's step times is reported with
its ratio to the faster of bitsandbytes and torchao.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(8)])


def builders():
    import gradwise.optim as go

    out = {
        "gradwise AdamW state_bits=8 (fused kernel)": lambda ps: go.AdamW(ps, lr=1e-3, state_bits=8),
        "gradwise AdamW state_bits=8 (fused=False)": lambda ps: go.AdamW(ps, lr=1e-3, state_bits=8, fused=False),
        "gradwise AdamW 32-bit": lambda ps: go.AdamW(ps, lr=1e-3),
    }
    try:
        import bitsandbytes as bnb
        out["bitsandbytes AdamW8bit"] = lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-3)
    except ImportError:
        pass
    try:
        from torchao.optim import AdamW8bit
        out["torchao AdamW8bit"] = lambda ps: AdamW8bit(ps, lr=1e-3)
    except ImportError:
        pass
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    runs = {}
    for name, build in builders().items():
        model = _model()
        ps = list(model.parameters())
        g = torch.Generator().manual_seed(1)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g) * 1e-2
        runs[name] = (build(ps), [])
    for i in range(args.warmup + args.steps):
        for name, (opt, times) in runs.items():
            t = time.perf_counter()
            opt.step()
            dt = time.perf_counter() - t
            if i >= args.warmup:
                times.append(dt)
    med = {name: statistics.median(times) * 1e3 for name, (_, times) in runs.items()}
    peers = [med[k] for k in ("bitsandbytes AdamW8bit", "torchao AdamW8bit") if k in med]
    best = min(peers) if peers else None
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown CPU")
    print(f"{cpu}, {args.threads} thread(s), torch {torch.__version__}, median of {args.steps} steps after "
          f"{args.warmup} warm-up")
    for name, ms in med.items():
        ratio = f"{ms / best:5.2f}x the faster peer" if best else ""
        print(f"  {name:45s} {ms:8.2f} ms  {ratio}")
    if best:
        ours = med["gradwise AdamW state_bits=8 (fused kernel)"] / best
        print(f"target <= 1.0x the faster of bitsandbytes and torchao: {'PASS' if ours <= 1.0 else 'MISS'} "
              f"({ours:.3f}x)")


if __name__ == "__main__":
    main()
