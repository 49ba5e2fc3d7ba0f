"""NTK-Attention: attention over an (arbitrarily long) trainable prefix replaced by ``d² + d`` parameters per head.

Paper: "Toward Infinite-Long Prefix in Transformer" (later "Towards ..."), Liang, Shi, Song, Yang (and Gu in v1),
2024, arXiv 2406.14036. Authors' code: https://github.com/ChristianYang37/chiwun at commit 08a0713
(``src/NTK-Attention/ntk_attn_demo.py``, the ``ntk_attn`` function; the ViT and ChatGLM scripts use the same
arithmetic inside their attention layers, with ``phi_k``/``phi_kv`` initialised to zero). Of the paper only the
abstract and the roadmap of its appendix were readable in the stored text (searched 2026-12-08, see
docs/coverage_notes.md), so the formula below is the authors' code, which ``tests/peft_tests/test_ntk_attention.py``
checks against golden data made by running it (``tools/golden/make_ntk_attention_golden.py``).

Prefix attention with a prefix of ``m`` keys/values ``(K_P, V_P)`` in front of the input's ``(K, V)`` is, for one
query ``q`` (head dimension ``d``, scores ``s_j = q·k_j / √d``)::

    out(q) = (Σ_j e^{s_j} v_j + Σ_{i≤m} e^{q·kp_i/√d} vp_i) / (Σ_j e^{s_j} + Σ_{i≤m} e^{q·kp_i/√d})

NTK-Attention replaces the prefix's two sums by a feature map ``φ(x) = elu(x / d^{1/4}) + 1`` of the query and
two trainable tensors per head, ``Z`` (``d × d``, standing for ``Σ_i φ(kp_i) vp_iᵀ``) and ``k`` (``d``, standing
for ``Σ_i φ(kp_i)``)::

    out(q) = (Σ_j e^{s_j} v_j + φ(q)ᵀ Z) / (Σ_j e^{s_j} + φ(q)ᵀ |k|)

so the cost no longer grows with ``m`` and the prefix may be "infinite". ``|k|`` (the authors take the absolute
value) keeps the normaliser positive. With ``Z = 0, k = 0`` (the authors' initialisation) the layer is plain
softmax attention. :func:`ntk_prefix_state` gives the ``(k, Z)`` that a given explicit prefix maps to under
``φ`` (the sums above); ``tests/peft_tests/test_ntk_attention.py`` measures how far that, and ``(k, Z)`` fitted by
Adam, are from the explicit prefix attention as the prefix grows.

Departures from the authors' code, each with its reason:

* The computation stays in the input's dtype; theirs casts to float32 and back (so a float64 golden run patches
  their ``.float()`` to ``.double()``; in float32 the two agree).
* The stabilising maximum is taken over the unmasked scores only (theirs over all, masked included) and is
  detached, and the prefix terms are multiplied by ``exp(−max)`` instead of divided by ``exp(max)``: the
  output is the same function (the maximum cancels), but a masked score far above the visible ones can no longer
  flush them to zero (measured: a masked score ~170 above query 0's visible ones makes theirs return NaN in
  float32, with a zero or a random state; ours equals causal softmax attention).
* A query row with every key masked (causal with more queries than keys) attends to the prefix only, as in
  theirs; its stabiliser is 0.
* ``phi_k`` / ``phi_kv`` are ``[H, d]`` / ``[H, d, d]`` (theirs ``[1, H, d, 1]`` / ``[1, H, d, d]``; both shapes
  are accepted by :func:`ntk_attn`).
* The ViT script's dropout on ``φ(q)`` (p = 0.2, a fresh ``nn.Dropout`` that stays active at evaluation) is
  ``feature_dropout`` (default 0) on :class:`NTKAttention`, active in training mode only.
* Bad shapes raise ``ValueError`` (theirs fail inside ``matmul`` or broadcast silently).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gradwise._validate import check_bool, check_int, check_real
from gradwise.registry import register

__all__ = ["ntk_feature", "ntk_attn", "prefix_attention", "ntk_prefix_state", "NTKAttention"]

_PAPER = "Toward Infinite-Long Prefix in Transformer"
_CODE = "https://github.com/ChristianYang37/chiwun@08a0713"


def ntk_feature(x: torch.Tensor) -> torch.Tensor:
    """The authors' feature map ``φ(x) = elu(x / d^{1/4}) + 1`` over the last dimension ``d`` (positive)."""
    return F.elu(x / x.shape[-1] ** 0.25) + 1


def _check_qkv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [batch, heads, length, head_dim], got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
    if key.shape != value.shape:
        raise ValueError(f"key and value must have the same shape, got {tuple(key.shape)} and {tuple(value.shape)}")
    if query.shape[:2] != key.shape[:2] or query.shape[-1] != key.shape[-1]:
        raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)} must share batch, heads and "
                         "head_dim")


