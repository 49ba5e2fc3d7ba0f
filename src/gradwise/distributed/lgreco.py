"""L-GreCo as a DDP communication hook: layer-wise PowerSGD whose per-layer ranks a dynamic program picks.

No ``from __future__ import annotations`` here: DDP checks the hook's annotations as objects.
"""
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from gradwise._validate import check_bool, check_choice, check_int, check_nonneg, check_positive
from gradwise.distributed.compressors import powersgd_should_compress
from gradwise.distributed.hooks import BytesCounter, allreduce_mean, layout_error
from gradwise.distributed.lgreco_search import lgreco_error_table, lgreco_ranks, lgreco_size_table, orthogonalize_
from gradwise.registry import register

__all__ = ["LGreCoState", "lgreco_hook"]

_REF = dict(paper="L-GreCo: Layerwise-Adaptive Gradient Compression for Efficient and Accurate Deep Learning",
            year=2022, arxiv="2210.17357", code="https://github.com/LGrCo/L-GreCo")


@register(kind="comm-hook", **_REF, aliases=("lgreco", "l-greco"),
          summary="L-GreCo: PowerSGD DDP hook whose per-layer ranks a DP picks to minimize bytes under an "
                  "error budget")
class LGreCoState:
    r"""State of :func:`lgreco_hook`: L-GreCo (Alimohammadi et al., arXiv 2210.17357) around PowerSGD.

    Register as torch's PowerSGD: ``ddp.register_comm_hook(LGreCoState(matrix_approximation_rank=4),
    lgreco_hook)``. Each step is PowerSGD (Vogels et al.) layer by layer, with error feedback and warm
    start: for a gradient ``M`` (``n x m``, plus the previous error), ``P = M Q`` summed over workers,
    ``P = orth(P)``, ``Q = M^T P`` averaged over workers, ``M ~ P Q^T``, error ``= M - P Q^T``. Tensors
    not worth compressing at the default rank (``(n + m) r * min_compression_rate >= n m``; biases) are
    averaged dense. Unlike torch's hook, each layer ``l`` has its own rank ``r_l``.

    The ranks: every ``adjust_freq`` steps after ``start_powerSGD_iter``, rank 0 measures for each
    compressed layer the error ``E[l, r]`` of a rank-``r`` approximation of its accumulated gradient (the
    last ``acc_iter`` steps' inputs times ``delta / acc_iter``) for ``r`` in ``[floor(gamma r_0),
    ceil(beta r_0)]``, solves

    .. math:: \min_{r} \sum_l r_l (n_l + m_l) \quad\text{s.t.}\quad \sum_l E[l, r_l] \le \alpha \sum_l E[l, r_0]

    by dynamic programming (:func:`~gradwise.distributed.lgreco_search.lgreco_ranks`), and broadcasts
    the ranks; ``P``/``Q`` are then reallocated (new random ``Q``).

    Defaults are the authors' code (github.com/LGrCo/L-GreCo, ``hooks/lgreco_hook.py``, commit 13942f0):
    ``alpha=1, beta=2, gamma=0.5, delta=1e-2, acc_iter=10, error_method="power"`` (5 power iterations),
    ``adjust_freq=100`` (their training scripts pass one epoch), PowerSGD's own defaults otherwise. The
    paper's algorithm section could not be read here; the code is the source. Departures: the new ``Q``
    after a rank change and the power method's random starts come from seeded generators held in the state
    (theirs use torch's global generator, so workers draw different ``Q``), which makes a resumed run equal
    an uninterrupted one; with several DDP buckets, layers are ordered by bucket index, then position
    (their bookkeeping assumes buckets arrive in index order); ``warmup_after_adjusting`` (off in their
    runs) is not offered. Top-K under L-GreCo is not here: the released code has PowerSGD only.

    ``bytes_history`` holds the bytes this worker sent per step (``P`` and ``Q`` entries plus dense
    tensors, times the element size); ``ranks`` the current rank per bucket and layer;
    :meth:`state_dict` / :meth:`load_state_dict` carry everything through a checkpoint.
    """

    def __init__(self, process_group=None, matrix_approximation_rank: int = 1, start_powerSGD_iter: int = 1000,
                 min_compression_rate: float = 2, use_error_feedback: bool = True, warm_start: bool = True,
                 orthogonalization_epsilon: float = 0, random_seed: int = 0, adjust_freq: int = 100,
                 alpha: float = 1.0, beta: float = 2.0, gamma: float = 0.5, delta: float = 1e-2, acc_iter: int = 10,
                 error_method: str = "power", error_method_iter: int = 5, dp_buckets: int = 10000):
        self.process_group = process_group
        self.matrix_approximation_rank = check_int("matrix_approximation_rank", matrix_approximation_rank, 1)
        self.start_powerSGD_iter = check_int("start_powerSGD_iter", start_powerSGD_iter, 0)
        self.use_error_feedback = check_bool("use_error_feedback", use_error_feedback)
        self.warm_start = check_bool("warm_start", warm_start)
        if (self.use_error_feedback or self.warm_start) and self.start_powerSGD_iter <= 1:
            raise ValueError(f"Invalid start_powerSGD_iter: {start_powerSGD_iter} (accepted: > 1 with error feedback "
                             "or warm start, because DDP rebuilds its buckets after the first step)")
        self.min_compression_rate = check_nonneg("min_compression_rate", min_compression_rate)
        self.orthogonalization_epsilon = check_nonneg("orthogonalization_epsilon", orthogonalization_epsilon)
        self.adjust_freq = check_int("adjust_freq", adjust_freq, 1)
        self.alpha = check_positive("alpha", alpha)
        self.delta = check_positive("delta", delta)
        self.acc_iter = check_int("acc_iter", acc_iter, 1)
        self.error_method = check_choice("error_method", error_method, ("power", "svd"))
        self.error_method_iter = check_int("error_method_iter", error_method_iter, 1)
        self.dp_buckets = check_int("dp_buckets", dp_buckets, 1)
        self.max_rank = int(np.ceil(self.matrix_approximation_rank * check_positive("beta", beta)))
        self.min_rank = int(np.floor(self.matrix_approximation_rank * check_positive("gamma", gamma)))
        if not 1 <= self.min_rank <= self.matrix_approximation_rank <= self.max_rank:
            raise ValueError(f"Invalid gamma/beta: {gamma}/{beta} give candidate ranks {self.min_rank}..{self.max_rank} "
                             f"(accepted: 1 <= floor(gamma r) <= r <= ceil(beta r) for r = {matrix_approximation_rank})")
        self.rng = np.random.RandomState(random_seed)
        self.dp_rng = np.random.RandomState(random_seed + 1)
        self.iter = 0
        self.error_dict: dict[int, Tensor] = {}
        self.p_memory_dict: dict[int, Tensor] = {}
        self.q_memory_dict: dict[int, Tensor] = {}
        self.ranks: dict[int, list[int]] = {}
        self.shapes: dict[int, list[tuple[int, int]]] = {}
        self.acc_grad: dict[int, list[Tensor]] = {}
        self.to_adjust: list[Tensor] = []
        self.counter = BytesCounter()

    @property
    def bytes_history(self) -> list[int]:
        return self.counter.bytes_history

    _TENSOR_DICTS = ("error_dict", "p_memory_dict", "q_memory_dict")

    def state_dict(self) -> dict[str, Any]:
        out = {k: {b: t.clone() for b, t in getattr(self, k).items()} for k in self._TENSOR_DICTS}
        out.update(iter=self.iter, rng=self.rng.get_state(), dp_rng=self.dp_rng.get_state(),
                   ranks={b: list(r) for b, r in self.ranks.items()}, shapes={b: list(s) for b, s in self.shapes.items()},
                   acc_grad={b: [t.clone() for t in ts] for b, ts in self.acc_grad.items()},
                   to_adjust=[t.clone() for t in self.to_adjust], bytes_history=list(self.counter.bytes_history))
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = set(self._TENSOR_DICTS) | {"iter", "rng", "dp_rng", "ranks", "shapes", "acc_grad", "to_adjust",
                                          "bytes_history"}
        if set(state) != keys:
            raise ValueError(f"Invalid state: keys {sorted(set(state) ^ keys)} differ (accepted: a dict from state_dict())")
        for k in self._TENSOR_DICTS:
            setattr(self, k, {int(b): t.clone() for b, t in state[k].items()})
        self.iter = int(state["iter"])
        self.rng.set_state(state["rng"])
        self.dp_rng.set_state(state["dp_rng"])
        self.ranks = {int(b): list(r) for b, r in state["ranks"].items()}
        self.shapes = {int(b): [tuple(s) for s in v] for b, v in state["shapes"].items()}
        self.acc_grad = {int(b): [t.clone() for t in ts] for b, ts in state["acc_grad"].items()}
        self.to_adjust = [t.clone() for t in state["to_adjust"]]
        self.counter.bytes_history = list(state["bytes_history"])

    # -- the rank search (authors' schedule) -----------------------------------------------------------
    def _accumulate(self, bucket_index: int, iter_rel: int, matrices: list[Tensor]) -> None:
        if iter_rel % self.adjust_freq == 0 and bucket_index == 0:
            self.to_adjust = [t for b in sorted(self.acc_grad) for t in self.acc_grad[b]]
            self.acc_grad = {}
        if iter_rel % self.adjust_freq >= self.adjust_freq - self.acc_iter:
            scaled = [t * (self.delta / self.acc_iter) for t in matrices]
            acc = self.acc_grad.get(bucket_index)
            self.acc_grad[bucket_index] = scaled if acc is None else [a + s for a, s in zip(acc, scaled)]

    def _adjust(self, group, device, dtype) -> None:
        """Rank 0 solves the DP on the accumulated gradients; every worker gets the ranks and new P/Q."""
        order = [(b, i) for b in sorted(self.ranks) for i in range(len(self.ranks[b]))]
        payload = torch.full((len(order),), -1, dtype=torch.int64)  # -1: keep the current ranks
        if dist.get_rank(group) == 0 and len(self.to_adjust) == len(order):
            gen = torch.Generator().manual_seed(int(self.dp_rng.randint(1_000_000_000)))
            mats = [t.detach().cpu() for t in self.to_adjust]
            errors = lgreco_error_table(mats, self.min_rank, self.max_rank, self.error_method,
                                        self.error_method_iter, gen)
            sizes = lgreco_size_table([tuple(t.shape) for t in mats], self.min_rank, self.max_rank)
            picked = lgreco_ranks(errors, sizes, self.matrix_approximation_rank, self.min_rank, self.alpha,
                                  self.dp_buckets)
            if picked is not None:
                payload = torch.tensor(picked, dtype=torch.int64)
        payload = payload.to(device)
        dist.broadcast(payload, src=dist.get_global_rank(group, 0), group=group)
        if bool((payload < 0).any()):
            return
        for (b, i), r in zip(order, payload.tolist()):
            self.ranks[b][i] = int(r)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.rng.randint(1_000_000_000)))
            for b in sorted(self.ranks):
                ps = sum(n * min(n, m, r) for (n, m), r in zip(self.shapes[b], self.ranks[b]))
                qs = sum(m * min(n, m, r) for (n, m), r in zip(self.shapes[b], self.ranks[b]))
                self.p_memory_dict[b] = torch.empty(ps, device=device, dtype=dtype)
                self.q_memory_dict[b] = torch.randn(qs, device="cpu", dtype=dtype).to(device)

    def _maybe_increase_iter(self, bucket) -> None:
        if bucket.is_last():
            self.iter += 1


