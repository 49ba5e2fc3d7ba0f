"""Test-time adaptation call-time benchmark: one EATA call vs one Tent call on the same BatchNorm CNN.

    python benchmarks/tta_step.py [--channels 32] [--size 32] [--classes 10] [--batch 64] [--rounds 15]
                                  [--reps 3] [--threads N] [--markdown PATH] [--json PATH]

One "call" is ``wrapper(x)`` on a fixed float32 batch ``[batch, 3, size, size]``: the forward pass, the
entropy loss, backward and the SGD update of the BatchNorm affine parameters (both with their default
optimizer, SGD lr 2.5e-4 momentum 0.9). EATA runs with a Fisher penalty (``eata_fishers`` from two
batches) in two settings: every sample selected (``e_margin`` above ``ln C``, ``d_margin=1``: its whole
extra work, the selection, the redundancy filter, the probability average and the penalty, on a full
backward) and its defaults (``e_margin = 0.4 ln C``, ``d_margin = 0.05``: on this untrained model almost no
sample passes, so most calls skip the backward). Each candidate adapts its own copy of the model. All are
timed interleaved in one process: after warm-up, each round runs every candidate ``--reps`` times in a
freshly shuffled order; the median is reported with its ratio to Tent. Target (issue 17): an EATA call
<= 1.2x a Tent call (PASS/MISS). ``--markdown`` writes the section ``tta_step`` of that file.
"""
from __future__ import annotations

import copy
import math
import statistics
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # harness.py sits beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

TARGET = 1.2
TENT = "Tent"


def bn_cnn(channels: int, classes: int) -> nn.Module:
    """Three conv-BN-ReLU blocks (the last two strided), global pooling and a linear classifier."""
    c = channels
    return nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
        nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, classes))


def run(channels: int, size: int, classes: int, batch: int, rounds: int, reps: int, warmup: int = 3,
        seed: int = 0) -> dict:
    from gradwise.tta import EATA, Tent, eata_fishers

    load = harness.load_average()
    torch.manual_seed(seed)
    base = bn_cnn(channels, classes)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=gen)
    fishers = eata_fishers(copy.deepcopy(base), [torch.randn(batch, 3, size, size, generator=gen) for _ in range(2)])
    wrappers = {
        TENT: Tent(copy.deepcopy(base)),
        "EATA (every sample selected)": EATA(copy.deepcopy(base), fishers=fishers,
                                             e_margin=math.log(classes) + 1.0, d_margin=1.0),
        "EATA (defaults)": EATA(copy.deepcopy(base), fishers=fishers),
    }
    calls = dict.fromkeys(wrappers, 0)

    def call(name):
        calls[name] += 1
        wrappers[name](x)
    cands = {name: harness.Candidate(name, lambda name=name: call(name)) for name in wrappers}
    notes = [n for n in (harness.busy_note(load),) if n]
    harness.interleave(cands, rounds=rounds, steps=reps, warmup=warmup, seed=seed, mode="shuffled", notes=notes)
    timed = {name: statistics.median(c.samples_ms) for name, c in cands.items() if not c.error}
    ref = timed[TENT]
    rows = []
    for name, ms in timed.items():
        w = wrappers[name]
        selected = f"{w.num_selected / max(calls[name] * batch, 1):.0%}" if isinstance(w, EATA) else "100%"
        rows.append(dict(name=name, ms=ms, ratio=ms / ref, selected=selected,
                         verdict="" if name == TENT else ("PASS" if ms / ref <= TARGET else "MISS")))
    n_params = sum(p.numel() for p in base.parameters())
    return dict(rows=rows, notes=notes, channels=channels, size=size, classes=classes, batch=batch,
                params=n_params, rounds=rounds, reps=reps, warmup=warmup, **harness.cpu_run_fields(load))


def to_markdown(res: dict) -> str:
    c = res["channels"]
    lines = [
        "## Test-time adaptation call time",
        "",
        "Written by `python benchmarks/tta_step.py --threads 1 --markdown PATH` (issue 17); every number below "
        "is from that one run.",
        "",
        *harness.cpu_run_lines(res),
        f"- Workload: float32 BatchNorm CNN (conv {c}, {2 * c}, {2 * c}, global pooling, linear {res['classes']}; "
        f"{res['params']:,} parameters) on a fixed batch of {res['batch']} images 3x{res['size']}x{res['size']}; "
        "one call = forward, entropy loss, backward, SGD update of the BatchNorm affine parameters",
        f"- Method: {res['warmup']} warm-up rounds, then {res['rounds']} rounds x {res['reps']} calls of every "
        "candidate in shuffled order; median ms/call; ratio = median / Tent's median; target <= "
        f"{TARGET} (PASS/MISS); selected = the share of samples EATA backpropagated over the run",
        "",
        *harness.markdown_table(("call", "ms", "ratio to Tent", "selected", "target"),
                                ((r["name"], f"{r['ms']:.3f}", f"{r['ratio']:.2f}", r["selected"], r["verdict"])
                                 for r in res["rows"]), left=(0, 4)),
        *[line for note in res["notes"] for line in ("", f"Note: {note}.")],
    ]
    return "\n".join(lines) + "\n"


DEFAULTS = dict(channels=32, size=32, classes=10, batch=64, rounds=15, reps=3)


def main(argv: list[str] | None = None) -> int:
    return harness.int_options_main(argv, __doc__.splitlines()[0], DEFAULTS, run, to_markdown, "tta_step",
                                    lambda r: (f"{r['name']:30s} {r['ms']:8.3f} ms  x{r['ratio']:.2f}  "
                                               f"selected {r['selected']:>4s}  {r['verdict']}"))


if __name__ == "__main__":
    sys.exit(main())