def _causal_mask(nq: int, nk: int, device) -> torch.Tensor:
    """The authors' ``tril(ones(nq, nk), diagonal=nk - nq)``: query i sees keys j <= i + nk - nq (boolean)."""
    return torch.ones(nq, nk, dtype=torch.bool, device=device).tril(nk - nq)


def _ntk_state(phi_k: torch.Tensor, phi_kv: torch.Tensor, heads: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``phi_k`` as ``[H, d, 1]`` and ``phi_kv`` as ``[H, d, d]`` (accepting the authors' leading 1 and trailing 1)."""
    if not isinstance(phi_k, torch.Tensor) or tuple(phi_k.shape) not in ((heads, d), (1, heads, d, 1)):
        raise ValueError(f"phi_k must have shape [{heads}, {d}] (or the authors' [1, {heads}, {d}, 1]), got "
                         f"{getattr(phi_k, 'shape', type(phi_k).__name__)}")
    if not isinstance(phi_kv, torch.Tensor) or tuple(phi_kv.shape) not in ((heads, d, d), (1, heads, d, d)):
        raise ValueError(f"phi_kv must have shape [{heads}, {d}, {d}] (or the authors' [1, {heads}, {d}, {d}]), "
                         f"got {getattr(phi_kv, 'shape', type(phi_kv).__name__)}")
    return phi_k.reshape(heads, d, 1), phi_kv.reshape(heads, d, d)


def _softmax_parts(query, key, value, causal: bool, extra_scores=None):
    """Unnormalised, stabilised attention parts: ``exp(s - m)`` summed and applied to ``value``, and ``m``."""
    d = query.shape[-1]
    scores = query @ key.transpose(-1, -2) / d ** 0.5
    if causal:
        mask = _causal_mask(query.shape[-2], key.shape[-2], query.device)
        scores = scores.masked_fill(~mask, float("-inf"))
    m = scores.detach().amax(-1, keepdim=True)
    if extra_scores is not None:
        m = torch.maximum(m, extra_scores.detach().amax(-1, keepdim=True))
    m = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    a = torch.exp(scores - m)
    return a.sum(-1, keepdim=True), a @ value, m


def ntk_attn(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, phi_k: torch.Tensor,
             phi_kv: torch.Tensor, *, causal: bool = True) -> torch.Tensor:
    """NTK-Attention (arXiv 2406.14036): ``(Σ_j e^{s_j} v_j + φ(q)ᵀZ) / (Σ_j e^{s_j} + φ(q)ᵀ|k|)`` per query.

    ``query`` ``[B, H, nq, d]``, ``key``/``value`` ``[B, H, nk, d]``; ``phi_k`` (the paper's ``k``) ``[H, d]`` and
    ``phi_kv`` (``Z``) ``[H, d, d]``; ``causal`` masks key ``j`` for query ``i`` when ``j > i + nk − nq`` (the
    authors' default True). Returns ``[B, H, nq, d]`` in the input's dtype. ``phi_k = phi_kv = 0`` is softmax
    attention. NaN inputs propagate.
    """
    check_bool("causal", causal)
    _check_qkv(query, key, value)
    heads, d = query.shape[1], query.shape[-1]
    k, z = _ntk_state(phi_k, phi_kv, heads, d)
    return _ntk(query, key, value, k, z, causal)


def _ntk(query, key, value, k, z, causal: bool, dropout: float = 0.0) -> torch.Tensor:
    """The NTK-Attention output for checked inputs, ``k`` ``[H, d, 1]``, ``z`` ``[H, d, d]``."""
    denom, num, m = _softmax_parts(query, key, value, causal)
    phi_q = ntk_feature(query)
    if dropout > 0:
        phi_q = F.dropout(phi_q, dropout, training=True)
    scale = torch.exp(-m)
    return (num + (phi_q @ z) * scale) / (denom + (phi_q @ k.abs()) * scale)


def prefix_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, prefix_key: torch.Tensor,
                     prefix_value: torch.Tensor, *, causal: bool = True) -> torch.Tensor:
    """Explicit prefix attention, the quantity NTK-Attention stands in for: softmax attention of ``query`` over
    ``[prefix_key; key]`` and ``[prefix_value; value]``, every query seeing the whole prefix (``causal`` masks
    the input keys only, as :func:`ntk_attn`). ``prefix_key``/``prefix_value``: ``[H, m, d]`` or
    ``[B, H, m, d]``. Cost ``O(nq · (m + nk))``."""
    check_bool("causal", causal)
    _check_qkv(query, key, value)
    b, heads, _, d = query.shape
    for name, t in (("prefix_key", prefix_key), ("prefix_value", prefix_value)):
        if not isinstance(t, torch.Tensor) or t.dim() not in (3, 4) or t.shape[-3] != heads or t.shape[-1] != d \
                or (t.dim() == 4 and t.shape[0] != b):
            raise ValueError(f"{name} must have shape [{heads}, m, {d}] or [{b}, {heads}, m, {d}], got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
    if prefix_key.shape[-2] != prefix_value.shape[-2]:
        raise ValueError(f"prefix_key and prefix_value must have the same length, got {prefix_key.shape[-2]} and "
                         f"{prefix_value.shape[-2]}")
    pk = prefix_key.expand(b, heads, -1, d)
    pv = prefix_value.expand(b, heads, -1, d)
    pscores = query @ pk.transpose(-1, -2) / d ** 0.5
    denom, num, m = _softmax_parts(query, key, value, causal, extra_scores=pscores)
    pa = torch.exp(pscores - m)
    return (num + pa @ pv) / (denom + pa.sum(-1, keepdim=True))


def ntk_prefix_state(prefix_key: torch.Tensor, prefix_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(phi_k, phi_kv)`` an explicit prefix maps to under ``φ``: ``k = Σ_i φ(kp_i)`` ``[H, d]`` and
    ``Z = Σ_i φ(kp_i) vp_iᵀ`` ``[H, d, d]`` (``prefix_key``/``prefix_value`` ``[H, m, d]``). With these,
    :func:`ntk_attn` replaces each prefix weight ``e^{q·kp/√d}`` by ``φ(q)·φ(kp)``; a starting point, not the
    optimum (the paper trains ``k`` and ``Z``)."""
    if not isinstance(prefix_key, torch.Tensor) or prefix_key.dim() != 3 or not isinstance(prefix_value, torch.Tensor) \
            or prefix_value.shape != prefix_key.shape:
        raise ValueError("prefix_key and prefix_value must be 3-D tensors [heads, m, head_dim] of the same shape, got "
                         f"{getattr(prefix_key, 'shape', None)} and {getattr(prefix_value, 'shape', None)}")
    phi = ntk_feature(prefix_key)
    return phi.sum(1), phi.transpose(-1, -2) @ prefix_value


@register(kind="adapter", paper=_PAPER, year=2024, arxiv="2406.14036", code=_CODE,
          summary="attention over an infinite trainable prefix as phi(q)ᵀZ and phi(q)ᵀ|k| terms added to softmax "
                  "attention's numerator and normaliser: d² + d parameters per head",
          aliases=("ntk-attention", "ntk-attn"))
class NTKAttention(nn.Module):
    """NTK-Attention's trainable state for one attention layer (arXiv 2406.14036), applied to given queries,
    keys and values: ``forward(query, key, value)`` is :func:`ntk_attn` with this module's ``phi_k``
    ``[H, d]`` and ``phi_kv`` ``[H, d, d]`` (``d² + d`` parameters per head), zeros at start as the authors'
    layers (the output then equals softmax attention). Drop it into an attention layer in place of
    ``softmax(QKᵀ/√d)V`` and train only these two parameters (with the layer's projections frozen).

    ``feature_dropout`` drops entries of ``φ(q)`` in training mode (the authors' ViT script uses 0.2).
    :meth:`from_prefix` starts from an explicit prefix's :func:`ntk_prefix_state`.
    """

    def __init__(self, num_heads: int, head_dim: int, *, causal: bool = True, feature_dropout: float = 0.0,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.num_heads = check_int("num_heads", num_heads, 1)
        self.head_dim = check_int("head_dim", head_dim, 1)
        self.causal = check_bool("causal", causal)
        self.feature_dropout = check_real("feature_dropout", feature_dropout, 0.0, 1.0, hi_open=True)
        kw = {"device": device, "dtype": dtype}
        self.phi_k = nn.Parameter(torch.zeros(num_heads, head_dim, **kw))
        self.phi_kv = nn.Parameter(torch.zeros(num_heads, head_dim, head_dim, **kw))

    @classmethod
    def from_prefix(cls, prefix_key: torch.Tensor, prefix_value: torch.Tensor, **kw) -> "NTKAttention":
        """A layer whose ``(phi_k, phi_kv)`` are :func:`ntk_prefix_state` of ``[H, m, d]`` prefix keys/values."""
        k, z = ntk_prefix_state(prefix_key, prefix_value)
        layer = cls(k.shape[0], k.shape[1], device=k.device, dtype=k.dtype, **kw)
        with torch.no_grad():
            layer.phi_k.copy_(k)
            layer.phi_kv.copy_(z)
        return layer

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        _check_qkv(query, key, value)
        if query.shape[1] != self.num_heads or query.shape[-1] != self.head_dim:
            raise ValueError(f"query must have {self.num_heads} heads of dimension {self.head_dim}, got "
                             f"{tuple(query.shape)}")
        return _ntk(query, key, value, self.phi_k.unsqueeze(-1), self.phi_kv, self.causal,
                    self.feature_dropout if self.training else 0.0)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, head_dim={self.head_dim}, causal={self.causal}, "
                f"feature_dropout={self.feature_dropout}")
