"""The node-reg study's pieces at a small size: the data, a run's row, seeding, the summary's NFE ratios,
bad method names. (Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses

import pytest
import torch

from gradwise.arena import node_reg_study as ns
from gradwise.arena.study import Run

TINY = dataclasses.replace(ns.Config(), seeds=1, steps=2, train=32, batch_size=16, hidden=8)


@pytest.mark.parametrize("name", ns.DATASETS)
def test_data_two_balanced_classes_in_the_plane(name):
    x, y = ns.make_data(name, 400, 0.0, torch.Generator().manual_seed(0))
    assert tuple(x.shape) == (400, 2) and set(y.tolist()) == {0, 1} and 100 < int(y.sum()) < 300
    r = x.norm(dim=1)
    if name == "circles":  # noise-free radii 0.5 and 1 by class
        assert torch.allclose(r[y == 1], torch.full_like(r[y == 1], 0.5), atol=1e-6)
        assert torch.allclose(r[y == 0], torch.ones_like(r[y == 0]), atol=1e-6)
    else:
        assert float(r.min()) >= 0.2 - 1e-6 and float(r.max()) <= 2.2 + 1e-6


def test_rows_are_seeded_and_the_local_step_costs_evaluations():
    a = ns.run_one(TINY, "circles/local", 0)
    b = ns.run_one(TINY, "circles/local", 0)
    plain = ns.run_one(TINY, "circles/none", 0)
    assert a["test_acc"] == b["test_acc"] and a["test_nfe"] == b["test_nfe"]
    assert a["train_nfe_per_step"] >= plain["train_nfe_per_step"] + 7 - 1e-9 or a["test_nfe"] != plain["test_nfe"]
    assert 0.0 <= a["test_acc"] <= 1.0 and a["test_nfe"] >= 8


def test_summary_divides_test_nfe_by_the_unregularised_run():
    rows = [dict(method=m, dataset=m.split("/")[0], mode=m.split("/")[1], seed=s, test_acc=0.9,
                 test_nfe=40.0 if m.endswith("/none") else 30.0, train_nfe_per_step=40.0, train_s=2.0)
            for m in ("spirals/none", "spirals/error") for s in (0, 1)]
    out = ns._summarize(Run(TINY, None, ("spirals/none", "spirals/error"), (0, 1)), rows)
    by = {r["method"]: r for r in out}
    assert by["spirals/none"]["nfe_ratio_mean"] == 1.0 and by["spirals/error"]["nfe_ratio_mean"] == 0.75


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method"):
        ns.run_one(TINY, "moons/error", 0)
