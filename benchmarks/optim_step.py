"""Optimizer step-time benchmark: gradwise optimizers against their peers and torch.optim.

    python benchmarks/optim_step.py [--steps N] [--rounds N] [--only A,B] [--threads N]
                                    [--markdown PATH] [--json PATH]

``gradwise bench`` runs this script (from a source checkout). Every optimizer
steps its own copy of one fixed, seeded set of tensors (a ResNet-ish mix of
conv, linear, bias and norm tensors, ~160 tensors and ~4M float32 parameters;
``harness.tensor_specs``) with one fixed set of gradients, so all of them do
the same amount of work; the timing method is the harness's (interleaved
rounds after warm-up, medians, paired ratios).

The rows come from the registry (``optim_rows.py``): one per optimizer whose
record has ``info["bench"]`` (``kwargs``, ``peer``, ``peer_kwargs``, ``note``,
``peer_paths``, ``max_ratio_adam``). A peer is a ``pytorch_optimizer`` class by
name, one of the builders in ``optim_rows.PEER_BUILDERS``, or
``torch.optim.<Name>`` (built as ``torch.optim.<Name>(params, **kwargs)``).
What this script adds to the harness:

* the gradients are restored from a pristine copy before every step, outside
  the timed region: several optimizers (SPAM's spike clipping, StableSPAM's
  normalisation, OrthoGrad's projection, L2 decay) rewrite ``p.grad`` in
  place, and the benchmark must not let them drift the inputs;
* a peer with several implementations (``peer_paths``: pytorch_optimizer's
  foreach and per-tensor paths; torch's foreach and fused ones) has each
  timed, and the fastest counts: the target is the peer at its best on the
  machine at hand;
* gradwise's ``torch._foreach_`` path (``fused=False``) is timed beside its
  default (fused kernels), for transparency about what the kernels buy.

On a shared 2-core machine another busy process makes torch's two OpenMP
threads wait for each other and steps take 10-100x longer at random; the
median absorbs that only while it hits a minority of steps. The benchmark
warns when the load average is high; ``--threads 1`` is then the steadier
choice (and says so in the report's header).

Targets (printed as PASS/MISS lines): (a) no gradwise optimizer slower than
its pytorch_optimizer peer, (b) the family's median ratio to those peers at
most 0.6, (c) the optimizers whose record sets ``max_ratio_adam`` at most
that many times ``torch.optim.Adam`` (foreach=True).

Optimizers that cannot be built are skipped with a note, and so are
pytorch_optimizer's peers when it is not installed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # harness.py sits beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402
from optim_rows import Method, construct, gradwise_kwargs, methods_from_registry  # noqa: E402

__all__ = ["METHODS", "REFERENCES", "Method", "methods_from_registry", "run", "targets", "to_markdown", "main"]


# ---------------------------------------------------------------------------
# What is timed: the registry's rows (optim_rows.py) and two torch.optim references
# ---------------------------------------------------------------------------

METHODS: tuple[Method, ...] = methods_from_registry()

# torch.optim references, at their defaults (Adam: no weight decay; AdamW: 0.01).
REFERENCES: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
    "Adam(foreach)": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
    "AdamW(fused)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
}
_ADAM_REF, _ADAMW_REF = "Adam(foreach)", "AdamW(fused)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _restore_grads(params: list[torch.Tensor], grads0: list[torch.Tensor]) -> None:
    grads = []
    for p, g0 in zip(params, grads0):
        if p.grad is None or p.grad.shape != g0.shape:
            p.grad = torch.empty_like(g0)
        grads.append(p.grad)
    torch._foreach_copy_(grads, grads0)


# ---------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------


def _select(only: Sequence[str] | None, methods: Sequence[Method]) -> list[Method]:
    if not only:
        return list(methods)
    wanted = {n.strip().lower() for n in only if n.strip()}
    unknown = sorted(wanted - {m.name.lower() for m in methods})
    if unknown:
        raise ValueError(f"Unknown optimizer name(s) for --only: {', '.join(unknown)}; "
                         f"choose from {', '.join(m.name for m in methods)}")
    return [m for m in methods if m.name.lower() in wanted]


def run(*, steps: int = 3, rounds: int = 8, warmup: int = 3, only: Sequence[str] | None = None,
        small: bool = False, threads: int | None = None, device: str = "cpu", seed: int = 0,
        progress: Callable[[str], None] | None = None, methods: Sequence[Method] | None = None) -> dict[str, Any]:
    """Run the benchmark and return the results as a JSON-ready dict.

    ``only`` restricts the rows to these method names (case-insensitive);
    the two torch references are always timed since the ratios need them.
    ``methods`` replaces the registry's rows (tests).
    """
    if steps < 1 or rounds < 1 or warmup < 0:
        raise ValueError(f"steps and rounds must be >= 1 and warmup >= 0, got {steps}, {rounds}, {warmup}")
    harness.apply_threads(threads)
    dev = torch.device(device)
    say = progress or (lambda _msg: None)
    methods = _select(only, METHODS if methods is None else methods)

    params0, grads0 = harness.make_tensors(small=small, seed=seed)
    params0 = [p.to(dev) for p in params0]
    grads0 = [g.to(dev) for g in grads0]
    notes: list[str] = []
    load = harness.load_average()
    if harness.busy_note(load):
        notes.append(harness.busy_note(load))
    have_po = harness.package_version("pytorch_optimizer") is not None
    if not have_po:
        notes.append("pytorch_optimizer not importable: its peers are not timed (pip install 'gradwise[bench]')")

    cands: dict[str, harness.Candidate] = {}

    def add(label: str, build: Callable[[list[torch.Tensor]], torch.optim.Optimizer]) -> None:
        params = [torch.nn.Parameter(p.clone()) for p in params0]
        for p, g in zip(params, grads0):
            p.grad = g.clone()
        try:
            opt = build(params)
        except Exception as exc:  # noqa: BLE001 - report, don't crash the whole benchmark
            notes.append(f"{label}: construction failed ({type(exc).__name__}: {exc})")
            return

        def prepare(params=params):
            _restore_grads(params, grads0)
            _sync(dev)

        def step(opt=opt):
            opt.step()
            _sync(dev)

        cands[label] = harness.Candidate(label, step, prepare, obj=opt)

    for name, factory in REFERENCES.items():
        add(f"torch:{name}", factory)

    method_notes: dict[str, list[str]] = {}
    for m in methods:
        mnotes = method_notes.setdefault(m.name, [])
        if m.note:
            mnotes.append(m.note)
        try:
            cls = m.load()
        except Exception as exc:  # noqa: BLE001
            mnotes.append(f"gradwise: not importable ({type(exc).__name__}: {exc})")
        else:
            kw, renamed, dropped = gradwise_kwargs(cls, m.kwargs)
            if renamed:
                mnotes.append(f"gradwise names: {', '.join(renamed)}")
            add(f"gradwise:{m.name}", lambda ps, cls=cls, kw=kw, d=dropped: construct(cls, ps, kw, d))
            # the torch._foreach_ path too, for transparency about what the fused kernels buy
            add(f"gradwise-foreach:{m.name}",
                lambda ps, cls=cls, kw=kw, d=dropped: construct(cls, ps, {**kw, "fused": False}, d))
            if dropped:  # filled in by construct too
                mnotes.append(f"gradwise {m.name} does not take: {', '.join(dropped)}")
        if m.peer_source != "pytorch_optimizer" or have_po:
            for path, path_kw in m.peer_paths.items():
                peer_kw = {**m.kwargs, **m.peer_kwargs, **path_kw}
                add(f"peer:{m.name}:{path}", lambda ps, m=m, kw=peer_kw: m.peer(ps, kw))

    say(f"{len(cands)} optimizers, {len(params0)} tensors, "
        f"{sum(p.numel() for p in params0) / 1e6:.2f}M parameters")
    harness.interleave(cands, rounds=rounds, steps=steps, warmup=warmup, seed=seed, mode="blocks", notes=notes,
                       progress=say)

    stats = {label: harness.stats(c.samples_ms) for label, c in cands.items() if not c.error}

    def med(label: str) -> float | None:
        s = stats.get(label)
        return s["median_ms"] if s else None

    ratio = harness.ratio
    adam, adamw = med(f"torch:{_ADAM_REF}"), med(f"torch:{_ADAMW_REF}")
    references = [
        {"name": name, "ms": med(f"torch:{name}"),
         "spread": (stats.get(f"torch:{name}") or {}).get("spread"),
         "ratio_adam": ratio(med(f"torch:{name}"), adam),
         "ratio_adamw": ratio(med(f"torch:{name}"), adamw)}
        for name in REFERENCES
    ]
    rows = []
    for m in methods:
        gw = med(f"gradwise:{m.name}")
        peer_on = m.peer_source != "pytorch_optimizer" or have_po
        paths = {path: med(f"peer:{m.name}:{path}") for path in m.peer_paths}
        timed = {path: t for path, t in paths.items() if t is not None}
        best = min(timed, key=timed.get) if timed else None
        peer = timed.get(best) if best else None
        peer_label = f"peer:{m.name}:{best}" if best else None
        rows.append({
            "name": m.name,
            "gradwise_ms": gw,
            "gradwise_spread": (stats.get(f"gradwise:{m.name}") or {}).get("spread"),
            "gradwise_foreach_ms": med(f"gradwise-foreach:{m.name}"),
            "ratio_foreach_peer": ratio(med(f"gradwise-foreach:{m.name}"), peer),
            "peer": m.peer_name if peer_on else None,
            "peer_source": m.peer_source,
            "peer_path": best,
            "peer_ms": peer,
            "peer_paths_ms": paths if peer_on else {},
            "peer_spread": (stats.get(peer_label) or {}).get("spread") if peer_label else None,
            "ratio_peer": ratio(gw, peer),
            "ratio_peer_paired": harness.paired_ratio(cands.get(f"gradwise:{m.name}"),
                                                      cands.get(peer_label) if peer_label else None),
            "ratio_adam": ratio(gw, adam),
            "ratio_adamw": ratio(gw, adamw),
            "peer_ratio_adam": ratio(peer, adam),
            "max_ratio_adam": m.max_ratio_adam,
            "notes": method_notes.get(m.name, []),
        })

    return {
        "machine": harness.machine_info(dev, load, versions=("pytorch_optimizer",)),
        "config": {"steps": steps, "rounds": rounds, "warmup": warmup, "small": small, "seed": seed,
                   "tensors": len(params0), "parameters": sum(p.numel() for p in params0),
                   "only": list(only) if only else None},
        "references": references,
        "rows": rows,
        "targets": targets(rows),
        "samples_ms": {label: c.samples_ms for label, c in cands.items()},
        "notes": notes,
    }


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The speed targets, each with its value, limit and PASS/MISS/n/a.

    (a) and (b) are over the rows whose peer is pytorch_optimizer's (a torch.optim peer is a
    reference, not a target); (c) is one line per row with ``max_ratio_adam``.
    """
    out = []
    paired = [(r["name"], r["ratio_peer"]) for r in rows
              if r["ratio_peer"] is not None and r.get("peer_source", "pytorch_optimizer") == "pytorch_optimizer"]
    if paired:
        worst_name, worst = max(paired, key=lambda t: t[1])
        out.append({"target": "(a) every gradwise optimizer <= its pytorch_optimizer peer",
                    "value": worst, "limit": 1.0, "detail": f"worst: {worst_name}",
                    "status": "PASS" if worst <= 1.0 else "MISS"})
        median = statistics.median(r for _, r in paired)
        out.append({"target": "(b) median ratio gradwise / peer <= 0.6",
                    "value": median, "limit": 0.6, "detail": f"over {len(paired)} optimizers",
                    "status": "PASS" if median <= 0.6 else "MISS"})
    else:
        for t, lim in (("(a) every gradwise optimizer <= its pytorch_optimizer peer", 1.0),
                       ("(b) median ratio gradwise / peer <= 0.6", 0.6)):
            out.append({"target": t, "value": None, "limit": lim,
                        "detail": "no gradwise/peer pair timed", "status": "n/a"})
    for r in rows:
        lim = r.get("max_ratio_adam")
        if lim is None:
            continue
        v = r["ratio_adam"]
        out.append({"target": f"(c) {r['name']} <= {lim:g}x torch Adam(foreach)", "value": v, "limit": lim,
                    "detail": "" if v is not None else "not timed",
                    "status": "n/a" if v is None else ("PASS" if v <= lim else "MISS")})
    return out


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


