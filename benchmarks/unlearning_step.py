"""Unlearning step-time benchmark: one SalUn step vs one plain SGD step on the same MLP classifier.

    python benchmarks/unlearning_step.py [--d 784] [--hidden 512] [--classes 10] [--batch 128] [--rounds 15]
                                         [--reps 3] [--threads N] [--markdown PATH] [--json PATH]

One "step" is forward, cross-entropy, backward and the update on a fixed float32 batch: for SGD
``zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()`` with ``torch.optim.SGD``
(lr 0.01, momentum 0.9, weight decay 5e-4: SalUn's defaults), for SalUn ``SalUn.step(x, y)`` with
a saliency mask of ratio 0.5 (and with ``mask=None``). Each candidate has its own copy of the model.
All are timed interleaved in one process: after warm-up, each round runs every candidate ``--reps``
times in a freshly shuffled order; the median is reported with its ratio to the faster SGD
(foreach or loop). Target: SalUn step <= 1.3x an SGD step (PASS/MISS). ``--markdown`` writes the
section ``unlearning_step`` of that file.
"""
from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # harness.py sits beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

TARGET = 1.3
SGD_NAMES = ("torch SGD (loop)", "torch SGD (foreach)")


def run(d: int, hidden: int, classes: int, batch: int, rounds: int, reps: int, warmup: int = 3,
        seed: int = 0) -> dict:
    from gradwise.unlearning import SalUn, saliency_mask

    load = harness.load_average()
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(batch, d, generator=gen), torch.randint(0, classes, (batch,), generator=gen)
    mask = saliency_mask(base, [(x, y)], ratio=0.5)
    cands: dict[str, harness.Candidate] = {}
    for name, foreach in zip(SGD_NAMES, (False, True)):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=foreach)

        def sgd_step(model=model, opt=opt):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        cands[name] = harness.Candidate(name, sgd_step)
    for name, m in (("SalUn (mask ratio 0.5)", mask), ("SalUn (mask=None)", None)):
        un = SalUn(copy.deepcopy(base), m)
        cands[name] = harness.Candidate(name, lambda un=un: un.step(x, y))
    notes = [n for n in (harness.busy_note(load),) if n]
    harness.interleave(cands, rounds=rounds, steps=reps, warmup=warmup, seed=seed, mode="shuffled", notes=notes)
    timed = {name: statistics.median(c.samples_ms) for name, c in cands.items() if not c.error}
    ref = min(timed[n] for n in SGD_NAMES if n in timed)
    rows = [dict(name=name, ms=ms, ratio=ms / ref,
                 verdict="" if name in SGD_NAMES else ("PASS" if ms / ref <= TARGET else "MISS"))
            for name, ms in timed.items()]
    n_params = sum(p.numel() for p in base.parameters())
    return dict(rows=rows, notes=notes, d=d, hidden=hidden, classes=classes, batch=batch, params=n_params,
                rounds=rounds, reps=reps, warmup=warmup, **harness.cpu_run_fields(load))


def to_markdown(res: dict) -> str:
    lines = [
        "## Unlearning step time",
        "",
        "Written by `python benchmarks/unlearning_step.py --threads 1 --markdown PATH`; every number below is "
        "from that one run.",
        "",
        *harness.cpu_run_lines(res),
        f"- Workload: float32 MLP {res['d']}-{res['hidden']}-{res['hidden']}-{res['classes']} ({res['params']:,} "
        f"parameters), batch {res['batch']}; one step = forward, cross-entropy, backward, update (lr 0.01, "
        "momentum 0.9, weight decay 5e-4)",
        f"- Method: {res['warmup']} warm-up rounds, then {res['rounds']} rounds x {res['reps']} steps of every "
        "candidate in shuffled order; median ms/step; ratio = median / median of the faster torch SGD; target <= "
        f"{TARGET} (PASS/MISS)",
        "",
        *harness.markdown_table(("step", "ms", "ratio to SGD", "target"),
                                ((r["name"], f"{r['ms']:.3f}", f"{r['ratio']:.2f}", r["verdict"])
                                 for r in res["rows"]), left=(0, 3)),
        *[line for note in res["notes"] for line in ("", f"Note: {note}.")],
    ]
    return "\n".join(lines) + "\n"


DEFAULTS = dict(d=784, hidden=512, classes=10, batch=128, rounds=15, reps=3)


def main(argv: list[str] | None = None) -> int:
    return harness.int_options_main(argv, __doc__.splitlines()[0], DEFAULTS, run, to_markdown, "unlearning_step",
                                    lambda r: f"{r['name']:26s} {r['ms']:8.3f} ms  x{r['ratio']:.2f}  {r['verdict']}")


if __name__ == "__main__":
    sys.exit(main())
