"""LongSkipScaling (ScaleLong): the skips the authors' UViT hands its decoder blocks, for each mode, and the
gradients through their LS calibration module (golden data from sail-sg/ScaleLong@4ca368c)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gradwise.nn import LongSkipScaling, SkipCalibration
from numerics import assert_close_to_stored

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "scalelong_golden.pt"
MODE_OF = {0: "none", 1: "sqrt2", 2: "cs", 3: "ls", 4: "ls"}


def _cases():
    return torch.load(GOLDEN, weights_only=True)["cases"]


def _ours(case):
    n = len(case["skips"])
    mode = MODE_OF[case["mode"]]
    features = case["skips"][0].shape[1]
    ours = LongSkipScaling(n, features=features if mode == "ls" else None, mode=mode, kappa=case["kappa"],
                           share=case["mode"] != 4)
    if case["mode"] == 3:
        ours.calibration[0].load_state_dict(case["se_state"])
    elif case["mode"] == 4:  # their se[k] serves decoder step k, i.e. encoder skip n-1-k
        for k in range(n):
            ours.calibration[n - 1 - k].load_state_dict(
                {name.split(".", 1)[1]: v for name, v in case["se_state"].items() if name.startswith(f"{k}.")})
    return ours


@pytest.mark.numerics
@pytest.mark.parametrize("idx", range(6))
def test_matches_the_skips_their_uvit_passes_to_its_decoder(idx):
    case = _cases()[idx]
    ours = _ours(case)
    scaled = ours(case["skips"])
    for k, got in enumerate(case["scaled"]):  # their decoder order: deepest skip first
        assert_close_to_stored(scaled[len(scaled) - 1 - k].detach(), got)
        assert_close_to_stored(ours(case["skips"][len(scaled) - 1 - k], index=len(scaled) - 1 - k).detach(), got)


@pytest.mark.numerics
@pytest.mark.parametrize("idx", [4, 5])
def test_ls_gradients_match_their_calibration_module(idx):
    case = _cases()[idx]
    ours = _ours(case)
    n = len(case["skips"])
    leaves = [s.clone().requires_grad_(True) for s in case["skips"]]
    out = ours(leaves)
    loss = sum((out[n - 1 - k] * w).sum() for k, w in enumerate(case["weights"]))
    params = dict(ours.named_parameters())
    grads = torch.autograd.grad(loss, leaves + list(params.values()))
    for g, want in zip(grads[:n], case["grad_skips"]):
        assert_close_to_stored(g, want, ulps=64)
    got = dict(zip(params, grads[n:]))
    for name, want in case["grad_params"].items():
        if case["mode"] == 3:
            mine = got[f"calibration.0.{name}"]
        else:
            k, rest = name.split(".", 1)
            mine = got[f"calibration.{n - 1 - int(k)}.{rest}"]
        assert_close_to_stored(mine, want, ulps=64)


def test_cs_coefficients_and_modes():
    x = [torch.randn(2, 5, 4) for _ in range(4)]
    cs = LongSkipScaling(4, mode="cs", kappa=0.7)
    for i, (a, b) in enumerate(zip(cs(x), x)):
        torch.testing.assert_close(a, b * 0.7 ** i)
    assert cs.coefficient(0) == 1.0 and cs.coefficient(3) == pytest.approx(0.343)
    assert all(a is b for a, b in zip(LongSkipScaling(4, mode="none")(x), x))
    torch.testing.assert_close(LongSkipScaling(4, mode="sqrt2")(x)[2], x[2] / 2 ** 0.5)


def test_ls_on_conv_features_gives_one_coefficient_per_channel_in_0_1():
    sc = LongSkipScaling(2, features=32, mode="ls", share=False)
    x = torch.randn(3, 32, 6, 6)
    coef = sc.calibration[1](x)
    assert coef.shape == (3, 32, 1, 1) and bool((coef > 0).all() and (coef < 1).all())
    torch.testing.assert_close(sc(x, index=1), x * coef)
    assert len(sc.calibration) == 2 and len(LongSkipScaling(2, features=32, mode="ls").calibration) == 1


def test_ls_calibration_is_trainable():
    torch.manual_seed(0)
    sc = SkipCalibration(32, reduction=4)
    x = torch.randn(8, 32, 5)
    opt = torch.optim.SGD(sc.parameters(), lr=1.0)
    first = None
    for _ in range(50):  # push every coefficient towards 1
        loss = ((x * sc(x) - x) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="mode"):
        LongSkipScaling(3, mode="learned")
    with pytest.raises(ValueError, match="kappa"):
        LongSkipScaling(3, kappa=0.0)
    with pytest.raises(ValueError, match="num_skips"):
        LongSkipScaling(0)
    with pytest.raises(ValueError, match="features"):
        LongSkipScaling(3, mode="ls")
    with pytest.raises(ValueError, match="features // reduction"):
        LongSkipScaling(3, features=8, mode="ls")
    sc = LongSkipScaling(3)
    with pytest.raises(ValueError, match="index"):
        sc(torch.randn(2, 3))
    with pytest.raises(ValueError, match="index"):
        sc(torch.randn(2, 3), index=3)
    with pytest.raises(ValueError, match="skips"):
        sc([torch.randn(2, 3)] * 2)
    with pytest.raises(ValueError, match=r"\[B, 32"):
        LongSkipScaling(3, features=32, mode="ls")(torch.randn(2, 16, 4), index=0)


def test_compiles():
    torch._dynamo.reset()
    sc = LongSkipScaling(3, features=32, mode="ls")
    x = [torch.randn(2, 32, 4) for _ in range(3)]
    compiled = torch.compile(sc, backend="eager", fullgraph=True)
    for a, b in zip(compiled(x), sc(x)):
        torch.testing.assert_close(a, b)
    torch._dynamo.reset()
