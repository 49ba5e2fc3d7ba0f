"""The powernorm study's pieces at a tiny size: the task's labels, the masked BatchNorm baseline, a run of each
norm, the config check. (Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses
import math

import pytest
import torch

from gradwise.arena import powernorm_study as ps
from gradwise.arena.study import UsageError

TINY = dataclasses.replace(ps.Config(), max_len=6, min_len=2, d_model=8, heads=2, layers=1, d_ff=8, batch_size=4,
                           steps=4, warmup=2, eval_every=2, eval_batches=2, seeds=1)


def test_labels_count_each_token_in_its_unpadded_sequence():
    tokens, labels, pad = ps.make_batch(TINY, 16, torch.Generator().manual_seed(0))
    lengths = (~pad).sum(1)
    assert lengths.min() >= TINY.min_len and lengths.max() <= TINY.max_len
    assert (tokens[pad] == TINY.vocab).all() and (labels[pad] == -100).all()
    for b in range(16):
        seq = tokens[b, : lengths[b]].tolist()
        assert labels[b, : lengths[b]].tolist() == [min(seq.count(t), TINY.classes) - 1 for t in seq]


@pytest.mark.parametrize("method", ps.METHODS)
def test_each_norm_trains_and_reports(method):
    row = ps.run_one(TINY, method, seed=0)
    assert 0 <= row["eval_acc"] <= 1 and 0 <= row["train_acc"] <= 1 and math.isfinite(row["train_loss"])
    assert [s for s, _ in row["curve"]] == [2, 4] and len(row["losses"]) == TINY.steps
    assert (row["fluctuation"] is None) == (method == "layernorm")


def test_padding_does_not_reach_real_tokens_in_training():
    """The norms see padding only as the masks say: changing the padded tokens changes no real token's output."""
    for method in ps.METHODS:
        torch.manual_seed(0)
        model = ps.build_model(TINY, method)
        tokens, _, pad = ps.make_batch(TINY, 4, torch.Generator().manual_seed(1))
        other = tokens.masked_fill(pad, 0)
        a, b = model(tokens, pad), model(other, pad)
        torch.testing.assert_close(a[~pad], b[~pad], msg=method)


def test_min_len_above_max_len_is_refused():
    with pytest.raises(UsageError, match="Invalid --min-len"):
        ps.STUDY.setup(dataclasses.replace(TINY, min_len=7), ps.METHODS)
