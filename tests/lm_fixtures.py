"""Tiny token models shared by the preference trainer tests (no downloads, CPU, milliseconds)."""
from __future__ import annotations

import torch
from torch import nn


class TinyGRULM(nn.Module):
    """Embedding -> GRU -> (dropout) -> head: any model mapping token ids [B, T] to logits [B, T, V]."""

    def __init__(self, seed: int | None = None, *, vocab: int = 10, dim: int = 16, dropout: float = 0.0,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, dim, dtype=dtype)
        self.rnn = nn.GRU(dim, dim, batch_first=True, dtype=dtype)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, vocab, dtype=dtype)

    def forward(self, input_ids):
        h, _ = self.rnn(self.emb(input_ids))
        return self.head(self.drop(h))


class CountingLM(nn.Module):
    """Wraps a model and counts its forward calls and the rows they carried."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls, self.rows = inner, 0, 0

    def forward(self, input_ids):
        self.calls += 1
        self.rows += input_ids.shape[0]
        return self.inner(input_ids)
