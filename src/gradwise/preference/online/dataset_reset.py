"""DR-PO (Chang et al., 2024): dataset resets for online RLHF. :func:`dataset_reset_mask` picks which
rollouts start from a prefix of the dataset's reference response, :func:`forced_prefixes` turns the mask
into :func:`~gradwise.preference.generate`'s ``forced_prefixes``, and :func:`ppo_clip_loss` is PPO's clipped
policy loss with the forced tokens left out.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradwise._validate import check_int, check_real
from gradwise.registry import register

__all__ = ["dataset_reset_mask", "forced_prefixes", "ppo_clip_loss"]

_PAPER = "Dataset Reset Policy Optimization for RLHF"
_CODE = "https://github.com/Cornell-RL/drpo@bd825df"


def _lengths(ref_lengths) -> Tensor:
    if torch.is_tensor(ref_lengths):
        if ref_lengths.is_floating_point() or ref_lengths.is_complex() or ref_lengths.dtype == torch.bool \
                or ref_lengths.dim() != 1:
            raise ValueError(f"Invalid ref_lengths: expected a 1-D integer tensor [B], got {ref_lengths.dtype} of "
                             f"shape {tuple(ref_lengths.shape)}")
        lens = ref_lengths.to(torch.long)
    else:
        try:
            lens = torch.tensor([check_int(f"ref_lengths[{i}]", v) for i, v in enumerate(ref_lengths)],
                                dtype=torch.long)
        except TypeError:
            raise ValueError(f"Invalid ref_lengths: {ref_lengths!r} (accepted: a sequence of integers)") from None
    if lens.numel() < 1:
        raise ValueError("Invalid ref_lengths: empty (accepted: one length per rollout, B >= 1)")
    return lens


@register(kind="preference", paper=_PAPER, year=2024, arxiv="2404.08495", code=_CODE,
          summary="DR-PO dataset reset: each rollout starts, with probability beta, from a random prefix of "
                  "the dataset's reference response (teacher-forced)")
def dataset_reset_mask(ref_lengths, max_len: int, *, beta: float = 1.0,
                       generator: torch.Generator | None = None) -> Tensor:
    r"""Which response tokens of each rollout are forced from the dataset (DR-PO's reset), ``[B, max_len]``.

    Paper: Chang, Zhan, Oertell, Brantley, Misra, Lee, Sun, "Dataset Reset Policy Optimization for RLHF",
    2024, arXiv 2404.08495. Authors' code: Cornell-RL/drpo @bd825df (``src/tldr/drpo.py``: ``generate`` with
    ``reference={"beta": args.beta, ...}``, default ``beta=1.0``) and Cornell-RL/tril @045d036
    (``RollinProcessor.create_mask`` in ``src/tril/utils/logit_processors.py``).

    DR-PO resets the policy optimizer to states of the offline data: instead of always generating from the
    prompt, a rollout starts from the prompt plus a prefix of the dataset's (preferred) reference response
    and the policy completes it. Per row ``b`` with reference length ``L_b`` (tokens before padding):

    * with probability ``beta`` the row is reset (theirs: ``rng.choice([True, False], p=[beta, 1-beta])``);
    * its prefix length is ``k ~ U{1, ..., L_b - 1}`` (a row of ``tril(ones)[:L_b - 1]``: at least one
      token is forced, at least one is left to the policy);
    * rows with ``L_b < 2`` are never reset.

    ``mask[b, t]`` is True for the forced positions ``t < k``. Pass ``forced_prefixes(refs, mask)`` to
    :func:`~gradwise.preference.generate`, and ``response_mask & ~mask`` as the ``mask`` of
    :func:`ppo_clip_loss`. The draws come from ``generator`` (two uniforms per row, on the CPU: a seeded
    generator gives the same mask); theirs uses a numpy ``Generator``, so the masks agree in distribution,
    not draw for draw (``tests/preference/test_dataset_reset.py`` checks the frequencies against masks
    of their ``create_mask``). ``ref_lengths`` must be ``<= max_len`` (the mask's width, their padded
    reference width).

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> dataset_reset_mask([5, 1, 3], 6, beta=1.0, generator=g).sum(1)   # row 1 too short  # doctest: +SKIP
        tensor([3, 0, 1])
    """
    lens = _lengths(ref_lengths)
    check_int("max_len", max_len, lo=1)
    beta = check_real("beta", beta, 0.0, 1.0)
    if bool((lens < 0).any()) or bool((lens > max_len).any()):
        raise ValueError(f"Invalid ref_lengths: expected 0 <= length <= max_len = {max_len}, got "
                         f"{lens.min().item()}..{lens.max().item()}")
    u = torch.rand(2, lens.numel(), generator=generator, dtype=torch.float64)
    reset = (u[0] < beta) & (lens >= 2)
    k = 1 + torch.floor(u[1] * (lens - 1).clamp(min=1)).to(torch.long)
    k = torch.minimum(k, (lens - 1).clamp(min=1))  # u < 1 always; guards rounding
    k = torch.where(reset, k, torch.zeros_like(k))
    return torch.arange(max_len)[None, :] < k[:, None]


def forced_prefixes(refs: Sequence[Sequence[int]] | Tensor, mask: Tensor) -> list[list[int]]:
    """The prefix of each reference response that ``mask`` (from :func:`dataset_reset_mask`) forces:
    ``refs[b][:mask[b].sum()]``, the ``forced_prefixes`` argument of
    :func:`~gradwise.preference.generate`."""
    if not torch.is_tensor(mask) or mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError("Invalid mask: expected a boolean tensor [B, T] (dataset_reset_mask's output)")
    if len(refs) != mask.shape[0]:
        raise ValueError(f"Invalid refs: {len(refs)} references for {mask.shape[0]} mask rows")
    ks = mask.sum(1).tolist()
    out = []
    for b, (r, k) in enumerate(zip(refs, ks)):
        r = r.tolist() if torch.is_tensor(r) else list(r)
        if k > len(r):
            raise ValueError(f"Invalid refs[{b}]: {len(r)} tokens, the mask forces {k}")
        out.append([int(t) for t in r[:k]])
    return out


@register(kind="preference", paper=_PAPER, year=2024, arxiv="2404.08495", code=_CODE,
          summary="DR-PO's PPO clipped policy loss with the reset (forced) tokens masked out")
def ppo_clip_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *,
                  clip_range: float = 0.2) -> Tensor:
    r"""PPO's clipped policy loss over the tokens of ``mask`` (DR-PO: the forced tokens left out).

    Paper: Chang et al., "Dataset Reset Policy Optimization for RLHF", 2024, arXiv 2404.08495.

    Per token, with ``r = exp(logps - old_logps)``::

        l = max(-A r, -A clip(r, 1 - eps, 1 + eps))          loss = sum(l * mask) / sum(mask)

    ``logps``, ``old_logps``: token log-probs of the sampled responses [B, T] under the current policy and
    the policy that generated them; ``advantages`` [B, T] (or [B], one per sequence, broadcast);
    ``mask`` [B, T] bool: the tokens that count. DR-PO (their ``src/tldr/drpo.py`` @bd825df,
    ``pg_loss = (max(pg_losses, pg_losses2) * ~rollin_masks).sum() / (~rollin_masks).sum()``) leaves the
    forced tokens out of the policy loss only: the value loss and the KL reward still cover them (theirs:
    ``vf_loss`` over all tokens, ``kl = logprobs - ref_logprobs`` everywhere), so keep those as they are.
    Their mask does not leave out padding; here ``mask`` is whatever the caller passes, e.g.
    ``response_mask & ~reset_mask``. A mask selecting no token gives NaN (0/0, as theirs).
    ``clip_range``: 0.2 (their ``cliprange``). Differentiable in ``logps``.
    """
    for name, t in (("logps", logps), ("old_logps", old_logps)):
        if not torch.is_tensor(t) or not t.is_floating_point() or t.dim() != 2:
            raise ValueError(f"Invalid {name}: expected a floating-point tensor [B, T]")
    if old_logps.shape != logps.shape:
        raise ValueError(f"Invalid old_logps: shape {tuple(old_logps.shape)}, logps has {tuple(logps.shape)}")
    if not torch.is_tensor(advantages) or not advantages.is_floating_point() or \
            advantages.shape not in (logps.shape, logps.shape[:1]):
        raise ValueError(f"Invalid advantages: expected a floating-point tensor of shape {tuple(logps.shape)} "
                         f"or {tuple(logps.shape[:1])}")
    if not torch.is_tensor(mask) or mask.dtype != torch.bool or mask.shape != logps.shape:
        raise ValueError(f"Invalid mask: expected a boolean tensor of shape {tuple(logps.shape)}")
    eps = check_real("clip_range", clip_range, 0.0, lo_open=True)
    adv = advantages if advantages.dim() == 2 else advantages[:, None]
    ratio = torch.exp(logps - old_logps.detach())
    l1 = -adv * ratio
    l2 = -adv * torch.clamp(ratio, 1.0 - eps, 1.0 + eps)
    m = mask.to(logps.dtype)
    return (torch.max(l1, l2) * m).sum() / m.sum()