def lgreco_hook(state: LGreCoState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook of L-GreCo: layer-wise PowerSGD at the per-layer ranks in ``state``, plain
    all-reduce for the first ``state.start_powerSGD_iter`` steps (see :class:`LGreCoState`)."""
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    world = group.size()
    buf = bucket.buffer()
    last = bucket.is_last()
    if state.iter < state.start_powerSGD_iter:
        state.counter.add(buf.numel() * buf.element_size(), last)
        state._maybe_increase_iter(bucket)
        return allreduce_mean(buf, group)

    device, dtype, bidx = buf.device, buf.dtype, bucket.index()
    iter_rel = state.iter - state.start_powerSGD_iter
    input_cp = None
    if state.use_error_feedback:
        if bidx in state.error_dict:
            buf.add_(state.error_dict[bidx])
        else:
            state.error_dict[bidx] = torch.zeros(buf.numel(), device=device, dtype=dtype)
        input_cp = buf.detach().clone()

    r0 = state.matrix_approximation_rank
    to_compress, dense = [], []
    for tensor in bucket.gradients():
        matrix = tensor.view(tensor.shape[0], -1)
        n, m = matrix.shape
        if powersgd_should_compress(n, m, r0, state.min_compression_rate):
            to_compress.append(matrix)
        else:
            dense.append(tensor)
    if bidx not in state.ranks:
        state.ranks[bidx] = [r0] * len(to_compress)
        state.shapes[bidx] = [tuple(t.shape) for t in to_compress]
    elif state.shapes[bidx] != [tuple(t.shape) for t in to_compress]:
        raise RuntimeError(layout_error(bidx, state.shapes[bidx], [tuple(t.shape) for t in to_compress]))
    ranks = [min(n, m, r) for (n, m), r in zip(state.shapes[bidx], state.ranks[bidx])]

    need_random_q = not state.warm_start or bidx not in state.p_memory_dict
    if need_random_q:
        state.p_memory_dict[bidx] = torch.empty(sum(t.shape[0] * r for t, r in zip(to_compress, ranks)),
                                                device=device, dtype=dtype)
        state.q_memory_dict[bidx] = torch.empty(sum(t.shape[1] * r for t, r in zip(to_compress, ranks)),
                                                device=device, dtype=dtype)
    if dist.get_rank(group) == 0:  # only rank 0 measures errors (authors' code)
        state._accumulate(bidx, iter_rel, to_compress)
    if iter_rel % state.adjust_freq == 0 and bidx == 0 and iter_rel > 0:
        state._adjust(group, device, dtype)
        ranks = [min(n, m, r) for (n, m), r in zip(state.shapes[bidx], state.ranks[bidx])]

    ps, qs, pi, qi = [], [], 0, 0
    for t, r in zip(to_compress, ranks):
        n, m = t.shape
        ps.append(state.p_memory_dict[bidx][pi:pi + n * r].view(1, n, r))
        qs.append(state.q_memory_dict[bidx][qi:qi + m * r].view(1, m, r))
        pi, qi = pi + n * r, qi + m * r
    eps = state.orthogonalization_epsilon
    if not need_random_q:
        for q in qs:
            orthogonalize_(q, eps)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(state.rng.randint(1_000_000_000))
            for q in qs:
                q.copy_(torch.randn(*q.shape, device="cpu", dtype=dtype))
                orthogonalize_(q, eps)
    mats = [t.unsqueeze(0) for t in to_compress]
    for mat, q, p in zip(mats, qs, ps):
        torch.bmm(mat, q, out=p)
    dense_numel = sum(t.numel() for t in dense)
    state.counter.add((dense_numel + pi + qi) * buf.element_size(), last)

    dense_mem = torch.cat([t.view(-1) for t in dense]) if dense else torch.tensor([], device=device, dtype=dtype)
    fut = dist.all_reduce(dense_mem, group=group, async_op=True).get_future()

    def unpack_dense_and_allreduce_ps(fut):
        mem = fut.value()[0].div_(world)
        start = 0
        for t in dense:
            t.copy_(mem[start:start + t.numel()].view_as(t))
            start += t.numel()
        return dist.all_reduce(state.p_memory_dict[bidx], group=group, async_op=True).get_future().wait()[0]

    def compute_qs(fut):
        state.p_memory_dict[bidx] = fut.value()
        for p in ps:
            orthogonalize_(p, eps)
        for mat, p, q in zip(mats, ps, qs):
            torch.bmm(mat.transpose(1, 2), p, out=q)
        return dist.all_reduce(state.q_memory_dict[bidx], group=group, async_op=True).get_future().wait()[0]

    def decompress(fut):
        state.q_memory_dict[bidx] = fut.value().div_(world)
        for p, q, mat in zip(ps, qs, mats):
            torch.bmm(p, q.transpose(1, 2), out=mat)
        if state.use_error_feedback:
            state.error_dict[bidx] = input_cp - buf
        if not state.warm_start:
            state.p_memory_dict.clear()
            state.q_memory_dict.clear()
        state._maybe_increase_iter(bucket)
        return buf

    return fut.then(unpack_dense_and_allreduce_ps).then(compute_qs).then(decompress)
