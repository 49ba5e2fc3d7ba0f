"""benchmarks/state_bits.py (issue 12): state bytes counted by hand on small cases, and a tiny run's rows."""
import argparse
import importlib.util

import pytest
import torch

from gradwise import _benchmarks

state_bits = _benchmarks.load("state_bits")

HAVE_BNB = importlib.util.find_spec("bitsandbytes") is not None
HAVE_TORCHAO = importlib.util.find_spec("torchao") is not None


def _stepped(label, *shapes):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt = state_bits.OPTIMIZERS[label][0](params)
    opt.step()
    return opt


@pytest.mark.parametrize("label", [state_bits.GW8, state_bits.GW8_REF])
def test_gradwise_8bit_state_of_one_64x64_parameter_counted_by_hand(label):
    opt = _stepped(label, (64, 64))
    # exp_avg and exp_avg_sq: 4096 uint8 codes + 16 blocks of 256 x one float32 absmax each;
    # the codec's signed and unsigned maps (256 float32 each) and their 65536-entry uint8 lookup tables
    assert state_bits.state_bytes(opt) == 2 * (4096 + 16 * 4) + 2 * (256 * 4) + 2 * 65536
    assert state_bits.eight_bit_fraction(opt) == 1.0


def test_small_parameters_keep_32bit_state_and_32bit_optimizers_count_two_moments():
    opt = _stepped(state_bits.GW8, (10, 10))  # under min_8bit_size=4096: float32 state, no maps made
    assert state_bits.state_bytes(opt) == 2 * 100 * 4 and state_bits.eight_bit_fraction(opt) == 0.0
    assert state_bits.state_bytes(_stepped(state_bits.GW32, (64, 64))) == 2 * 4096 * 4
    # torch keeps `step` as a 0-dim float32 tensor per parameter
    assert state_bits.state_bytes(_stepped("torch.optim.AdamW(fused=True)", (64, 64))) == 2 * 4096 * 4 + 4


def test_shared_storage_is_counted_once_and_views_are_their_storage():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    base = torch.zeros(100)
    opt.state[opt.param_groups[0]["params"][0]] = {"a": base, "b": base[:10], "c": (base, torch.zeros(5))}
    assert state_bits.state_bytes(opt) == 100 * 4 + 5 * 4


@pytest.mark.skipif(not HAVE_BNB, reason="bitsandbytes not installed")
def test_bitsandbytes_state_counts_its_shared_maps_once():
    opt = _stepped("bnb.optim.AdamW8bit", (64, 64), (64, 64))
    # per parameter: state1/state2 codes and absmax1/absmax2; qmap1/qmap2 are one tensor each for all parameters
    assert state_bits.state_bytes(opt) == 2 * (2 * (4096 + 16 * 4)) + 2 * (256 * 4)
    assert state_bits.eight_bit_fraction(opt) == 1.0


@pytest.mark.skipif(not HAVE_TORCHAO, reason="torchao not installed")
def test_torchao_state_counts_the_subclass_inner_tensors():
    opt = _stepped("torchao.optim.AdamW8bit", (64, 64))
    st = opt.state[opt.param_groups[0]["params"][0]]
    # the subclass reports a float32 [64, 64] tensor; its real storage is codes, scale and its own qmap
    assert st["exp_avg"].dtype == torch.float32 and st["exp_avg"].shape == (64, 64)
    assert state_bits.state_bytes(opt) == 2 * (4096 + 16 * 4 + 256 * 4) + 4  # + the float32 `step`
    assert state_bits.eight_bit_fraction(opt) == 1.0


def test_a_tiny_run_gives_well_formed_rows_targets_and_markdown(tmp_path):
    model = state_bits.Model(vocab=64, d_model=64, n_heads=2, n_layers=1, seq_len=8, batch=2)
    lm = state_bits.LMConfig(steps=3, seeds=2, d_model=64, n_heads=2, n_layers=1, seq_len=8, batch_size=2,
                             train_chars=3000, eval_windows=4)
    res = state_bits.run(model=model, lm=lm, rounds=2, steps=1, warmup=1, threads=1)
    labels = [label for label, (_, pkg, _) in state_bits.OPTIMIZERS.items()
              if pkg not in ("bitsandbytes", "torchao") or importlib.util.find_spec(pkg)]
    assert [r["name"] for r in res["bytes"]] == labels and [r["name"] for r in res["time"]] == labels
    assert not [n for n in res["notes"] if "failed" in n or "could not" in n]
    by = {r["name"]: r for r in res["bytes"]}
    assert by[state_bits.GW32]["ratio_gw32"] == 1.0
    # the 64x64, 64x192 and 64x256 matrices: 8-bit; biases, norms, positions: not (and at this size the
    # codec's two 64 KiB lookup tables weigh more than the codes save, so only "smaller" is asserted)
    assert 0.5 < by[state_bits.GW8]["eight_bit_fraction"] < 1.0 and by[state_bits.GW8]["ratio_gw32"] < 1.0
    for r in res["time"]:
        assert r["ms"] > 0 and r["spread"] >= 0
        if HAVE_BNB or HAVE_TORCHAO:
            assert r["best_peer"] in state_bits.PEERS8 and r["ratio_best_peer"] == pytest.approx(
                r["ms"] / next(t["ms"] for t in res["time"] if t["name"] == r["best_peer"]))
    par = {r["name"]: r for r in res["parity"]["rows"]}
    assert set(par) == {lb for lb in state_bits.LM_OPTIMIZERS if lb in labels}
    for r in par.values():
        assert len(r["final_loss"]) == 2 and all(v > 0 for v in r["final_loss"])
    assert par[state_bits.GW32]["gap"] is None and par[state_bits.GW32]["eight_bit_fraction"] == 0.0
    gw8 = par[state_bits.GW8]
    assert gw8["gap"] == pytest.approx([a / b - 1 for a, b in zip(gw8["final_loss"],
                                                                    par[state_bits.GW32]["final_loss"])])
    assert gw8["max_abs_gap"] == max(abs(g) for g in gw8["gap"])
    assert [t["status"] for t in res["targets"]][0] == ("PASS" if by[state_bits.GW8]["ratio_gw32"] <= 0.27
                                                         else "MISS")
    assert all(t["status"] in ("PASS", "MISS", "n/a") for t in res["targets"]) and len(res["targets"]) == 3

    md = state_bits.to_markdown(res, state_bits.NO_DEVICE)
    assert md.startswith("## 8-bit optimizer state\n") and res["machine"]["cpu"] in md
    assert f"| {state_bits.GW8} | 8 |" in md and "no GPU was lent" in md and "Targets (issue 12)" in md
    path = tmp_path / "bench.md"
    path.write_text("# Benchmarks\n\nkept\n")
    state_bits.harness.save(res, argparse.Namespace(json=None, markdown=path), "state_bits", md)
    text = path.read_text()
    assert "kept" in text and f"<!-- BEGIN state_bits -->\n{md}" in text


def test_an_unknown_label_is_named():
    with pytest.raises(ValueError, match="Invalid optimizer label"):
        state_bits.run(lm=None, only=["nope"])