_COLUMNS = ("optimizer", "gradwise ms", "peer", "peer ms", "gw/peer", "gw/Adam", "gw/AdamW", "peer/Adam",
            "gw foreach ms", "foreach/peer")
_LEGEND = ("ms = median ms per step(); gw = gradwise with default arguments (fused CPU kernels); "
           "gw foreach = gradwise with fused=False (the torch._foreach_ path); "
           "peer = pytorch_optimizer (or torch.optim where the record names it), its fastest [path]; "
           "Adam = torch.optim.Adam(foreach=True); AdamW = torch.optim.AdamW(fused=True)")


def _table_rows(res: dict[str, Any]) -> list[tuple[str, ...]]:
    out = []
    for ref in res["references"]:
        out.append((f"torch {ref['name']}", _ms(ref["ms"]), "", "", "", _ms(ref["ratio_adam"]),
                    _ms(ref["ratio_adamw"]), "", "", ""))
    for r in res["rows"]:
        gw = _ms(r["gradwise_ms"]) if r["gradwise_ms"] is not None else "missing"
        peer = f"{r['peer']} [{r['peer_path']}]" if r["peer_path"] else (r["peer"] or "—")
        out.append((r["name"], gw, peer, _ms(r["peer_ms"]), _ms(r["ratio_peer"]),
                    _ms(r["ratio_adam"]), _ms(r["ratio_adamw"]), _ms(r["peer_ratio_adam"]),
                    _ms(r.get("gradwise_foreach_ms")), _ms(r.get("ratio_foreach_peer"))))
    return out


