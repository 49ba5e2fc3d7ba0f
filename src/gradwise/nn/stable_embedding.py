"""The stable embedding layer of 8-bit Optimizers via Block-wise Quantization (Dettmers et al., 2021)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_int
from gradwise.registry import register

__all__ = ["StableEmbedding"]

# the parameter attribute gradwise's state codecs read (gradwise.optim.state_codecs.STATE_BITS_ATTR;
# nn may not import optim, tests/nn/test_stable_embedding.py checks the two agree)
_STATE_BITS_ATTR = "gradwise_state_bits"


@register(kind="module", paper="8-bit Optimizers via Block-wise Quantization", year=2022, arxiv="2110.02861",
          code="https://github.com/TimDettmers/bitsandbytes",
          summary="embedding with Xavier-uniform init and LayerNorm, its optimizer state kept 32-bit under 8-bit state")
class StableEmbedding(nn.Embedding):
    r"""An embedding with Xavier-uniform init and a LayerNorm after the lookup, its state kept in 32 bits.

    Paper: Dettmers, Lewis, Shleifer, Zettlemoyer, "8-bit Optimizers via
    Block-wise Quantization", ICLR 2022, arXiv 2110.02861 (the "stable
    embedding layer", which reduces the gradient variance that the very
    uneven token frequencies of language models give the embedding).
    Reference code: bitsandbytes 0.50.2, ``bnb.nn.StableEmbedding``; the
    paper's section on the layer could not be read here (only its abstract),
    so this follows the reference code::

        W ~ U(-a, a),  a = sqrt(6 / (num_embeddings + embedding_dim))     (Xavier uniform)
        W[padding_idx] = 0                                                (when given)
        y = LayerNorm(W[x])    computed in torch's default dtype, returned in W's dtype

    and the weight's optimizer state stays in full precision under an
    8-bit (or 16-bit) state codec: the weight carries
    ``gradwise_state_bits = 32``, which every gradwise state codec honours
    (``gradwise.optim.keep_32bit_state``; bitsandbytes registers a
    ``GlobalOptimManager`` override ``optim_bits=32`` for it instead). The
    LayerNorm's weight and bias are small, so ``state_bits=8`` keeps their
    state 32-bit anyway (fewer than 4096 entries, unless
    ``embedding_dim >= 4096``). The arguments are ``torch.nn.Embedding``'s.

    Example::

        emb = StableEmbedding(50_000, 512)
        opt = gradwise.optim.AdamW(model.parameters(), lr=1e-3, state_bits=8)  # emb.weight: 32-bit state
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 max_norm: float | None = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 sparse: bool = False, _weight: Tensor | None = None, device=None, dtype=None) -> None:
        check_int("num_embeddings", num_embeddings, 1)
        check_int("embedding_dim", embedding_dim, 1)
        super().__init__(num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq,
                         sparse, _weight, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(embedding_dim, device=device)
        setattr(self.weight, _STATE_BITS_ATTR, 32)

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        self._fill_padding_idx_with_zero()

    def forward(self, input: Tensor) -> Tensor:
        emb = F.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                          self.scale_grad_by_freq, self.sparse)
        # the normalization runs in full precision (torch's default dtype), as the reference does
        return self.norm(emb.to(torch.get_default_dtype())).to(self.weight.dtype)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        # a replaced Parameter (e.g. .to() of a non-float conversion) must keep the mark
        setattr(self.weight, _STATE_BITS_ATTR, 32)
        return out
