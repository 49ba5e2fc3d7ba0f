"""SaRA step-time and state-memory benchmark: one SaRA step (dense and sparse paths) vs one torch AdamW step.

    python benchmarks/sara_step.py [--small 0] [--fraction 10] [--rounds 15] [--reps 3] [--threads N]
                                   [--markdown PATH] [--json PATH]

The tensor set is the optimizers' (``harness.make_tensors``: ~3.9M float32 parameters in 158 tensors, or a tiny
set with ``--small 1``) with its fixed gradients; one "step" is ``opt.step()`` only. SaRA's threshold is the
``--fraction`` percent quantile of all ``|w|`` (the paper trains the smallest 10-20 %), lr 1e-4, no nuclear norm.
Each candidate owns a copy of the parameters. All are timed interleaved in one process: after warm-up, each round
runs every candidate ``--reps`` times in a freshly shuffled order; the median is reported with its ratio to the
faster torch AdamW (foreach or loop). State memory is the bytes of every tensor in ``opt.state`` plus the
optimizer's own masks or indices, after one step, as a ratio to torch AdamW's state. Targets: SaRA step <= 1.5x
AdamW, sparse path's state <= 0.5x AdamW's (PASS/MISS). ``--markdown`` writes the section ``sara_step`` of that file.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # harness.py sits beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402

TIME_TARGET = 1.5
MEMORY_TARGET = 0.5
ADAMW_NAMES = ("torch AdamW (loop)", "torch AdamW (foreach)")


def state_bytes(opt) -> int:
    """Bytes of the optimizer's per-entry state: ``opt.state`` tensors plus SaRA's masks or indices."""
    tensors = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor) and t.dim()]
    for attr in ("_masks", "_index"):
        tensors += list(getattr(opt, attr, None) or [])
    if getattr(opt, "_initial_index", None) is not None:   # shared with _index until a re-selection
        tensors += [t for t, u in zip(opt._initial_index, opt._index) if t is not u]
    return sum(t.numel() * t.element_size() for t in tensors)


def run(small: int, fraction: int, rounds: int, reps: int, warmup: int = 3, seed: int = 0) -> dict:
    from gradwise.peft import SaRA

    load = harness.load_average()
    params, grads = harness.make_tensors(small=bool(small), seed=seed)
    flat = torch.cat([p.reshape(-1).abs() for p in params])
    threshold = float(flat.kthvalue(max(1, int(flat.numel() * fraction / 100))).values)
    cands: dict[str, harness.Candidate] = {}
    opts = {}

    def build(name, make):
        ps = [p.clone().requires_grad_(True) for p in params]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt = make(ps)
        opts[name] = opt
        cands[name] = harness.Candidate(name, opt.step)

    for name, foreach in zip(ADAMW_NAMES, (False, True)):
        build(name, lambda ps, f=foreach: torch.optim.AdamW(ps, lr=1e-4, weight_decay=1e-2, foreach=f))
    build("SaRA (dense)", lambda ps: SaRA(ps, threshold=threshold, lr=1e-4))
    build("SaRA (sparse)", lambda ps: SaRA(ps, threshold=threshold, lr=1e-4, sparse=True))
    for opt in opts.values():
        opt.step()
    memory = {name: state_bytes(opt) for name, opt in opts.items()}
    selected = sum(int((p.abs() < threshold).sum()) for p in params)
    notes = [n for n in (harness.busy_note(load),) if n]
    harness.interleave(cands, rounds=rounds, steps=reps, warmup=warmup, seed=seed, mode="shuffled", notes=notes)
    timed = {name: statistics.median(c.samples_ms) for name, c in cands.items() if not c.error}
    ref = min(timed[n] for n in ADAMW_NAMES if n in timed)
    ref_mem = memory[ADAMW_NAMES[0]]
    rows = []
    for name, ms in timed.items():
        sara = name not in ADAMW_NAMES
        mem_ratio = memory[name] / ref_mem
        verdict = "" if not sara else ("PASS" if ms / ref <= TIME_TARGET else "MISS")
        mem_verdict = "" if name != "SaRA (sparse)" else ("PASS" if mem_ratio <= MEMORY_TARGET else "MISS")
        rows.append(dict(name=name, ms=ms, ratio=ms / ref, verdict=verdict, state_mb=memory[name] / 2**20,
                         mem_ratio=mem_ratio, mem_verdict=mem_verdict))
    n_params = sum(p.numel() for p in params)
    return dict(rows=rows, notes=notes, params=n_params, tensors=len(params), fraction=fraction,
                threshold=threshold, selected=selected, rounds=rounds, reps=reps, warmup=warmup,
                **harness.cpu_run_fields(load))


def to_markdown(res: dict) -> str:
    lines = [
        "## SaRA step time and state memory",
        "",
        "Written by `python benchmarks/sara_step.py --threads 1 --markdown PATH`; every number below is from that "
        "one run.",
        "",
        *harness.cpu_run_lines(res),
        f"- Workload: the optimizers' float32 tensor set ({res['params']:,} parameters in {res['tensors']} tensors) "
        f"with fixed gradients; one step = `opt.step()`; SaRA's threshold {res['threshold']:.3g} is the "
        f"{res['fraction']} % quantile of |w| ({res['selected']:,} entries trained), lr 1e-4, no nuclear norm",
        f"- Method: {res['warmup']} warm-up rounds, then {res['rounds']} rounds x {res['reps']} steps of every "
        "candidate in shuffled order; median ms/step; time ratio = median / median of the faster torch AdamW, "
        f"target <= {TIME_TARGET}; state = bytes of the optimizer's per-entry tensors (moments, SaRA's masks or "
        f"indices) after one step, ratio to torch AdamW's, target <= {MEMORY_TARGET} for the sparse path",
        "",
        *harness.markdown_table(("step", "ms", "ratio to AdamW", "target", "state MiB", "state ratio", "target"),
                                ((r["name"], f"{r['ms']:.3f}", f"{r['ratio']:.2f}", r["verdict"],
                                  f"{r['state_mb']:.2f}", f"{r['mem_ratio']:.2f}", r["mem_verdict"])
                                 for r in res["rows"]), left=(0, 3, 6)),
        *[line for note in res["notes"] for line in ("", f"Note: {note}.")],
    ]
    return "\n".join(lines) + "\n"


DEFAULTS = dict(small=0, fraction=10, rounds=15, reps=3)


def main(argv: list[str] | None = None) -> int:
    return harness.int_options_main(
        argv, __doc__.splitlines()[0], DEFAULTS, run, to_markdown, "sara_step",
        lambda r: f"{r['name']:24s} {r['ms']:8.3f} ms  x{r['ratio']:.2f}  {r['verdict']:4s}  state x{r['mem_ratio']:.2f} "
                  f"{r['mem_verdict']}")


if __name__ == "__main__":
    sys.exit(main())
