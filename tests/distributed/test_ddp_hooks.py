"""The DDP hooks in real multi-process runs: 2 ranks (3 in a slow test) on gloo over localhost.

One spawn runs every configuration (starting a rank is mostly importing torch). Checked: no compression
equals plain DDP bit for bit; torch's PowerSGD and L-GreCo with its ranks held fixed agree bit for bit; a run
resumed from a checkpoint (model, optimizer, hook state with its error buffers) equals an uninterrupted one,
for Top-K with error feedback and for L-GreCo across rank searches; bytes sent per step equal a hand count.
"""
from __future__ import annotations

import pytest
import torch

from distributed.ddp_harness import HIDDEN, IN, OUT, run_ranks
from gradwise.distributed import CompressedAllreduceState, LGreCoState, TopK

LG = dict(matrix_approximation_rank=2, start_powerSGD_iter=2, adjust_freq=3, acc_iter=2)
CONFIGS = {
    "plain": dict(hook="plain", steps=4), "none": dict(hook="none", steps=4),
    "topk": dict(hook="topk", steps=6, ratio=0.1), "topk_resume": dict(hook="topk", steps=6, ratio=0.1, resume_at=3),
    "topk_noef": dict(hook="topk", steps=6, ratio=0.1, ef=False),
    "topk_tensor": dict(hook="topk", steps=3, ratio=0.1, per="tensor"),
    "powersgd": dict(hook="powersgd", steps=6, rank=2),
    "lgreco_fixed": dict(hook="lgreco", steps=6, kwargs=dict(LG, adjust_freq=10**6)),
    "lgreco": dict(hook="lgreco", steps=10, kwargs=LG),
    "lgreco_resume": dict(hook="lgreco", steps=10, resume_at=6, kwargs=LG),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_ranks(CONFIGS, 2, tmp_path_factory.mktemp("ddp"), timeout=240)


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_every_rank_holds_the_same_model(runs):
    for name in CONFIGS:
        assert same(runs[0][name]["params"], runs[1][name]["params"]), name


def test_no_compression_equals_plain_ddp_bit_for_bit(runs):
    assert same(runs[0]["none"]["params"], runs[0]["plain"]["params"])


def test_lgreco_with_fixed_ranks_is_torchs_powersgd_bit_for_bit(runs):
    assert same(runs[0]["lgreco_fixed"]["params"], runs[0]["powersgd"]["params"])


def test_compression_changes_training(runs):
    assert not same(runs[0]["topk"]["params"], runs[0]["plain"]["params"])
    assert not same(runs[0]["topk"]["params"], runs[0]["topk_noef"]["params"])  # error feedback acts
    assert runs[0]["lgreco"]["ranks"][0] != [2, 2]  # the rank search moved the ranks


def test_resumed_run_equals_uninterrupted_run(runs):
    assert same(runs[0]["topk_resume"]["params"], runs[0]["topk"]["params"])
    assert same(runs[0]["lgreco_resume"]["params"], runs[0]["lgreco"]["params"])
    assert runs[0]["lgreco_resume"]["ranks"] == runs[0]["lgreco"]["ranks"]
    assert runs[0]["lgreco_resume"]["bytes"] == runs[0]["lgreco"]["bytes"]


def test_bytes_per_step_match_a_hand_count(runs):
    shapes = [(OUT, HIDDEN), (HIDDEN, IN)]  # bucket order: output layer first
    dense = (OUT * HIDDEN + HIDDEN * IN) * 4
    assert runs[0]["plain"]["shapes"] == shapes
    assert runs[0]["none"]["bytes"] == [dense] * 4
    k = int(0.1 * (OUT * HIDDEN + HIDDEN * IN))  # 76 of 768 entries, 4-byte values and 4-byte indices
    assert runs[0]["topk"]["bytes"] == [dense] + [k * 8] * 5  # first step plain (start_iter=1)
    assert runs[0]["topk_tensor"]["bytes"] == [dense] + [(int(0.1 * 256) + int(0.1 * 512)) * 8] * 2
    psgd = ((OUT + HIDDEN) * 2 + (HIDDEN + IN) * 2) * 4
    assert runs[0]["powersgd"]["bytes"] == [dense, dense] + [psgd] * 4
    assert runs[0]["lgreco_fixed"]["bytes"] == runs[0]["powersgd"]["bytes"]
    r_out, r_in = runs[0]["lgreco"]["ranks"][0]
    assert runs[0]["lgreco"]["bytes"][-1] == ((OUT + HIDDEN) * min(OUT, r_out) + (HIDDEN + IN) * r_in) * 4


@pytest.mark.slow
def test_three_ranks_no_compression_equals_plain_ddp(tmp_path):
    # 3 workers: averaging by 1/3 rounds, so the order of scaling and summing must be DDP's own
    runs3 = run_ranks({"plain": dict(hook="plain", steps=4), "none": dict(hook="none", steps=4)}, 3, tmp_path,
                      timeout=300)
    for r in runs3:
        assert same(r["none"]["params"], r["plain"]["params"])


def test_states_bad_input():
    with pytest.raises(TypeError, match="compressor"):
        CompressedAllreduceState(compressor="topk")
    with pytest.raises(ValueError, match="start_iter"):
        CompressedAllreduceState(compressor=TopK(0.1), error_feedback=True, start_iter=0)
    with pytest.raises(ValueError, match="ratio"):
        TopK(0.0)
    with pytest.raises(ValueError, match="per"):
        TopK(0.1, per="layer")
    with pytest.raises(ValueError, match="start_powerSGD_iter"):
        LGreCoState(start_powerSGD_iter=1)
    with pytest.raises(ValueError, match="gamma/beta"):
        LGreCoState(matrix_approximation_rank=1, gamma=0.5)
    with pytest.raises(ValueError, match="error_method"):
        LGreCoState(matrix_approximation_rank=2, error_method="qr")
    with pytest.raises(ValueError, match="Invalid state"):
        LGreCoState(matrix_approximation_rank=2).load_state_dict({"iter": 0})
