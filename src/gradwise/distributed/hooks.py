"""DDP communication hooks with compression, error feedback and a count of the bytes each worker sends.

Use them as PyTorch's own hooks::

    state = CompressedAllreduceState(compressor=TopK(0.01), error_feedback=True)
    ddp_model.register_comm_hook(state, compressed_allreduce_hook)
    ...
    state.bytes_history[-1]          # bytes this worker sent in the last step
    torch.save({"model": ..., "hook": state.state_dict()}, path)   # the error buffers go with the checkpoint

or torch's PowerSGD, counted::

    state = PowerSGDBytesState(process_group=None, matrix_approximation_rank=2, start_powerSGD_iter=2)
    ddp_model.register_comm_hook(state, powersgd_hook)
"""
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import powerSGD_hook as _torch_powersgd_hook

from gradwise._validate import check_bool, check_int
from gradwise.distributed.compressors import NoCompression, TopK, topk_decompress

__all__ = ["CompressedAllreduceState", "compressed_allreduce_hook", "PowerSGDBytesState", "powersgd_hook",
           "BytesCounter", "layout_error"]


def layout_error(bucket_index, saved, current) -> str:
    """The message when a bucket's layout differs from the one a hook state's buffers were made for."""
    return (f"DDP bucket {bucket_index} holds gradients shaped {current}, but the hook state's buffers were made "
            f"for {saved}. DDP rebuilds its buckets in gradient-ready order after the first step, so a freshly "
            "built DDP model (e.g. after loading a checkpoint) starts with another layout. Resume with the "
            "layout the state was saved with: a model whose parameter order is its gradient-ready order (layers "
            "registered output first), or DDP(find_unused_parameters=True), which never rebuilds.")


class BytesCounter:
    """Bytes one worker sends, per training step: buckets add to the running step, and the last bucket
    of a step (``bucket.is_last()``) closes it into ``bytes_history``."""

    def __init__(self):
        self.bytes_history: list[int] = []
        self._step_bytes = 0

    def add(self, nbytes: int, last: bool) -> None:
        self._step_bytes += int(nbytes)
        if last:
            self.bytes_history.append(self._step_bytes)
            self._step_bytes = 0


def _group(process_group):
    return process_group if process_group is not None else dist.group.WORLD


