"""The delta-pruning study's pieces at a small size. (Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses

import torch

from gradwise.arena import delta_pruning_study as dp

SMALL = dataclasses.replace(dp.Config(), hidden=16, pre_epochs=2, ft_epochs=2)


def _task():
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(120, 64, generator=g), torch.randint(0, 10, (120,), generator=g)
    return SimpleNamespace(x_train=x[:60], y_train=y[:60], x_val=x[60:90], y_val=y[60:90], x_eval=x[90:],
                           y_eval=y[90:])


def test_methods_cover_every_p_and_the_mean_inputs_are_the_layers_inputs():
    assert len(dp.METHODS) == 20 and dp.METHODS[0] == "p0.5-dare" and dp.METHODS[-1] == "p0.99-adamr-dare"
    net = dp.mlp(8)
    x = torch.randn(5, 64)
    means = dp._mean_inputs(net, x)
    assert [m.shape[0] for m in means] == [64, 8, 8]
    torch.testing.assert_close(means[0], x.mean(0))
    torch.testing.assert_close(means[1], torch.relu(net[0](x)).mean(0).detach())


def test_pruned_model_is_pretrained_plus_rescaled_kept_delta():
    base = dp.mlp(4)
    deltas = [torch.randn_like(p) for p in base.parameters()]
    masks = [torch.ones_like(d) for d in deltas]
    masks[0].view(-1)[0] = 0.0
    out = dp._pruned(base, deltas, masks, [0.5] * len(deltas))
    for p0, p1, d, m in zip(base.parameters(), out.parameters(), deltas, masks):
        torch.testing.assert_close(p1, p0 + d * m / 0.5)


def test_run_seed_gives_every_method_with_its_q(monkeypatch):
    monkeypatch.setattr(dp, "ETAS", (0.45, 1.0))  # the analytical scans are most of the time: two η, not ten
    rows = dp.run_seed(_task(), SMALL, 0)
    by = {r["method"]: r for r in rows}
    assert set(dp.METHODS) | set(dp.REFERENCES) == set(by)
    for p in dp.PS:
        assert by[f"p{p:g}-dare"]["q"] == by[f"p{p:g}-adamr-dare"]["q"] == 1 - p
        assert 1 - p <= by[f"p{p:g}-darex-search"]["q"] <= 1.0 + 1e-12
        assert 0 < by[f"p{p:g}-darex-an"]["q"] < 1
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    assert by[dp.REFERENCES[0]]["delta_norm"] == 0.0 and by[dp.REFERENCES[1]]["delta_norm"] > 0
