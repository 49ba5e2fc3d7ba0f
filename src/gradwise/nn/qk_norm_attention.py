"""qk-layernorm (Dehghani et al., 2023; studied at small scale by Wortsman et al., 2023): multi-head attention
with a LayerNorm on each head's queries and keys before their dot product, a drop-in for
``nn.MultiheadAttention``'s call."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_bool, check_int, check_real, check_unit
from gradwise.registry import register

__all__ = ["QKNormAttention"]


def _additive_mask(attn_mask: Tensor | None, key_padding_mask: Tensor | None, is_causal: bool, b: int, h: int,
                   lq: int, lk: int, dtype: torch.dtype, device) -> Tensor | None:
    """One additive float mask [B or 1, H or 1, Lq, Lk] (``-inf`` where attention is not allowed) from
    ``nn.MultiheadAttention``'s mask arguments: bool masks are True where *not* allowed, float masks are added."""
    out = None

    def add(m):
        nonlocal out
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(m, float("-inf"))
        m = m.to(dtype)
        out = m if out is None else out + m

    if attn_mask is not None:
        if attn_mask.dim() == 2:
            if attn_mask.shape != (lq, lk):
                raise ValueError(f"Invalid attn_mask: expected shape ({lq}, {lk}) or ({b * h}, {lq}, {lk}), got "
                                 f"{tuple(attn_mask.shape)}")
            add(attn_mask[None, None])
        elif attn_mask.dim() == 3 and attn_mask.shape == (b * h, lq, lk):
            add(attn_mask.reshape(b, h, lq, lk))
        else:
            raise ValueError(f"Invalid attn_mask: expected shape ({lq}, {lk}) or ({b * h}, {lq}, {lk}), got "
                             f"{tuple(attn_mask.shape)}")
    elif is_causal:
        add(torch.ones(lq, lk, dtype=torch.bool, device=device).triu(1)[None, None])
    if key_padding_mask is not None:
        if key_padding_mask.shape != (b, lk):
            raise ValueError(f"Invalid key_padding_mask: expected shape ({b}, {lk}), got "
                             f"{tuple(key_padding_mask.shape)}")
        add(key_padding_mask[:, None, None, :])
    return out


@register(kind="module", paper="Small-scale proxies for large-scale Transformer training instabilities", year=2023,
          arxiv="2309.14322", code=None, aliases=("qk_layernorm",),
          summary="multi-head attention with LayerNorm on each head's queries and keys (qk-layernorm)")
