"""A small causal language model of :class:`~gradwise.nn.TransformerBlock` s, with the embedding and final norms
each placement takes (Peri-LN, Kim et al. 2025)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from gradwise._validate import check_bool, check_choice, check_int, check_real
from gradwise.nn.transformer_block import NORM_PLACEMENTS, TransformerBlock, make_norm

__all__ = ["TransformerLM", "EMBED_NORM_DEFAULT", "FINAL_NORM_DEFAULT"]

#: Whether :class:`TransformerLM` normalizes the embeddings (``embed_norm=None``), per placement.
EMBED_NORM_DEFAULT = {"pre": False, "post": False, "peri": True}
#: Whether :class:`TransformerLM` normalizes the last hidden state before the head (``final_norm=None``).
FINAL_NORM_DEFAULT = {"pre": True, "post": False, "peri": True}


class TransformerLM(nn.Module):
    r"""Token embedding, ``n_layers`` :class:`~gradwise.nn.TransformerBlock` s, a final norm and a linear LM head.

    Paper: Kim et al., "Peri-LN: Revisiting Layer Normalization in the Transformer Architecture",
    arXiv 2502.02732 (2025); no official code released. Small enough for a CPU (the arena's
    LR-sensitivity study trains a character-level one).

    .. math::

        x_0 = E[\text{ids}] + P[\text{positions}], \quad
        x_0 \leftarrow \mathrm{Norm}_\text{emb}(x_0)\ \text{(if embed\_norm)}, \quad
        x_{l+1} = \mathrm{Block}_l(x_l), \quad
        \text{logits} = W_\text{head}\,\mathrm{Norm}_\text{final}(x_L)\ \text{(the norm if final\_norm)}.

    Embedding and final norms per placement (``embed_norm=None``/``final_norm=None``; each overridable):

    * ``"peri"``: embedding norm **on** (the paper's Peri-LN normalizes the embedding output,
      :math:`y_0 = \mathrm{Norm}(x_0)`, which it lists as optional, so ``embed_norm=False`` turns it
      off), final norm **on** (:math:`\mathrm{Norm}(x_L)` before the head);
    * ``"pre"``: embedding norm off, final norm on: the Pre-LN stack's residual stream is never
      normalized inside the blocks, so the head needs one (Xiong et al. 2020; GPT-2);
    * ``"post"``: embedding norm off, final norm off: every Post-LN block already ends in a norm,
      :math:`x_L = \mathrm{Norm}(\cdot)` (Vaswani et al. 2017; Xiong et al. 2020's Post-LN).

    ``qk_norm=True`` gives every block qk-layernorm (see :class:`~gradwise.nn.TransformerBlock`; Wortsman et
    al., arXiv 2309.14322, §3.1.1), the configuration the arena's ``lr-sensitivity`` study compares.

    Not verified: the paper's text on the embedding and final norms (its method section was not readable
    in this project's search store; only the abstract, introduction and overviews were), so the per-placement
    defaults below are our reading of common practice, not a checked transcription.

    Departures and choices the paper leaves open: learned absolute position embeddings (``max_seq_len``
    of them) rather than the rotary embeddings of the paper's Megatron-LM models, so a tiny model
    needs no extra machinery; weights :math:`\mathcal N(0, 0.02^2)`, biases zero, norms at scale 1
    (``init_std``); ``dropout`` also acts on the embedding sum; the head is untied unless ``tie_weights``.

    Example::

        >>> lm = TransformerLM(vocab_size=65, d_model=64, n_heads=4, n_layers=4, max_seq_len=128, norm="peri")
        >>> logits = lm(torch.randint(0, 65, (8, 128)))     # [8, 128, 65]
    """

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, n_layers: int, max_seq_len: int,
                 d_ff: int | None = None, norm: str = "peri",
                 norm_layer: str | Callable[[int], nn.Module] = nn.LayerNorm, dropout: float = 0.0,
                 embed_norm: bool | None = None, final_norm: bool | None = None, tie_weights: bool = False,
                 activation: str = "gelu", bias: bool = True, init_std: float = 0.02, qk_norm: bool = False) -> None:
        super().__init__()
        check_int("vocab_size", vocab_size, lo=1)
        check_int("n_layers", n_layers, lo=1)
        check_int("max_seq_len", max_seq_len, lo=1)
        check_choice("norm", norm, NORM_PLACEMENTS)
        d_ff = 4 * d_model if d_ff is None else d_ff
        embed_norm = EMBED_NORM_DEFAULT[norm] if embed_norm is None else check_bool("embed_norm", embed_norm)
        final_norm = FINAL_NORM_DEFAULT[norm] if final_norm is None else check_bool("final_norm", final_norm)
        check_bool("tie_weights", tie_weights)
        self.init_std = check_real("init_std", init_std, 0.0, lo_open=True)
        self.vocab_size, self.max_seq_len, self.norm = vocab_size, max_seq_len, norm
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, d_ff, norm=norm, norm_layer=norm_layer,
                                                     dropout=dropout, causal=True, activation=activation, bias=bias,
                                                     qk_norm=qk_norm)
                                    for _ in range(n_layers))
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_seq_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.embed_norm = make_norm(norm_layer, d_model) if embed_norm else None
        self.final_norm = make_norm(norm_layer, d_model) if final_norm else None
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.reset_parameters()
        if tie_weights:
            self.head.weight = self.tok_emb.weight

    def reset_parameters(self) -> None:
        """Linear and embedding weights :math:`\\mathcal N(0, \\text{init\\_std}^2)`, biases 0, norms reset."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, self.init_std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif m is not self and hasattr(m, "reset_parameters") and not list(m.children()):
                m.reset_parameters()

    def embed(self, ids: Tensor) -> Tensor:
        """:math:`x_0`: embeddings plus positions, dropout, then the embedding norm if there is one."""
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"Invalid ids: {ids.dtype} tensor of shape {tuple(ids.shape)} "
                             "(accepted: integer token ids of shape [batch, seq])")
        if ids.shape[1] > self.max_seq_len:
            raise ValueError(f"Invalid ids: sequence length {ids.shape[1]} "
                             f"(accepted: at most max_seq_len={self.max_seq_len})")
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.drop(self.tok_emb(ids) + self.pos_emb(pos))
        return x if self.embed_norm is None else self.embed_norm(x)

    def forward(self, ids: Tensor) -> Tensor:
        """``ids``: ``[batch, seq]`` token ids; returns logits ``[batch, seq, vocab_size]``."""
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return self.head(x)
