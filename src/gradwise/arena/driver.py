"""The one driver every arena study runs on.

:func:`run_study` takes a :class:`~gradwise.arena.study.Study`, its config and
the methods to run, and does what every study shares: the results folder
(written all at once, see :func:`~gradwise.arena.results.results_folder`),
seeds x methods under a progress bar with the study's thread count, the
summary (means over seeds with 95% Student-t intervals, ranks tied where the
intervals overlap), the leaderboard with its notes and the machine,
``results.csv`` and ``results.json``, and the study's own files (its plot).
:func:`run_from_args` is what ``gradwise arena STUDY`` calls.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradwise.arena.study import Run, Study

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["run_from_args", "run_study", "train_all", "summarize_rows", "leaderboard_table", "write_outputs"]


def run_from_args(study: Study, args: argparse.Namespace, console: Console) -> Path:
    """Run ``study`` with the options parsed into ``args`` (see :mod:`gradwise.arena.options`)."""
    from gradwise.arena.options import config_from_args, methods_from_args

    address = getattr(args, "ray_address", None)
    return run_study(study, config_from_args(study, args), methods_from_args(study, args),
                     out=getattr(args, "out", None), console=console,
                     ray=bool(getattr(args, "ray", False)) or address is not None, ray_address=address)


def run_study(study: Study, cfg: Any, methods: list[str], *, out: str | Path | None, console: Console,
              ray: bool = False, ray_address: str | None = None) -> Path:
    """Run every method of ``methods`` over the config's seeds, report and write the results; return
    the results folder. Seeds are ``first_seed .. first_seed + seeds - 1`` (``first_seed`` 0 unless the
    config has one). ``ray``: run them as Ray tasks (see :mod:`gradwise.arena.ray_sweep`), on the
    cluster at ``ray_address`` or, without one, on a local Ray started for the run."""
    from gradwise.arena.results import machine_line, results_folder

    if ray:  # before any work: without ray installed, --ray is a usage error naming the extra
        from gradwise.arena.ray_sweep import import_ray

        import_ray()
    if study.adjust is not None:
        cfg = study.adjust(cfg)
    first = getattr(cfg, "first_seed", 0)
    with results_folder(out) as folder:
        run = Run(cfg=cfg, task=study.setup(cfg, tuple(methods)), methods=tuple(methods),
                  seeds=tuple(range(first, first + cfg.seeds)))
        start = time.perf_counter()
        rows = train_all(study, run, console, ray=ray, ray_address=ray_address)
        total_s = time.perf_counter() - start
        summary = (study.summarize(run, rows) if study.summarize is not None
                   else summarize_rows(study, rows, run.methods))
        title = study.title(run, rows)
        console.print(leaderboard_table(study, run, summary, title))
        notes = study.notes(run, summary)
        console.print(f"[dim]{notes}\n{machine_line()}[/dim]" if notes else f"[dim]{machine_line()}[/dim]")
        console.print(f"total wall time {total_s:.1f} s")
        write_outputs(folder.tmp, study, run, rows, summary, title, total_s)
        tables = [f for f in study.outputs if f.endswith(".csv")]
        files = ["results.csv", *tables, "results.json", *(f for f in study.outputs if f not in tables)]
        console.print(f"results: {folder.final}/ ({', '.join(files)})")
    return folder.final


def train_all(study: Study, run: Run, console: Console, *, ray: bool = False,
              ray_address: str | None = None) -> list[Any]:
    """Every run of the study, under a progress bar: their rows (``seed_setup``'s reference rows go to
    ``run.references``). ``ray``: as Ray tasks, the same rows in the same order
    (:func:`gradwise.arena.ray_sweep.train_on_ray`)."""
    from gradwise.arena.results import progress
    from gradwise.arena.runner import torch_threads

    rows: list[Any] = []
    last = run.seeds[-1] if run.seeds else 0
    labels = [*run.methods, study.seed_setup_label] if study.run_one is not None else ["seed"]
    width = max(len(f"{label} seed {last}") for label in labels)
    per_seed = 1 if study.run_seed is not None else len(run.methods) + (study.seed_setup is not None)
    with torch_threads(getattr(run.cfg, "threads", 1)), progress(console, width=width) as bar:
        job = bar.add_task(study.name, total=len(run.seeds) * per_seed)
        if ray:
            from gradwise.arena.ray_sweep import train_on_ray

            return train_on_ray(study, run, ray_address, bar, job)

        def one(method: str, seed: int, shared: Any) -> None:
            bar.update(job, description=f"{method} seed {seed}")
            rows.append(study.run_one(run, method, seed, shared))
            bar.advance(job)

        if study.run_seed is not None:  # one piece of work per seed gives every method's row
            for seed in run.seeds:
                bar.update(job, description=f"seed {seed}")
                rows.extend(study.run_seed(run, seed))
                bar.advance(job)
        elif study.seeds_outer:
            for seed in run.seeds:
                shared = None
                if study.seed_setup is not None:
                    bar.update(job, description=f"{study.seed_setup_label} seed {seed}")
                    shared, ref = study.seed_setup(run, seed)
                    if ref is not None:
                        run.references.append(ref)
                    bar.advance(job)
                for method in run.methods:
                    one(method, seed, shared)
        else:
            for method in run.methods:
                for seed in run.seeds:
                    one(method, seed, None)
    return rows


def summarize_rows(study: Study, rows: list[dict[str, Any]], methods: tuple[str, ...] | list[str],
                   keys: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """One row per method: ``{name_key: method, "runs": n}`` and the mean, sample std and 95% t-interval
    half-width of each of ``keys`` (default ``study.summary_keys``) over its runs; ranked on
    ``study.rank_on`` (ties where intervals overlap), best first."""
    from gradwise.arena.stats import mean_ci_fields, rank_summaries

    out = []
    for method in methods:
        rs = [r for r in rows if r[study.key] == method]
        out.append({study.name_key: method, "runs": len(rs),
                    **mean_ci_fields(rs, study.summary_keys if keys is None else keys)})
    return rank_summaries(out, study.rank_on, higher_is_better=study.higher_is_better)


def leaderboard_table(study: Study, run: Run, summary: list[dict[str, Any]], title: str) -> Any:
    """The leaderboard: a rank column (``=2`` for a tie), then the study's columns; a summary row
    without a rank (a reference such as the preference study's SFT model) is dimmed."""
    from rich.table import Table

    from gradwise.arena.stats import Rank, rank_label

    columns = study.columns(run) if callable(study.columns) else study.columns
    table = Table(title=title, title_justify="left")
    table.add_column("rank", justify="right", no_wrap=True)
    for col in columns:
        table.add_column(col.label, justify=col.justify, no_wrap=True)
    for s in summary:
        cells = [col.cell(s) for col in columns]
        if s.get("rank") is None:
            table.add_row("", *(f"[dim]{c}[/dim]" for c in cells))
        else:
            table.add_row(rank_label(Rank(s["rank"], s["tied"])), *cells)
    if study.extra_table_rows is not None:
        for cells in study.extra_table_rows(run, summary):
            table.add_row(*cells)
    return table


def write_outputs(out: Path, study: Study, run: Run, rows: list[Any], summary: list[dict[str, Any]], title: str,
                  total_s: float) -> None:
    """``results.csv`` (a row per run, reference rows first), the study's own files, then
    ``results.json`` (config, summary, runs, the study's extras, versions and the machine)."""
    from gradwise.arena.results import versions, write_csv, write_json

    records = run.references + [study.record(r) if study.record is not None else r for r in rows]
    # default columns: every key of any record (first seen first), but csv_skip
    fields = study.csv_fields or [k for k in dict.fromkeys(k for r in records for k in r) if k not in study.csv_skip]
    write_csv(out / "results.csv", records, fields)
    if study.write_files is not None:
        study.write_files(out, run, rows, summary, title)
    config = {**dataclasses.asdict(run.cfg), **(study.config_extra(run) if study.config_extra is not None else {})}
    doc = {"study": study.name, "created": datetime.now().isoformat(timespec="seconds"), "config": config,
           **(study.json_extra(run, summary) if study.json_extra is not None else {}),
           "summary": summary, "runs": records, "total_wall_s": total_s, "versions": versions()}
    write_json(out / "results.json", doc)
