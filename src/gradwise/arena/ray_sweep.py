"""Arena sweeps on Ray (``gradwise arena STUDY --ray [--ray-address ADDR]``).

:func:`train_on_ray` runs a study's seeds x methods as Ray tasks and returns
the rows in the order the serial driver makes them, so the rest of the driver
(summary, leaderboard, files) does not change. A task carries only names and
numbers: the study's *name*, its config (a dataclass of numbers), the methods,
the seeds, and which piece to run. The worker loads the study by name
(:func:`~gradwise.arena.study.load_study`), builds the task with
``study.setup`` (kept per worker process for the next piece of the same run)
and runs under ``torch.set_num_threads(cfg.threads)`` (one thread by default),
like the serial driver. The pieces keep each study's semantics:

- ``run_one`` studies: one task per (method, seed);
- ``seeds_outer`` studies: one task per seed, ``seed_setup``'s shared object
  (the distillation study's teacher) computed in the same task as that seed's
  methods;
- ``run_seed`` studies: one task per seed.

What a study keeps in ``run.state`` inside a task comes back with its rows and
is merged into the driver's ``run.state`` in the serial order: a new key is
set, a list is extended, a dict is merged key by key, any other value is
replaced.

Ray is imported only here, lazily: gradwise and the serial arena run without
it, and ``--ray`` without it is a :class:`~gradwise.arena.study.UsageError`
naming the extra to install.
"""
from __future__ import annotations

import argparse
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from gradwise.arena.study import Run, Study, UsageError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["RAY_MISSING", "ADDRESS_ACCEPTED", "import_ray", "address_type", "ray_session", "pieces", "train_on_ray",
           "run_piece", "merge_state"]

RAY_MISSING = ("--ray runs the study on Ray, which is not installed; install gradwise's `ray` extra "
               "(pip install 'gradwise[ray]', ray==2.55.1) or its `federated` extra, which brings ray too")

ADDRESS_ACCEPTED = "auto, local, ray://HOST:PORT or HOST:PORT"
_HOST_PORT = re.compile(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]*[A-Za-z0-9_.\-\]]:\d{1,5}$")


def import_ray() -> ModuleType:
    """The ``ray`` module; :class:`UsageError` naming the extra to install when it is not importable."""
    try:
        import ray
    except ImportError as err:
        raise UsageError(RAY_MISSING) from err
    return ray


def address_type(text: str) -> str:
    """An argparse ``type`` for ``--ray-address``: ``auto`` (the running cluster Ray finds), ``local``
    (a local Ray started for this run, the default), ``ray://HOST:PORT`` (Ray Client) or ``HOST:PORT``
    (a cluster's GCS address)."""
    value = text.strip()
    if value in ("auto", "local") or _HOST_PORT.match(value):
        if ":" in value and value not in ("auto", "local"):
            port = int(value.rsplit(":", 1)[1])
            if not 0 < port < 65536:
                raise argparse.ArgumentTypeError(f"expected {ADDRESS_ACCEPTED} (port 1..65535), got {text!r}")
        return value
    raise argparse.ArgumentTypeError(f"expected {ADDRESS_ACCEPTED}, got {text!r}")


address_type.__name__ = ADDRESS_ACCEPTED  # argparse names the type in some messages


