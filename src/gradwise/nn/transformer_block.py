"""A transformer block with the normalization placement as a switch: Pre-LN, Post-LN or Peri-LN (Kim et al. 2025)."""
from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_bool, check_choice, check_int, check_real
from gradwise.registry import register

__all__ = ["TransformerBlock", "NORM_PLACEMENTS", "make_norm"]

#: The three placements :class:`TransformerBlock` takes for ``norm``.
NORM_PLACEMENTS = ("pre", "post", "peri")
_NORM_NAMES = {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm}
_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


def make_norm(norm_layer: str | Callable[[int], nn.Module], d_model: int) -> nn.Module:
    """One normalization layer over ``d_model`` features: ``norm_layer`` is ``"layernorm"``, ``"rmsnorm"``
    or a callable ``d_model -> nn.Module`` (``nn.LayerNorm``, ``nn.RMSNorm``, a ``functools.partial`` of either)."""
    if isinstance(norm_layer, str):
        check_choice("norm_layer", norm_layer, tuple(_NORM_NAMES))
        return _NORM_NAMES[norm_layer](d_model)
    if not callable(norm_layer):
        raise ValueError(f"Invalid norm_layer: {norm_layer!r} (accepted: 'layernorm', 'rmsnorm' or a callable "
                         "d_model -> nn.Module such as nn.LayerNorm or nn.RMSNorm)")
    layer = norm_layer(d_model)
    if not isinstance(layer, nn.Module):
        raise ValueError(f"Invalid norm_layer: {norm_layer!r} returned {type(layer).__name__} "
                         "(accepted: a callable d_model -> nn.Module)")
    return layer


class _SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection laid out as ``nn.MultiheadAttention``'s
    ``in_proj`` (rows q, k, v), optional qk-layernorm, scaled dot-product attention, and an output projection."""

    def __init__(self, d_model: int, n_heads: int, attn_dropout: float, causal: bool, bias: bool,
                 qk_norm: bool = False) -> None:
        super().__init__()
        self.n_heads, self.attn_dropout, self.causal = n_heads, attn_dropout, causal
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)
        dh = d_model // n_heads
        # qk-layernorm as gradwise.nn.QKNormAttention does it: one LN over each head's d_h features for the
        # queries, one for the keys, scale shared across heads, no bias, eps 1e-6 (see that class for why)
        self.q_norm = nn.LayerNorm(dh, eps=1e-6, bias=False) if qk_norm else None
        self.k_norm = nn.LayerNorm(dh, eps=1e-6, bias=False) if qk_norm else None

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def project_qk(self, query: Tensor, key: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-head ``(q, k)`` [B, H, L, d_h] (after qk-layernorm if any, before the 1/sqrt(d_h) scale): the
        protocol :class:`gradwise.metrics.AttentionLogitMonitor` reads. Self-attention: ``key`` is ignored."""
        q, k, _ = self._qkv(query)
        return q, k

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self._qkv(x)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0,
                                           is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class _MLP(nn.Module):
    """``W2 act(W1 x + b1) + b2``."""

    def __init__(self, d_model: int, d_ff: int, activation: str, bias: bool) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff, bias=bias), nn.Linear(d_ff, d_model, bias=bias)
        self.act = _ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


@register(kind="module", paper="Peri-LN: Revisiting Layer Normalization in the Transformer Architecture",
          year=2025, arxiv="2502.02732", code=None, name="PeriLN",
          summary="transformer block with the norm placement as a switch: Pre-LN, Post-LN, or Peri-LN "
                  "(a norm on each sub-layer's input and on its output, before the residual add)")