class QKNormAttention(nn.Module):
    r"""Multi-head attention with qk-layernorm, called like ``nn.MultiheadAttention``.

    Paper: Wortsman et al., "Small-scale proxies for large-scale Transformer
    training instabilities", 2023, arXiv:2309.14322, §3.1.1 ("Attention logit
    growth"), after Dehghani et al., "Scaling Vision Transformers to 22
    Billion Parameters", 2023, arXiv:2302.05442. No official code for the
    layer; the authors' training code NanoDO
    (https://github.com/google-deepmind/nanodo, commit 10aefde) has the
    attention without it, whose conventions we follow (below).

    Math, per head ``h`` (``x W`` the projections, ``d_h`` the head width)::

        q_h = LN(x W^Q_h),   k_h = LN(x W^K_h),   v_h = x W^V_h
        z_ij = <q_h,i, k_h,j> / sqrt(d_h)                (the attention logits)
        out  = concat_h(softmax(z + mask) v_h) W^O

    ``LN`` normalizes over the head's ``d_h`` features (mean and variance of
    each query / key vector of each head) with a learnable scale of size
    ``d_h`` shared across heads (one LN for queries, one for keys). Without
    it the logits grow with the query/key weights at high learning rates and
    the attention collapses to one-hot (near-zero entropy); with it ``|z_ij|``
    is at most ``sqrt(d_h) * max|gamma_q| * max|gamma_k|``.

    The paper's full text was not readable in this project's search store
    (checked again for issue 10: the ``pages`` corpus holds the ar5iv/arXiv
    abstract and introduction and secondary notes quoting §3.1.1: "LayerNorm
    applied to the queries and keys", logits ``<q_i, k_j> / sqrt(d_h)``),
    and NanoDO at commit 10aefde (read, not run) has no qk-layernorm option
    at all, so the LN's details below are our choices.
    :class:`gradwise.nn.TransformerBlock` (``qk_norm=True``) uses the same LN. Choices where the papers leave room: ``eps=1e-6`` and no LN bias
    (``norm_bias=False``): Flax's LayerNorm default eps, and NanoDO's
    bias-free layernorms (after PaLM); Dehghani et al.'s LN on queries and
    keys is also bias-free. Set ``norm_bias=True``/``eps=1e-5`` for torch's
    LayerNorm defaults. Projections have biases (``bias=True``) as
    ``nn.MultiheadAttention`` does; the paper's models have none
    (``bias=False``).

    Drop-in: ``forward(query, key, value, key_padding_mask=None,
    need_weights=True, attn_mask=None, average_attn_weights=True,
    is_causal=False)`` returns ``(output, weights or None)`` with
    ``nn.MultiheadAttention``'s shapes, mask conventions (bool: True = not
    allowed; float: added) and ``batch_first``; :meth:`from_multihead_attention`
    copies an existing layer's projections. Not supported: ``add_bias_kv``,
    ``add_zero_attn``, unbatched inputs. ``is_causal`` builds a causal mask
    when ``attn_mask`` is None (with a mask given, the mask is used, as torch
    treats ``is_causal`` as a hint). Without ``need_weights`` it runs
    ``F.scaled_dot_product_attention``.

    :meth:`project_qk` returns the normalized per-head queries and keys, the
    protocol :class:`gradwise.metrics.AttentionLogitMonitor` reads.

    Example::

        >>> attn = QKNormAttention(64, 4, batch_first=True)
        >>> x = torch.randn(2, 10, 64)
        >>> out, _ = attn(x, x, x, need_weights=False, is_causal=True)
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None, batch_first: bool = False, *,
                 eps: float = 1e-6, norm_affine: bool = True, norm_bias: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        check_int("embed_dim", embed_dim, 1)
        check_int("num_heads", num_heads, 1)
        if embed_dim % num_heads:
            raise ValueError(f"Invalid num_heads: {num_heads} (accepted: a divisor of embed_dim={embed_dim})")
        check_unit("dropout", dropout)
        check_real("eps", eps, 0.0, lo_open=True)
        for name, v in (("bias", bias), ("batch_first", batch_first), ("norm_affine", norm_affine),
                        ("norm_bias", norm_bias)):
            check_bool(name, v)
        kdim = embed_dim if kdim is None else check_int("kdim", kdim, 1)
        vdim = embed_dim if vdim is None else check_int("vdim", vdim, 1)
        kw = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim, self.dropout, self.batch_first = kdim, vdim, float(dropout), batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.k_proj = nn.Linear(kdim, embed_dim, bias=bias, **kw)
        self.v_proj = nn.Linear(vdim, embed_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=eps, elementwise_affine=norm_affine,
                                   bias=norm_bias and norm_affine, **kw)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=eps, elementwise_affine=norm_affine,
                                   bias=norm_bias and norm_affine, **kw)

    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention, **kwargs) -> QKNormAttention:
        """A ``QKNormAttention`` with ``mha``'s sizes, ``batch_first``, dropout and projection weights (the LNs
        start at scale 1, so the outputs differ: the queries and keys are now normalized)."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise ValueError(f"Invalid mha: {type(mha).__name__} (accepted: an nn.MultiheadAttention)")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("Invalid mha: add_bias_kv and add_zero_attn are not supported (accepted: neither set)")
        p = mha.out_proj.weight
        new = cls(mha.embed_dim, mha.num_heads, mha.dropout, mha.in_proj_bias is not None, mha.kdim, mha.vdim,
                  mha.batch_first, device=p.device, dtype=p.dtype, **kwargs)
        e = mha.embed_dim
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                wq, wk, wv = mha.in_proj_weight.split(e)
            else:
                wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            for lin, w in zip((new.q_proj, new.k_proj, new.v_proj), (wq, wk, wv)):
                lin.weight.copy_(w)
            if mha.in_proj_bias is not None:
                for lin, b in zip((new.q_proj, new.k_proj, new.v_proj), mha.in_proj_bias.split(e)):
                    lin.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None and new.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new

    def _batch_major(self, x: Tensor, name: str, width: int) -> Tensor:
        if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() != 3 or x.shape[-1] != width:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            order = "(N, L, E)" if self.batch_first else "(L, N, E)"
            raise ValueError(f"Invalid {name}: expected a floating-point tensor of shape {order} with E={width}, "
                             f"got {got}")
        return x if self.batch_first else x.transpose(0, 1)

    def _heads(self, x: Tensor) -> Tensor:  # [B, L, E] -> [B, H, L, Dh]
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def project_qk(self, query: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
        """The normalized queries and keys ``(q, k)``, each [B, H, L, d_h], before the ``1/sqrt(d_h)`` scale:
        the attention logits are ``q @ k^T / sqrt(d_h)``. ``query``/``key`` as :meth:`forward` takes them."""
        q = self._batch_major(query, "query", self.embed_dim)
        k = self._batch_major(key, "key", self.kdim)
        return self.q_norm(self._heads(self.q_proj(q))), self.k_norm(self._heads(self.k_proj(k)))

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        q, k = self.project_qk(query, key)
        v = self._heads(self.v_proj(self._batch_major(value, "value", self.vdim)))
        b, h, lq, _ = q.shape
        lk = k.shape[2]
        if v.shape[0] != b or v.shape[2] != lk or k.shape[0] != b:
            raise ValueError(f"Invalid value: expected batch {b} and length {lk} to match key, got "
                             f"{tuple(value.shape)}")
        mask = _additive_mask(attn_mask, key_padding_mask, is_causal, b, h, lq, lk, q.dtype, q.device)
        p = self.dropout if self.training else 0.0
        if need_weights:
            z = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            w = torch.softmax(z if mask is None else z + mask, dim=-1)
            out = F.dropout(w, p, training=self.training) @ v
            weights = w.mean(1) if average_attn_weights else w
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            weights = None
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        return (out if self.batch_first else out.transpose(0, 1)), weights