def _header(res: dict[str, Any]) -> str:
    m, c = res["machine"], res["config"]
    return (f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
            f"pytorch_optimizer {m['pytorch_optimizer']}, {m['date']}; "
            f"{c['tensors']} tensors / {c['parameters'] / 1e6:.2f}M float32 params on {m['device']}; "
            f"median of {c['rounds']} rounds x {c['steps']} steps after {c['warmup']} warm-up steps")


def _note_lines(res: dict[str, Any]) -> list[str]:
    lines = [f"{r['name']}: {n}" for r in res["rows"] for n in r["notes"]]
    return lines + list(res["notes"])


def _target_line(t: dict[str, Any]) -> tuple[str, str]:
    val = "—" if t["value"] is None else f"{t['value']:.2f}"
    return val, f" ({t['detail']})" if t["detail"] else ""


def print_rich(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=120)
    table = Table(title="Optimizer step time (lower is better)")
    for i, col in enumerate(_COLUMNS):
        table.add_column(col, justify="left" if i in (0, 2) else "right")
    n_ref = len(res["references"])
    for i, row in enumerate(_table_rows(res)):
        table.add_row(*(escape(c) for c in row), style="dim" if i < n_ref else None, end_section=(i == n_ref - 1))
    console.print(table)
    console.print(f"[dim]{escape(_LEGEND)}\n{escape(_header(res))}[/]", highlight=False)
    for t in res["targets"]:
        color = {"PASS": "green", "MISS": "red"}.get(t["status"], "yellow")
        val, detail = _target_line(t)
        console.print(f"[{color}]{t['status']:4}[/] {escape(t['target'])}: {val}{escape(detail)}")
    for line in _note_lines(res):
        console.print(f"[dim]note: {escape(line)}[/]")