class TransformerBlock(nn.Module):
    r"""A transformer block (self-attention, then an MLP) whose normalization placement is ``norm``.

    Paper: Jeonghoon Kim, Byeongchan Lee, Cheonbok Park, Yeontaek Oh, Beomjun Kim, Taehwan Yoo,
    Seongjin Shin, Dongyoon Han, Jinwoo Shin, Kang Min Yoo, "Peri-LN: Revisiting Layer Normalization
    in the Transformer Architecture" (ICML 2025 title: "Peri-LN: Revisiting Normalization Layer in the
    Transformer Architecture"), arXiv 2502.02732 (2025). No official code released (the paper names
    Megatron-LM as its training framework, without its modification).

    With :math:`x_l` the hidden state entering a sub-layer, :math:`\mathrm{Module}` the attention or the MLP
    and :math:`\mathrm{Norm}` a LayerNorm or RMSNorm (``norm_layer``; each placement has its own learnable
    scale), the paper's placements (its Figure 2: A = sub-layer input, B = sub-layer output,
    C = after the residual addition) are

    * ``"post"`` (C; Vaswani et al. 2017): :math:`x_{l+1} = \mathrm{Norm}\bigl(x_l + \mathrm{Module}(x_l)\bigr)`;
    * ``"pre"`` (A; Xiong et al. 2020): :math:`x_{l+1} = x_l + \mathrm{Module}\bigl(\mathrm{Norm}(x_l)\bigr)`;
    * ``"peri"`` (A and B, the paper's Peri-LN):
      :math:`x_{l+1} = x_l + \mathrm{Norm}_\text{out}\bigl(\mathrm{Module}(\mathrm{Norm}_\text{in}(x_l))\bigr)`:
      the output norm sits on the sub-layer's branch, before the addition, so the residual path stays
      an identity (Gemma 2 and OLMo 2 normalize sub-layer outputs this way).

    A block applies its placement twice, attention then MLP. The attention is multi-head scaled
    dot-product self-attention (causal when ``causal``) with a fused q/k/v projection laid out as
    ``nn.MultiheadAttention``'s ``in_proj``; the MLP is :math:`W_2\,\mathrm{act}(W_1 x + b_1) + b_2`.
    With ``norm="pre"`` or ``"post"``, ``activation="relu"`` and no dropout the block computes what
    ``nn.TransformerEncoderLayer(norm_first=norm == "pre")`` computes (a test checks it).

    ``qk_norm=True`` adds qk-layernorm (Wortsman et al., "Small-scale proxies for large-scale Transformer
    training instabilities", arXiv 2309.14322, §3.1.1, after Dehghani et al. 2023) to the attention: a
    LayerNorm over each head's :math:`d_h` features of the queries and of the keys before their dot
    product, exactly as :class:`~gradwise.nn.QKNormAttention` does it (scale shared across heads, no bias,
    ``eps=1e-6``; a test checks the two agree). ``block.attn.project_qk(x, x)`` returns the per-head
    queries and keys, so :class:`~gradwise.metrics.AttentionLogitMonitor` records the block's attention
    logits (causal ones: the future is left out).

    Checked against (2025-issue 10 review): the paper's full method section was again not readable in
    this project's search store (the ``pages`` corpus holds the arXiv HTML's abstract and introduction,
    the ICML poster text and third-party overviews). What those pages state and this block follows:
    Peri-LN "places normalization layer peripherally around sublayers", normalizing "both sub-layer
    inputs and outputs", i.e. positions A and B of the paper's Figure 2 (C, after the residual addition,
    is Post-LN's). One third-party review (jaehun.me) describes the output norm as sitting *after* the
    residual addition; that contradicts both the overview of Figure 2 and the same review's own variance
    recursion :math:`\mathrm{Var}(x_{l+1}) \approx \mathrm{Var}(x_l) + \beta_0` (a norm after the addition would
    keep the variance at 1), so the block keeps the output norm on the branch, before the addition, as
    Gemma 2 and OLMo 2 do; a test checks the residual path is an identity.

    Attributes: ``attn``, ``mlp``, and the norms ``attn_in_norm``/``mlp_in_norm`` (A),
    ``attn_out_norm``/``mlp_out_norm`` (B), ``attn_res_norm``/``mlp_res_norm`` (C), ``None`` where
    the placement has none.

    Departures: ``dropout`` (the paper's recipe does not use dropout; 0 by default) acts on each
    branch just before the residual addition: :math:`x + \mathrm{drop}(\cdot)` for pre and peri (after the
    output norm), :math:`\mathrm{Norm}(x + \mathrm{drop}(\mathrm{Module}(x)))` for post. ``attn_dropout``
    acts on the attention weights. Positional information is left to the model around the block
    (:class:`~gradwise.nn.TransformerLM` adds learned positions to the embeddings); the paper's
    embedding and final norms are placed by that model, not by the block.

    Example::

        >>> block = TransformerBlock(64, 4, 256, norm="peri", norm_layer=nn.RMSNorm)
        >>> y = block(torch.randn(2, 16, 64))        # [batch, seq, d_model]
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, norm: str = "peri",
                 norm_layer: str | Callable[[int], nn.Module] = nn.LayerNorm, dropout: float = 0.0,
                 attn_dropout: float = 0.0, causal: bool = True, activation: str = "gelu",
                 bias: bool = True, qk_norm: bool = False) -> None:
        super().__init__()
        check_int("d_model", d_model, lo=1)
        check_int("n_heads", n_heads, lo=1)
        if d_model % n_heads:
            raise ValueError(f"Invalid n_heads: {n_heads} (accepted: a divisor of d_model={d_model})")
        check_int("d_ff", d_ff, lo=1)
        check_choice("norm", norm, NORM_PLACEMENTS)
        check_real("dropout", dropout, 0.0, 1.0, hi_open=True)
        check_real("attn_dropout", attn_dropout, 0.0, 1.0, hi_open=True)
        check_bool("causal", causal)
        check_choice("activation", activation, tuple(_ACTIVATIONS))
        check_bool("bias", bias)
        check_bool("qk_norm", qk_norm)
        self.d_model, self.n_heads, self.d_ff, self.norm = d_model, n_heads, d_ff, norm
        self.causal, self.activation, self.qk_norm = causal, activation, qk_norm
        self.attn = _SelfAttention(d_model, n_heads, float(attn_dropout), causal, bias, qk_norm)
        self.mlp = _MLP(d_model, d_ff, activation, bias)
        self.dropout = nn.Dropout(dropout)
        has_in, has_out, has_res = norm in ("pre", "peri"), norm == "peri", norm == "post"
        for sub in ("attn", "mlp"):
            setattr(self, f"{sub}_in_norm", make_norm(norm_layer, d_model) if has_in else None)
            setattr(self, f"{sub}_out_norm", make_norm(norm_layer, d_model) if has_out else None)
            setattr(self, f"{sub}_res_norm", make_norm(norm_layer, d_model) if has_res else None)

    @staticmethod
    def _sublayer(x: Tensor, module: nn.Module, norm_in: nn.Module | None, norm_out: nn.Module | None,
                  norm_res: nn.Module | None, drop: nn.Module) -> Tensor:
        h = module(x if norm_in is None else norm_in(x))
        if norm_out is not None:
            h = norm_out(h)
        y = x + drop(h)
        return y if norm_res is None else norm_res(y)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[batch, seq, d_model]``; returns the same shape."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"Invalid x: shape {tuple(x.shape)} (accepted: [batch, seq, {self.d_model}])")
        x = self._sublayer(x, self.attn, self.attn_in_norm, self.attn_out_norm, self.attn_res_norm, self.dropout)
        return self._sublayer(x, self.mlp, self.mlp_in_norm, self.mlp_out_norm, self.mlp_res_norm, self.dropout)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, d_ff={self.d_ff}, norm={self.norm!r}, "
                f"causal={self.causal}, activation={self.activation!r}, qk_norm={self.qk_norm}")
