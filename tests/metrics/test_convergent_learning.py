from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gradwise.metrics import NeuronAlignmentCallback, call_callbacks, match_units, neuron_alignment, unit_correlation

GOLDEN = Path(__file__).parents[1] / "data" / "convergent_learning_golden.pt"


def test_bipartite_matching_matches_the_authors_networkx_matching():
    cases = torch.load(GOLDEN, weights_only=True)["cases"]
    differs_from_semi = False
    for c in cases:
        corr = unit_correlation(c["acts_a"], c["acts_b"])
        torch.testing.assert_close(corr, c["corr"], rtol=1e-9, atol=1e-12)
        partner, matched = match_units(corr)
        assert partner.tolist() == c["order"].tolist()
        torch.testing.assert_close(matched, c["corr"][torch.arange(len(partner)), c["order"]])
        differs_from_semi |= match_units(corr, "semi")[0].tolist() != partner.tolist()
    assert differs_from_semi  # the cases exercise the one-to-one constraint


def test_correlation_against_numpy_and_conv_layout():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 4, generator=g), torch.randn(50, 3, generator=g)
    expected = np.corrcoef(a.double().numpy().T, b.double().numpy().T)[:4, 4:]
    torch.testing.assert_close(unit_correlation(a, b), torch.from_numpy(expected))
    conv = torch.randn(5, 3, 2, 2, generator=g)  # positions count as samples of each channel
    flat = conv.permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(unit_correlation(conv, conv * 2 + 1), unit_correlation(flat, flat))
    dead = torch.cat([a[:, :2], torch.zeros(50, 1)], 1)
    assert unit_correlation(dead, b)[2].abs().sum() == 0


def test_alignment_of_permuted_copy_is_one():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40, 6, generator=g)
    perm = torch.randperm(6, generator=g)
    assert float(neuron_alignment(a, a[:, perm])) == pytest.approx(1.0)
    partner, _ = match_units(unit_correlation(a, a[:, perm]))
    assert perm[partner].tolist() == list(range(6))
    semi = neuron_alignment(a, torch.randn(40, 6, generator=g), "semi")
    bip = neuron_alignment(a, torch.randn(40, 6, generator=torch.Generator().manual_seed(2)))
    assert semi >= -1 and bip <= 1


def test_callback_on_a_training_loop():
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))

    def net():
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    model, ref = net(), net()
    ref.load_state_dict(model.state_dict())
    cb = NeuronAlignmentCallback(ref, x, ["0", "1"], every=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        call_callbacks([cb], "on_step", step, model=model, loss=loss)
    assert [s for s, _ in cb.history] == [0, 2, 4]
    first, last = cb.history[0][1]["0"], cb.history[-1][1]["0"]
    assert 0.5 < last < first <= 1.0  # the trained copy drifts away from its starting point


def test_bad_input():
    with pytest.raises(ValueError, match="method"):
        match_units(torch.eye(3), "greedy")
    with pytest.raises(ValueError, match="corr"):
        match_units(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="acts_b"):
        unit_correlation(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match="acts_a"):
        unit_correlation(torch.randn(5), torch.randn(5, 2))
    with pytest.raises(ValueError, match="layers"):
        NeuronAlignmentCallback(nn.Linear(2, 2), torch.randn(3, 2), ["nope"])
