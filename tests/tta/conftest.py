"""Shared pieces of the tta tests: the golden data and the tiny models the generator used."""
from pathlib import Path

import pytest
import torch
from torch import nn

GOLDEN_PATH = Path(__file__).parents[1] / "data" / "tta_golden.pt"


def build(arch: str) -> nn.Module:
    """The architectures of tools/golden/make_tta_golden.py (5 classes), float64."""
    if arch == "cnn":
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * 5 * 5, 5))
    else:
        model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))
    return model.double()


@pytest.fixture(scope="session")
def tta_golden():
    return torch.load(GOLDEN_PATH, weights_only=True)


@pytest.fixture
def make_model():
    """A fresh tiny model of ``arch`` ("cnn" or "mlp") with seeded float64 weights."""
    def make(arch="cnn", seed=0):
        torch.manual_seed(seed)
        return build(arch)
    return make


@pytest.fixture
def golden_model():
    """The golden case's model, loaded from its initial state, and its optimizer kwargs."""
    def make(case):
        model = build(case["arch"])
        model.load_state_dict(case["state"])
        return model
    return make


@pytest.fixture
def replay(golden_model):
    """Run one of our wrappers over a golden case's batches as the generator ran theirs; returns the
    per-call logits, flattened BatchNorm parameters and the wrapper."""
    from gradwise.tta import bn_parameters

    def run(case, cls, **extra):
        model = golden_model(case)
        opt = None if case["opt"] is None else torch.optim.SGD(bn_parameters(model), **case["opt"])
        wrapper = cls(model, opt, **case["kwargs"], **extra)
        outs, flat, counts = [], [], []
        for t, x in enumerate(case["batches"]):
            if t == case["reset_at"]:
                wrapper.reset()
            with torch.no_grad():
                outs.append(wrapper(x))
            flat.append(torch.cat([p.detach().reshape(-1) for p in bn_parameters(model)]))
            counts.append((getattr(wrapper, "num_reliable", None), getattr(wrapper, "num_selected", None),
                           None if getattr(wrapper, "prob_ema", None) is None else wrapper.prob_ema.clone()))
        return torch.stack(outs), torch.stack(flat), counts, wrapper
    return run