def allreduce_mean(buffer: Tensor, group) -> torch.futures.Future:
    """Plain DDP's average: scale by ``1 / world_size`` (DDP's reducer multiplies by the reciprocal as it
    fills the bucket; torch's ``allreduce_hook`` divides, which differs in the last bit for 3 workers),
    then sum over workers."""
    buffer.mul_(1.0 / group.size())
    fut = dist.all_reduce(buffer, group=group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


class CompressedAllreduceState:
    r"""State of :func:`compressed_allreduce_hook`: the compressor, the error buffers, the step count.

    ``compressor``: :class:`~gradwise.distributed.compressors.NoCompression` (default; the hook is then
    plain DDP, bit for bit) or :class:`~gradwise.distributed.compressors.TopK`. ``error_feedback``: keep
    each worker's compression residual and add it to the next step's gradient (error feedback / memory,
    Seide et al. 2014; Stich et al., "Sparsified SGD with Memory", arXiv 1809.07599):

    .. math:: x_i = g_i + e_i,\qquad m_i = C(x_i),\qquad e_i \leftarrow x_i - m_i,\qquad
              g = \tfrac1n \textstyle\sum_i m_i .

    ``start_iter``: steps run as plain all-reduce before compression starts (DDP rebuilds its buckets
    after the first step, so buffers kept per bucket need ``start_iter >= 1``; torch's PowerSGD asks the
    same). :meth:`state_dict` / :meth:`load_state_dict` carry the error buffers, the step count and the
    byte counts through a checkpoint.
    """

    def __init__(self, process_group=None, compressor: Any = None, error_feedback: bool = False,
                 start_iter: int = 1):
        compressor = NoCompression() if compressor is None else compressor
        if not isinstance(compressor, (NoCompression, TopK)):
            raise TypeError(f"Invalid compressor: {type(compressor).__name__} (accepted: NoCompression or TopK; "
                            "PowerSGD is torch's hook, see powersgd_hook)")
        self.process_group = process_group
        self.compressor = compressor
        self.error_feedback = check_bool("error_feedback", error_feedback)
        self.start_iter = check_int("start_iter", start_iter, 0)
        if self.error_feedback and self.start_iter < 1 and not isinstance(compressor, NoCompression):
            raise ValueError(f"Invalid start_iter: {start_iter} (accepted: >= 1 with error_feedback, because DDP "
                             "rebuilds its buckets after the first step)")
        self.iter = 0
        self.errors: dict[int, Tensor] = {}
        self.layouts: dict[int, list[tuple[int, ...]]] = {}
        self.counter = BytesCounter()

    @property
    def bytes_history(self) -> list[int]:
        return self.counter.bytes_history

    def state_dict(self) -> dict[str, Any]:
        return {"iter": self.iter, "errors": {k: v.clone() for k, v in self.errors.items()},
                "layouts": {k: list(v) for k, v in self.layouts.items()},
                "bytes_history": list(self.counter.bytes_history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"iter", "errors", "layouts", "bytes_history"} - set(state)
        if missing:
            raise ValueError(f"Invalid state: missing {sorted(missing)} (accepted: a dict from state_dict())")
        self.iter = int(state["iter"])
        self.errors = {int(k): v.clone() for k, v in state["errors"].items()}
        self.layouts = {int(k): [tuple(s) for s in v] for k, v in state["layouts"].items()}
        self.counter.bytes_history = list(state["bytes_history"])


def compressed_allreduce_hook(state: CompressedAllreduceState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: average the workers' gradients, compressed by ``state.compressor``.

    Top-K: each worker sends ``(values, int32 indices)`` of ``x_i = g_i (+ e_i)``; both are gathered
    (``all_gather``), every worker adds the messages in rank order into a dense tensor and divides by
    the world size, so all workers hold the same averaged gradient. No compression: torch's default
    all-reduce (scale by ``1 / world_size``, then sum), equal to plain DDP bit for bit.
    """
    group = _group(state.process_group)
    world = group.size()
    buf = bucket.buffer()
    last = bucket.is_last()
    comp = state.compressor
    if isinstance(comp, NoCompression) or state.iter < state.start_iter:
        state.counter.add(NoCompression().message_bytes(buf.numel(), buf.dtype), last)
        if last:
            state.iter += 1
        return allreduce_mean(buf, group)

    grads = bucket.gradients()
    numels = [g.numel() for g in grads]
    idx_b = bucket.index()
    x = buf
    if state.error_feedback:
        layout = [tuple(g.shape) for g in grads]
        if idx_b in state.layouts and state.layouts[idx_b] != layout:
            raise RuntimeError(layout_error(idx_b, state.layouts[idx_b], layout))
        state.layouts[idx_b] = layout
        err = state.errors.get(idx_b)
        if err is not None:
            x = buf + err
    values, indices = comp.encode(x, numels)
    if state.error_feedback:
        state.errors[idx_b] = x - topk_decompress(values, indices, x.numel())
    state.counter.add(comp.message_bytes(numels, buf.dtype), last)
    if last:
        state.iter += 1

    vals_out = [torch.empty_like(values) for _ in range(world)]
    idx_out = [torch.empty_like(indices) for _ in range(world)]
    work_v = dist.all_gather(vals_out, values, group=group, async_op=True)
    work_i = dist.all_gather(idx_out, indices, group=group, async_op=True)

    def aggregate(fut):
        work_v.wait()
        dense = topk_decompress(torch.cat(vals_out), torch.cat(idx_out), buf.numel())
        buf.copy_(dense.div_(world))
        return buf

    return work_i.get_future().then(aggregate)


class PowerSGDBytesState(PowerSGDState):
    """torch's :class:`~torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook.PowerSGDState` (same
    arguments, same algorithm) with a count of the bytes each worker sends per step
    (``bytes_history``) and ``state_dict`` / ``load_state_dict`` built on torch's pickling state."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.counter = BytesCounter()

    @property
    def bytes_history(self) -> list[int]:
        return self.counter.bytes_history

    def state_dict(self) -> dict[str, Any]:
        out = {slot: getattr(self, slot) for slot in PowerSGDState.__slots__ if slot != "process_group"}
        out["error_dict"] = {k: v.clone() for k, v in self.error_dict.items()}
        out["p_memory_dict"] = {k: v.clone() for k, v in self.p_memory_dict.items()}
        out["q_memory_dict"] = {k: v.clone() for k, v in self.q_memory_dict.items()}
        out["rng"] = self.rng.get_state()
        out["bytes_history"] = list(self.counter.bytes_history)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.counter.bytes_history = list(state.pop("bytes_history", []))
        rng = state.pop("rng")
        for slot, value in state.items():
            if slot not in PowerSGDState.__slots__ or slot == "process_group":
                raise ValueError(f"Invalid state: unknown key {slot!r} (accepted: a dict from state_dict())")
            setattr(self, slot, value)
        self.rng.set_state(rng)


def powersgd_hook(state: PowerSGDBytesState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """torch's ``powerSGD_hook``, unchanged, with the bytes of this worker's message added to
    ``state.bytes_history``: the dense bucket while torch runs plain all-reduce (``iter <
    start_powerSGD_iter``), then ``P`` and ``Q`` of each compressed matrix plus the tensors sent dense,
    read from torch's own count (``total_numel_after_compression``)."""
    buf = bucket.buffer()
    elem = buf.element_size()
    compressing = state.iter >= state.start_powerSGD_iter
    before = state.total_numel_after_compression
    last = bucket.is_last()
    fut = _torch_powersgd_hook(state, bucket)
    numel = state.total_numel_after_compression - before if compressing else buf.numel()
    state.counter.add(numel * elem, last)
    return fut
