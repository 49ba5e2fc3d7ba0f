"""Block-wise dynamic quantization against bitsandbytes 0.50.2's CPU kernels, run live in this process."""
import pytest
import torch

from gradwise.optim.quantization import dequantize_blockwise, dynamic_map, quantization_lut, quantize_blockwise

F = pytest.importorskip("bitsandbytes.functional")


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_equals_bitsandbytes(signed):
    ours, ref = dynamic_map(signed), F.create_dynamic_map(signed)
    assert ours.dtype == torch.float32 and ours.shape == (256,)
    assert torch.equal(ours, ref)
    assert bool((ours[1:] > ours[:-1]).all())  # 256 distinct sorted values
    assert ours[-1] == 1.0 and (ours == 0).sum() == 1
    if signed:
        assert (ours < 0).sum() == 127 and (ours > 0).sum() == 128
    else:
        assert (ours < 0).sum() == 0


@pytest.mark.parametrize("exp_bits,total", [(5, 8), (4, 6), (3, 4), (1, 2)])
def test_dynamic_map_other_widths_equal_bitsandbytes(exp_bits, total):
    assert torch.equal(dynamic_map(True, max_exponent_bits=exp_bits, total_bits=total),
                       F.create_dynamic_map(True, exp_bits, total))


def _inputs():
    g = torch.Generator().manual_seed(0)
    n = 3 * 256 + 77  # a ragged last block
    wide = torch.randn(n, generator=g) * torch.exp(3 * torch.randn(n, generator=g))  # magnitudes over ~8 decades
    cases = {
        "normal": torch.randn(4, 256, generator=g),
        "wide": wide,
        "negative": -wide.abs(),
        "nonneg": wide.abs(),
        "huge": wide * 1e30,
        "tiny": wide * 1e-30,
        "zeros": torch.zeros(600),
        "zero_block": torch.cat([torch.zeros(256), torch.randn(100, generator=g)]),
        "one": torch.tensor([3.5]),
        "specials": torch.cat([torch.tensor([float("nan"), float("inf"), -float("inf"), 2.0]),
                               torch.randn(300, generator=g)]),
        "grid": torch.linspace(-1, 1, 2 ** 18 + 1),  # every grid point of the kernel and the values between
    }
    return cases


@pytest.mark.parametrize("case", sorted(_inputs()))
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("block_size", [256, 64, 4096])
def test_quantize_equals_bitsandbytes_cpu(case, signed, block_size):
    x = _inputs()[case]
    code = dynamic_map(signed)
    ref_codes, state = F.quantize_blockwise(x, code=code.clone(), blocksize=block_size)
    codes, absmax = quantize_blockwise(x, code, block_size=block_size)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert absmax.dtype == torch.float32 and absmax.shape == (-(-x.numel() // block_size),)
    assert torch.equal(absmax, state.absmax)
    assert torch.equal(codes, ref_codes), int((codes != ref_codes).sum())
    ref = F.dequantize_blockwise(ref_codes, absmax=state.absmax, code=code.clone(), blocksize=block_size)
    ours = dequantize_blockwise(codes, absmax, code, block_size=block_size)
    assert torch.equal(ours.nan_to_num(), ref.nan_to_num())


def test_quantize_other_dtypes_and_shapes():
    x = torch.randn(5, 7, 300, dtype=torch.float64)
    codes, absmax = quantize_blockwise(x)
    ref_codes, state = F.quantize_blockwise(x.float(), blocksize=256)
    assert torch.equal(codes, ref_codes) and torch.equal(absmax, state.absmax)
    xb = x.to(torch.bfloat16)
    codes, absmax = quantize_blockwise(xb)
    ref_codes, state = F.quantize_blockwise(xb, blocksize=256)
    assert torch.equal(codes, ref_codes) and torch.equal(absmax, state.absmax)
    back = dequantize_blockwise(codes, absmax, dtype=torch.bfloat16)
    assert back.dtype == torch.bfloat16 and back.shape == x.shape


def test_round_trip_error_is_within_the_map_resolution():
    # a value's error is at most half the gap between its two neighbouring codes (times absmax), plus the
    # kernel's grid of 2/65535 (relative to absmax)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10 * 256, generator=g)
    codes, absmax = quantize_blockwise(x)
    back = dequantize_blockwise(codes, absmax)
    code = dynamic_map()
    n = (x.view(10, 256) / absmax[:, None]).reshape(-1)
    gap = torch.diff(code).max()
    assert ((back - x).abs().view(10, 256) <= (gap / 2 + 2 / 65535) * absmax[:, None] + 1e-7).all()
    # a block's positive maximum is exact (code 255 is 1.0); a negative one is not (the map stops at -0.993)
    pos = x.view(10, 256).amax(1) == absmax
    assert pos.any() and (~pos).any()
    assert torch.equal(back.view(10, 256).amax(1)[pos], absmax[pos])
    assert torch.allclose(back.view(10, 256).amin(1)[~pos], -0.993 * absmax[~pos], rtol=1e-3)
    assert (n.abs() <= 1).all()


def test_lut_is_nearest_code_on_the_grid():
    code = dynamic_map()
    lut = quantization_lut(code)
    points = -1.0 + 2.0 * torch.arange(65536, dtype=torch.float32) / 65535
    dist = (points[:, None] - code[None, :]).abs()
    best = dist.min(1).values
    assert torch.equal(dist[torch.arange(65536), lut.long()], best)


def test_bad_inputs_name_the_argument():
    x = torch.randn(10)
    with pytest.raises(TypeError, match="Invalid x"):
        quantize_blockwise(torch.arange(10))
    with pytest.raises(ValueError, match="Invalid block_size: 0"):
        quantize_blockwise(x, block_size=0)
    with pytest.raises(ValueError, match="Invalid code: shape \\(16,\\)"):
        quantize_blockwise(x, code=torch.zeros(16))
    codes, absmax = quantize_blockwise(x)
    with pytest.raises(TypeError, match="Invalid codes"):
        dequantize_blockwise(codes.float(), absmax)
    with pytest.raises(ValueError, match="Invalid absmax: shape \\(2,\\)"):
        dequantize_blockwise(codes, torch.zeros(2))
    with pytest.raises(TypeError, match="Invalid dtype"):
        dequantize_blockwise(codes, absmax, dtype=torch.int32)
    with pytest.raises(ValueError, match="Invalid total_bits: 9"):
        dynamic_map(total_bits=9)
    with pytest.raises(ValueError, match="Invalid max_exponent_bits: 8"):
        dynamic_map(max_exponent_bits=8)
    with pytest.raises(ValueError, match="Invalid max_exponent_bits: 5"):
        dynamic_map(False, max_exponent_bits=5)
    with pytest.raises(ValueError, match="Invalid signed"):
        dynamic_map(signed=1)
