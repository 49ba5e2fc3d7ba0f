"""Compressors on one process: Top-K keeps the largest entries and counts its bytes; PowerSGD's message count."""
import torch

from gradwise.distributed import NoCompression, TopK, powersgd_message_numel, topk_compress, topk_decompress


def test_topk_keeps_the_largest_magnitudes_and_decompresses():
    x = torch.tensor([0.1, -5.0, 2.0, 0.0, -3.0])
    vals, idx = topk_compress(x, 2)
    assert idx.dtype == torch.int32 and sorted(idx.tolist()) == [1, 4]
    assert topk_decompress(vals, idx, 5).tolist() == [0.0, -5.0, 0.0, 0.0, -3.0]


def test_topk_per_tensor_picks_within_each_tensor():
    flat = torch.tensor([9.0, 8.0, 7.0, 0.1, 0.2, 0.3])
    vals, idx = TopK(1 / 3, per="tensor").encode(flat, [3, 3])
    assert sorted(idx.tolist()) == [0, 5]
    vals, idx = TopK(1 / 3, per="bucket").encode(flat, [3, 3])
    assert sorted(idx.tolist()) == [0, 1]


def test_message_bytes():
    assert NoCompression().message_bytes(10, torch.float32) == 40
    assert TopK(0.1).message_bytes([100, 50], torch.float64) == 15 * 12
    assert TopK(0.001).message_bytes([10], torch.float32) == 8  # at least one entry
    # 64x32 at rank 4 compressed: (64+32)*4; a bias (n x 1) is never worth compressing
    assert powersgd_message_numel([(64, 32), (64,)], 4) == 96 * 4 + 64
    assert powersgd_message_numel([(8, 8)], 4) == 64  # (8+8)*4*2 >= 64: sent dense
    assert powersgd_message_numel([(64, 32), (16, 16)], [1, 2]) == 96 + 64