@contextmanager
def ray_session(address: str | None) -> Iterator[ModuleType]:
    """Ray, connected for the block. Already initialized (a notebook, a test): used as it is and left
    running. Else ``address`` None or ``local``: a local Ray with ``os.cpu_count()`` CPUs and no
    dashboard, shut down after; any other address: that cluster, disconnected after."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    with warnings.catch_warnings():  # ray 2.55's note on GPU environment variables, irrelevant here
        warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
        if address in (None, "local"):
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as err:
                raise UsageError(f"--ray-address {address}: could not connect to a Ray cluster there "
                                 f"({err})") from err
    try:
        yield ray
    finally:
        ray.shutdown()


def pieces(study: Study, run: Run) -> list[tuple[int, str | None]]:
    """The Ray tasks of ``run``, in the serial driver's order: ``(seed, method)``, method None for a
    task that runs every method of its seed (``run_seed`` and ``seeds_outer`` studies)."""
    if study.run_seed is not None or study.seeds_outer:
        return [(seed, None) for seed in run.seeds]
    return [(seed, method) for method in run.methods for seed in run.seeds]


# the task built by study.setup, kept per worker process for the next piece of the same run
_SETUP_CACHE: dict[str, Any] = {}


def _task(study: Study, cfg: Any, methods: tuple[str, ...]) -> Any:
    key = repr((study.name, cfg, methods))
    if key not in _SETUP_CACHE:
        _SETUP_CACHE.clear()  # one run at a time: keep only the latest task
        _SETUP_CACHE[key] = study.setup(cfg, methods)
    return _SETUP_CACHE[key]


def run_piece(name: str, cfg: Any, methods: tuple[str, ...], seeds: tuple[int, ...], seed: int,
              method: str | None) -> tuple[list[Any], list[dict[str, Any]], dict[str, Any]]:
    """One piece of a study's run, as a Ray worker runs it (callable in-process too): the rows, the
    ``seed_setup`` reference rows and what the study put in ``run.state``."""
    from gradwise.arena.runner import torch_threads
    from gradwise.arena.study import load_study

    study = load_study(name)
    run = Run(cfg=cfg, task=_task(study, cfg, methods), methods=methods, seeds=seeds)
    rows: list[Any] = []
    with torch_threads(getattr(cfg, "threads", 1)):
        if study.run_seed is not None:
            rows.extend(study.run_seed(run, seed))
        elif method is None:  # seeds_outer: the seed's shared work, then every method on it
            shared = None
            if study.seed_setup is not None:
                shared, ref = study.seed_setup(run, seed)
                if ref is not None:
                    run.references.append(ref)
            for m in methods:
                rows.append(study.run_one(run, m, seed, shared))
        else:
            assert study.run_one is not None
            rows.append(study.run_one(run, method, seed, None))
    return rows, run.references, run.state


def merge_state(into: dict[str, Any], new: dict[str, Any]) -> None:
    """Merge a task's ``run.state`` into the driver's: a new key is set, a list extended, a dict merged
    key by key, any other value replaced."""
    for key, value in new.items():
        old = into.get(key)
        if key not in into:
            into[key] = value
        elif isinstance(old, list) and isinstance(value, list):
            old.extend(value)
        elif isinstance(old, dict) and isinstance(value, dict):
            merge_state(old, value)
        else:
            into[key] = value


def train_on_ray(study: Study, run: Run, address: str | None, bar: Any, job: Any) -> list[Any]:
    """Every run of the study as Ray tasks (see the module's docstring): their rows in the serial order,
    ``seed_setup``'s reference rows appended to ``run.references`` and the tasks' ``run.state`` merged
    into ``run.state``, both in the serial order; ``bar`` advances as tasks finish."""
    todo = pieces(study, run)
    per_piece = 1 if study.run_seed is not None or not study.seeds_outer else \
        len(run.methods) + (study.seed_setup is not None)
    threads = int(getattr(run.cfg, "threads", 1))
    with ray_session(address) as ray:
        cpus = ray.cluster_resources().get("CPU", 0)
        if threads > cpus:
            raise UsageError(f"--threads {threads}: each Ray task asks for that many CPUs, and the Ray cluster "
                             f"has {cpus:g}; accepted: at most {cpus:g}")
        remote = ray.remote(run_piece).options(num_cpus=threads, max_retries=0)
        refs = [remote.remote(study.name, run.cfg, run.methods, run.seeds, seed, method) for seed, method in todo]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        bar.update(job, description=f"on Ray: 0/{len(refs)} tasks")
        waiting = list(refs)
        try:
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1)
                for ref in ready:
                    i = index[ref]
                    results[i] = ray.get(ref)
                    seed, method = todo[i]
                    done = sum(r is not None for r in results)
                    what = f"{method} seed {seed}" if method is not None else f"seed {seed}"
                    bar.update(job, description=f"on Ray: {what} ({done}/{len(refs)})")
                    bar.advance(job, per_piece)
        except BaseException:
            for ref in waiting:
                ray.cancel(ref, force=True)
            raise
    rows: list[Any] = []
    for piece_rows, piece_refs, state in results:
        rows.extend(piece_rows)
        run.references.extend(piece_refs)
        merge_state(run.state, state)
    return rows