def to_markdown(res: dict[str, Any]) -> str:
    m, c = res["machine"], res["config"]
    fe = sorted(r["ratio_foreach_peer"] for r in res["rows"] if r.get("ratio_foreach_peer") is not None)
    lines = [
        "## Optimizer step time",
        "",
        "Written by `make bench` (`python benchmarks/optim_step.py --markdown docs/benchmarks.md`); "
        "every number below is from that one run. gradwise's default on CPU float32/float64 is its fused "
        "kernels (`src/gradwise/optim/csrc/`); its `torch._foreach_` path (`fused=False`, also used "
        "for bfloat16 and other devices) is timed beside it"
        + (f": its median ratio to the peer is {fe[len(fe) // 2]:.2f}, so the targets are met by the fused "
           "kernels, not by the foreach path." if fe else "."),
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, device `{m['device']}`"
        + (f" ({m['gpu']})" if m.get("gpu") else ""),
        f"- Software: torch {m['torch']} ({m['torch_threads']} threads), "
        f"pytorch_optimizer {m['pytorch_optimizer']}, Python {m['python']}",
        f"- Date: {m['date']}; load average at start: "
        + ("unknown" if m["load_average"] is None else f"{m['load_average']:.1f}"),
        f"- Workload: {c['tensors']} tensors, {c['parameters']:,} float32 parameters "
        "(ResNet-ish conv/linear/bias/norm mix), fixed seeded gradients",
        f"- Method: {c['warmup']} warm-up steps, then {c['rounds']} rounds x {c['steps']} steps, "
        "round-robin in shuffled order, each step timed; median ms/step; ratios of medians",
        f"- Columns: {_LEGEND}",
        "",
        *harness.markdown_table(_COLUMNS, _table_rows(res), left=(0, 2)),
    ]
    lines += ["", "Targets:", ""]
    for t in res["targets"]:
        val, detail = _target_line(t)
        lines.append(f"- **{t['status']}** {t['target']}: {val}{detail}")
    paths = [f"- {r['name']}: " + ", ".join(f"{k} {_ms(v)} ms" for k, v in r["peer_paths_ms"].items())
             for r in res["rows"] if len(r["peer_paths_ms"]) > 1]
    if paths:
        lines += ["", "Peer paths (median ms/step of each implementation; the fastest is used):", ""] + paths
    notes = _note_lines(res)
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gradwise bench",
        description="Time optimizer.step() for gradwise optimizers, their peers (pytorch_optimizer or "
                    "torch.optim) and torch.optim Adam(foreach) / AdamW(fused), interleaved in one process.")
    p.add_argument("--steps", type=int, default=3, help="timed steps per optimizer per round (default 3)")
    p.add_argument("--rounds", type=int, default=8, help="round-robin rounds (default 8)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    p.add_argument("--only", type=str, default=None,
                   help=f"comma-separated optimizer names (from: {', '.join(m.name for m in METHODS)})")
    p.add_argument("--device", type=str, default="cpu", help="device (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", help="tiny tensor set (for tests)")
    harness.add_output_args(p)
    p.add_argument("--check", action="store_true", help="exit with status 1 if a target is missed")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else None

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"[bench] {msg}", flush=True)

    try:
        res = run(steps=args.steps, rounds=args.rounds, warmup=args.warmup, only=only, small=args.small,
                  threads=args.threads, device=args.device, seed=args.seed, progress=progress)
    except ValueError as exc:
        parser.error(str(exc))
    print_rich(res)
    harness.save(res, args, "optim_step", to_markdown(res))
    if args.check and any(t["status"] == "MISS" for t in res["targets"]):
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
