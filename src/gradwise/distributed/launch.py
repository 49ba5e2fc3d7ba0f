"""Run a function on a few local processes joined in a ``torch.distributed`` gloo group (localhost).

For small experiments and tests of the DDP hooks on one machine, without ``torchrun``::

    results = run_local(my_module.train_rank, world_size=2, args=(config,), timeout=120)

``fn(rank, world_size, *args)`` runs in each rank after ``init_process_group("gloo")``; what it returns
comes back, one entry per rank (saved with ``torch.save`` into a temporary folder, so it must be
picklable). ``fn`` must be importable by name (a module-level function): the ranks are started with the
``spawn`` method, which imports it afresh. Each rank uses one torch thread (two ranks on a 2-core machine
would otherwise fight over the cores). A rank that fails fails the call with its traceback; ranks still
running after ``timeout`` seconds are killed, each by its pid, and the call raises ``TimeoutError``.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gradwise._validate import check_int, check_positive

__all__ = ["free_port", "run_local"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local(fn: Callable[..., Any], world_size: int, args: Sequence[Any] = (), timeout: float = 120.0) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` local processes in one gloo group; return
    each rank's result, rank 0 first (see the module docstring)."""
    import torch
    import torch.multiprocessing as mp

    world_size = check_int("world_size", world_size, 1)
    timeout = check_positive("timeout", timeout)
    if not callable(fn):
        raise TypeError(f"Invalid fn: {fn!r} (accepted: a module-level function)")
    with tempfile.TemporaryDirectory(prefix="gradwise-ranks-") as out_dir:
        ctx = mp.start_processes(_entry, args=(world_size, free_port(), fn, tuple(args), out_dir),
                                 nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"ranks did not finish within {timeout} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                    p.join(5)
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _entry(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
