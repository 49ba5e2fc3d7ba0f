"""Choose the learning rate of each optimizer in the arena's `optimizers` study.

For every optimizer and every learning rate of a log grid (1e-5, 3e-5, 1e-4,
..., 1, 3), train the study's MLP for the study's step budget on a validation
split carved from the training split (the test split is never seen), with
seeds 0..N-1 (``--seeds``, default 3); keep the rate with the best validation
accuracy averaged over the seeds (ties: lower mean validation loss). One seed
ties too often on this small split (one image is 0.37%). Prints the grid and the choice; ``--write`` rewrites the ``LRS`` block
of ``src/gradwise/arena/optimizers_study.py`` (entries for optimizers not swept
this time are kept).

    PYTHONPATH=src python tools/arena/lr_sweep.py                      # all optimizers
    PYTHONPATH=src python tools/arena/lr_sweep.py --optimizers Lion,SPAM --write
"""
from __future__ import annotations

import argparse
from dataclasses import replace
import json
import math
import re
import sys
import time
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gradwise.arena import UsageError, report
from gradwise.arena import optimizers_study as study
from gradwise.arena.runner import RunResult, torch_threads, train
from gradwise.arena.tasks import digits

GRID = [m * 10.0 ** e for e in range(-5, 1) for m in (1, 3)]
BLOCK = re.compile(r"(# BEGIN LRS[^\n]*\n)(.*?)(# END LRS)", re.S)


def mean_over_seeds(rs: list[RunResult]) -> RunResult:
    """One result per learning rate: validation accuracy and loss averaged over seeds (diverged if any seed did)."""
    return replace(rs[0], seed=-1, eval_acc=sum(r.eval_acc for r in rs) / len(rs),
                   eval_loss=sum(r.eval_loss for r in rs) / len(rs), diverged=any(r.diverged for r in rs))


def best(runs: list[RunResult]) -> RunResult:
    """Highest validation accuracy; ties broken by lower (finite) validation loss."""
    def key(r: RunResult) -> tuple[float, float]:
        loss = r.eval_loss if math.isfinite(r.eval_loss) and not r.diverged else math.inf
        acc = r.eval_acc if not r.diverged else -1.0
        return (-acc, loss)
    return min(runs, key=key)


def write_block(chosen: dict[str, float], order: list[str], note: str) -> Path:
    """Rewrite the LRS block of the study module, merging ``chosen`` into the current rates."""
    path = Path(study.__file__)
    merged = {**study.LRS, **chosen}
    names = [n for n in order if n in merged] + sorted(n for n in merged if n not in order)
    text = path.read_text()
    m = BLOCK.search(text)
    if not m:
        raise SystemExit(f"no '# BEGIN LRS' ... '# END LRS' block in {path}")
    # a partial sweep keeps the notes of the earlier sweeps whose rates it keeps
    kept = [] if set(chosen) >= set(study.LRS) else [ln for ln in m.group(2).splitlines() if ln.startswith("# ")]
    body = "".join(ln + "\n" for ln in kept) + f"# {note}\nLRS: dict[str, float] = {{\n"
    body += "".join(f"    {json.dumps(n)}: {float(merged[n])!r},\n" for n in names) + "}\n"
    path.write_text(BLOCK.sub(lambda m: m.group(1) + body + m.group(3), text, count=1))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizers", metavar="A,B,C", help="comma-separated names (default: all)")
    p.add_argument("--steps", type=int, default=study.CONFIG.steps, help="steps per run (default: the study's)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 averaged per learning rate (default 3)")
    p.add_argument("--write", action="store_true", help="rewrite the LRS block of the study module")
    p.add_argument("--json", metavar="FILE", help="also save every run's validation result as JSON")
    args = p.parse_args(argv)

    console = Console()
    cfg = study.CONFIG
    known = study.candidates()
    try:
        names = study.resolve(args.optimizers, list(known))
    except UsageError as err:
        p.error(str(err))
    task = digits(eval_split="val", test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)
    runs: dict[str, list[RunResult]] = {n: [] for n in names}
    start = time.perf_counter()
    with torch_threads(cfg.threads), report.progress(console, width=28) as bar:
        job = bar.add_task("sweep", total=len(names) * len(GRID) * args.seeds)
        for name in names:
            cls = known[name]()
            for lr in GRID:
                bar.update(job, description=f"{name} lr={lr:g}")
                per_seed = []
                for seed in range(args.seeds):
                    per_seed.append(train(task, name, cls, lr=lr, seed=seed, steps=args.steps,
                                          batch_size=cfg.batch_size, hidden=cfg.hidden,
                                          eval_every=cfg.eval_every, target_loss=cfg.target_loss))
                    bar.advance(job)
                runs[name].append(mean_over_seeds(per_seed))

    table = Table(title=f"validation accuracy (%, mean of {args.seeds} seeds), {args.steps} steps; chosen in bold",
                  box=None, header_style="bold underline", padding=0)
    table.add_column("optimizer", no_wrap=True, min_width=11)
    for lr in GRID:
        mantissa, exponent = f"{lr:.0e}".split("e")
        table.add_column(f"{mantissa}e{int(exponent)}", justify="right", no_wrap=True, min_width=5)
    chosen: dict[str, float] = {}
    for name, rs in runs.items():
        pick = best(rs)
        chosen[name] = pick.lr
        cells = [("div" if r.diverged else f"{100 * r.eval_acc:.1f}"[:4]) for r in rs]
        cells = [f"[bold]{c}[/bold]" if r is pick else c for c, r in zip(cells, rs)]
        table.add_row(name, *cells)
        if pick.lr in (GRID[0], GRID[-1]):
            console.print(f"[yellow]warning: {name}'s best lr {pick.lr:g} is at the edge of the grid[/yellow]")
    console.print(table)
    console.print("chosen: " + json.dumps({n: float(f"{v:g}") for n, v in chosen.items()}))
    console.print(f"{len(names) * len(GRID) * args.seeds} runs in {time.perf_counter() - start:.0f} s")

    if args.json:
        Path(args.json).write_text(json.dumps(
            {n: [{"lr": r.lr, "val_acc": r.eval_acc, "val_loss": r.eval_loss, "diverged": r.diverged}
                 for r in rs] for n, rs in runs.items()}, indent=2) + "\n")
    if args.write:
        which = "" if args.optimizers is None else f" ({', '.join(names)})"
        note = (f"swept {date.today().isoformat()}{which}: tools/arena/lr_sweep.py, {args.steps} steps, mean of "
                f"seeds 0..{args.seeds - 1}, grid {GRID[0]:g}..{GRID[-1]:g}")
        path = write_block(chosen, list(known), note)
        console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
