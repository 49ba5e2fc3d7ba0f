"""Loss step-time benchmark: forward + backward of classification losses vs F.cross_entropy.

    python benchmarks/loss_step.py [--n 4096] [--c 1000] [--rounds 15] [--reps 3] [--threads N]
                                   [--markdown PATH] [--json PATH]

Every loss gets the same float32 logits [n, c] (requires_grad) and int64
labels; one "step" is ``loss_fn(logits, target).backward()`` with the
gradient cleared before it. All losses are timed interleaved in one process:
after warm-up, each round runs every loss ``--reps`` times in a freshly
shuffled order, and the median over all of a loss's timings is reported with
its ratio to the median of ``F.cross_entropy``. Target: ratio <= 1.5
(PASS/MISS). ``--markdown`` writes the section ``loss_step`` of that file.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # harness.py sits beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

TARGET = 1.5


def cases() -> tuple[list[tuple[str, object]], list[str]]:
    import gradwise.losses as L

    out: list[tuple[str, object]] = [("F.cross_entropy", lambda x, y: F.cross_entropy(x, y))]
    notes: list[str] = []
    out.append(("comp_sum_loss(tau=1.5)", lambda x, y: L.comp_sum_loss(x, y, tau=1.5)))
    out.append(("ldr_loss", lambda x, y: L.ldr_loss(x, y)))
    out.append(("z_loss", lambda x, y: L.z_loss(x, y)))
    out.append(("stablemax_cross_entropy", lambda x, y: L.stablemax_cross_entropy(x, y)))
    ca = getattr(L, "correctness_aware_loss", None)
    if ca is None:
        notes.append("correctness_aware_loss is not exported by gradwise.losses yet: skipped")
    else:
        out.append(("correctness_aware_loss", lambda x, y: ca(x, y)))
    return out, notes


def run(n: int, c: int, rounds: int, reps: int, warmup: int = 3, seed: int = 0) -> dict:
    todo, notes = cases()
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=gen) * 3).requires_grad_(True)
    y = torch.randint(0, c, (n,), generator=gen)

    def clear() -> None:
        x.grad = None

    # warm-up rounds of one step of every loss, then rounds of `reps` steps of every loss, all shuffled together
    cands = {name: harness.Candidate(name, lambda fn=fn: fn(x, y).backward(), clear) for name, fn in todo}
    harness.interleave(cands, rounds=rounds, steps=reps, warmup=warmup, seed=seed, mode="shuffled", notes=notes)
    timed = {name: cand.samples_ms for name, cand in cands.items() if not cand.error}
    base = statistics.median(timed["F.cross_entropy"])
    rows = []
    for name, _ in todo:
        if name not in timed:
            continue
        med = statistics.median(timed[name])
        rows.append(dict(name=name, ms=med, ratio=med / base,
                         verdict="" if name == "F.cross_entropy" else ("PASS" if med / base <= TARGET else "MISS")))
    return dict(rows=rows, notes=notes, n=n, c=c, rounds=rounds, reps=reps, warmup=warmup,
                machine=harness.machine_description(), torch=torch.__version__, threads=torch.get_num_threads(),
                python=platform.python_version(), date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                loadavg=harness.load_average())


def to_markdown(res: dict) -> str:
    lines = [
        "## Loss step time",
        "",
        "Written by `python benchmarks/loss_step.py --markdown PATH`; every number below is from that one run.",
        "",
        f"- Machine: {res['machine']}, device `cpu`",
        f"- Software: torch {res['torch']} ({res['threads']} threads), Python {res['python']}",
        f"- Date: {res['date']}; load average at start: {res['loadavg']:.1f}" if res["loadavg"] is not None
        else f"- Date: {res['date']}",
        f"- Workload: float32 logits [{res['n']}, {res['c']}] (requires_grad), int64 labels; one step = "
        "loss(logits, target).backward()",
        f"- Method: {res['warmup']} warm-up rounds, then {res['rounds']} rounds x {res['reps']} steps of every loss "
        "in shuffled order; median ms/step; ratio = median / median of F.cross_entropy; target <= "
        f"{TARGET} (PASS/MISS); glibc malloc keeps freed memory (MALLOC_MMAP_THRESHOLD_, "
        "MALLOC_TRIM_THRESHOLD_) so that page faults of fresh 16 MB tensors do not dominate the timings",
        "",
        *harness.markdown_table(("loss", "ms", "ratio to F.cross_entropy", "target"),
                                ((r["name"], f"{r['ms']:.2f}", f"{r['ratio']:.2f}", r["verdict"]) for r in res["rows"]),
                                left=(0, 3)),
    ]
    for note in res["notes"]:
        lines += ["", f"Note: {note}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        harness.reexec_with_malloc_env()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--c", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--reps", type=int, default=3)
    harness.add_output_args(p)
    args = p.parse_args(argv)
    harness.apply_threads(args.threads)
    res = run(args.n, args.c, args.rounds, args.reps)
    for r in res["rows"]:
        print(f"{r['name']:28s} {r['ms']:8.2f} ms  x{r['ratio']:.2f}  {r['verdict']}")
    for note in res["notes"]:
        print("note:", note)
    harness.save(res, args, "loss_step", to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
