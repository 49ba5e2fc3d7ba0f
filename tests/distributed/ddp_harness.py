"""Run a tiny model under DDP on 2-4 local processes (gloo over localhost) and collect what each rank saw.

``run_ranks`` spawns the ranks with :func:`gradwise.distributed.launch.run_local` (``torch.multiprocessing``
on a free port), waits at most ``timeout`` seconds, kills the ranks it started if they overrun (each by its
pid) and fails with their error.
A configuration with ``fn="module:function"`` runs that function instead of the DDP loop (the CO2 and
decentralized tests). Each rank runs every named configuration in turn (one process start for them all: importing torch is
most of a rank's time) and returns its results, a dict name -> result; ``out_dir`` is where the
configurations may write (checkpoints).
"""
from __future__ import annotations

from pathlib import Path

import torch

from gradwise.distributed.launch import run_local

IN, HIDDEN, OUT = 16, 32, 8


def run_ranks(configs: dict[str, dict], world_size: int, out_dir: Path, timeout: float = 120.0) -> list[dict]:
    try:
        return run_local(_worker, world_size, args=(configs, str(out_dir)), timeout=timeout)
    except TimeoutError as exc:
        raise AssertionError(f"DDP ranks did not finish within {timeout} s") from exc


class Net(torch.nn.Module):
    """Two linear layers registered output first, so that DDP's first bucket layout (parameter order) is
    its rebuilt one (gradient-ready order, the output layer's first): a model rebuilt from a checkpoint
    then sees the layout the hook state's buffers were made for."""

    def __init__(self):
        super().__init__()
        self.out = torch.nn.Linear(HIDDEN, OUT, bias=False)  # no biases: autograd readies a bias before
        self.inp = torch.nn.Linear(IN, HIDDEN, bias=False)   # its weight, against parameter order

    def forward(self, x):
        return self.out(torch.tanh(self.inp(x)))


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return Net()


def batch(rank: int, step: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(16, IN, generator=g, dtype=dtype) + rank  # heterogeneous workers
    y = torch.randn(16, OUT, generator=g, dtype=dtype)
    return x, y


def _make_hook(config):
    from gradwise.distributed import (CompressedAllreduceState, LGreCoState, PowerSGDBytesState, TopK,
                                      compressed_allreduce_hook, lgreco_hook, powersgd_hook)

    kind = config["hook"]
    if kind == "plain":
        return None, None
    if kind == "none":
        return CompressedAllreduceState(), compressed_allreduce_hook
    if kind == "topk":
        return CompressedAllreduceState(compressor=TopK(config.get("ratio", 0.1), per=config.get("per", "bucket")),
                                        error_feedback=config.get("ef", True), start_iter=1), compressed_allreduce_hook
    if kind == "powersgd":
        return PowerSGDBytesState(process_group=None, matrix_approximation_rank=config.get("rank", 2),
                                  start_powerSGD_iter=2, min_compression_rate=config.get("rate", 2),
                                  use_error_feedback=True, warm_start=True), powersgd_hook
    if kind == "lgreco":
        return LGreCoState(**config.get("kwargs", {})), lgreco_hook
    raise ValueError(kind)


def _build(config, dtype):
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(make_model().to(dtype))
    state, hook = _make_hook(config)
    if hook is not None:
        model.register_comm_hook(state, hook)
    opt = torch.optim.SGD(model.parameters(), lr=config.get("lr", 0.1), momentum=0.9)
    return model, state, opt


def _steps(model, opt, rank, start, stop, dtype):
    for step in range(start, stop):
        x, y = batch(rank, step, dtype)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _run(config, rank, out_dir, name):
    if "fn" in config:  # a test's own rank function, "module:function", called as fn(config, rank, out_dir, name)
        import importlib

        module, fn = config["fn"].split(":")
        return getattr(importlib.import_module(module), fn)(config, rank, out_dir, name)
    dtype = getattr(torch, config.get("dtype", "float32"))
    steps, resume_at = config.get("steps", 4), config.get("resume_at")
    model, state, opt = _build(config, dtype)
    if resume_at is None:
        _steps(model, opt, rank, 0, steps, dtype)
    else:
        _steps(model, opt, rank, 0, resume_at, dtype)
        ckpt_path = Path(out_dir) / f"ckpt_{name}_{rank}.pt"
        torch.save({"model": model.module.state_dict(), "opt": opt.state_dict(), "hook": state.state_dict()},
                   ckpt_path)
        del model, state, opt
        model, state, opt = _build(config, dtype)
        ckpt = torch.load(ckpt_path, weights_only=False)
        model.module.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        state.load_state_dict(ckpt["hook"])
        _steps(model, opt, rank, resume_at, steps, dtype)
    out = {"params": [p.detach().clone() for p in model.parameters()],
           "bytes": list(getattr(state, "bytes_history", [])),
           "shapes": [tuple(p.shape) for p in model.parameters()]}
    if hasattr(state, "ranks"):
        out["ranks"] = {b: list(r) for b, r in state.ranks.items()}
    return out


def _worker(rank, world_size, configs, out_dir):
    return {name: _run(config, rank, out_dir, name) for name, config in configs.items()}
