import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from gradwise.continual import IBCL, convex_combination, gaussian_w2, normal_hdr

GOLDEN = Path(__file__).parents[1] / "data" / "ibcl_golden.pt"
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny models, one torch thread


class _Small(nn.Module):  # the authors' BayesianClassifierSmall's parameters (fc1: 512 -> 1), logits out
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(512, 1)

    def forward(self, x):
        return self.fc1(x)


def _golden_ibcl():
    g = torch.load(GOLDEN, weights_only=True)
    ib = IBCL(lambda: _Small().double(), likelihood="bernoulli")
    names = ["fc1.weight", "fc1.bias"]
    buffer = [{n: g["base"][f"{i}_{j}_{n}"] for n in names} for i in range(3) for j in range(3)]
    ib.load_state_dict({"buffer": buffer, "tasks": [[0, 1, 2], [3, 4, 5], [6, 7, 8]], "chain": [6, 7, 8]})
    return g, ib


def test_zero_shot_combination_and_hdr_match_authors():
    g, ib = _golden_ibcl()
    for c in g["cases"]:
        pref = c["preference"].tolist()
        full = ib if len(pref) == 3 else copy.deepcopy(ib)
        if len(pref) < 3:  # their combination covers the first len(pref) tasks
            full.tasks = full.tasks[:len(pref)]
        post = full.posterior_for(pref)
        for n in c["mu"]:
            torch.testing.assert_close(post[n][0], c["mu"][n], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(post[n][1], c["sigma"][n], rtol=1e-12, atol=1e-12)
        for alpha, hdr in c["hdr"].items():
            mine = full.hdr_for(pref, alpha)
            for n, (lo, hi) in hdr.items():
                torch.testing.assert_close(mine[n][0], lo, rtol=1e-10, atol=1e-12)
                torch.testing.assert_close(mine[n][1], hi, rtol=1e-10, atol=1e-12)
        for s in c["samples"]:
            with torch.random.fork_rng():  # their draw: a fresh net's init consumes the generator first
                old = torch.get_default_dtype()
                torch.set_default_dtype(torch.float64)
                try:
                    torch.manual_seed(s["seed"])
                    nn.Linear(512, 1)
                    gen = torch.Generator().manual_seed(0)
                    gen.set_state(torch.get_rng_state())
                finally:
                    torch.set_default_dtype(old)
            net = full.model_for(pref, alpha=s["alpha"], generator=gen)
            for n, p in net.named_parameters():
                torch.testing.assert_close(p, s["params"][n], rtol=1e-10, atol=1e-12)


def test_normal_hdr_matches_authors_icdf():
    for mu, sigma, q, want in torch.load(GOLDEN, weights_only=True)["icdf"]:
        if q == 0.5:
            continue
        alpha = 2 * min(q, 1 - q)
        lo, hi = normal_hdr(torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64), alpha)
        assert abs(float(lo if q < 0.5 else hi) - want) < 1e-10


def _two_tasks(seed=0, n=120):
    gen = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(n, 5, generator=gen), torch.randn(n, 5, generator=gen)
    y1, y2 = (x1[:, 0] > 0).long(), (x2[:, 1] > 0).long()
    split = lambda x, y: [(x[i:i + 20], y[i:i + 20]) for i in range(0, n, 20)]  # noqa: E731
    return (x1, y1, split(x1, y1)), (x2, y2, split(x2, y2))


def _acc(net, x, y):
    return float((net(x).argmax(1) == y).float().mean())


def test_preference_trades_tasks_off_without_training():
    (x1, y1, b1), (x2, y2, b2) = _two_tasks()
    ib = IBCL(lambda: nn.Linear(5, 2), lr=0.05, epochs=3, generator=torch.Generator().manual_seed(0))
    assert ib.learn_task(b1) == [0, 1, 2] and ib.learn_task(b2) == [3, 4, 5]
    first, second = ib.model_for([1.0, 0.0]), ib.model_for([0.0, 1.0])
    assert _acc(first, x1, y1) > 0.85 and _acc(second, x2, y2) > 0.75
    assert _acc(first, x1, y1) > _acc(second, x1, y1) + 0.1 and _acc(second, x2, y2) > _acc(first, x2, y2) + 0.1
    mid = ib.posterior_for([0.5, 0.5])
    want = convex_combination(ib.buffer, [1 / 6] * 6)
    for n in mid:
        torch.testing.assert_close(mid[n][0], want[n][0])
    # an HDR draw lies inside the HDR, one uniform number per tensor
    net = ib.model_for([0.5, 0.5], alpha=0.2, generator=torch.Generator().manual_seed(3))
    for n, p in net.named_parameters():
        lo, hi = normal_hdr(*mid[n], 0.2)
        u = (p - lo) / (hi - lo)
        assert bool(((u >= 0) & (u <= 1)).all()) and float(u.max() - u.min()) < 1e-5


def test_sublinear_buffer_reuses_close_posteriors():
    (_, _, b1), (_, _, b2) = _two_tasks(1)
    keep = IBCL(lambda: nn.Linear(5, 2), lr=0.05, epochs=1, discard_threshold=0.0)
    reuse = IBCL(lambda: nn.Linear(5, 2), lr=0.05, epochs=1, discard_threshold=1e9)
    for ib in (keep, reuse):
        ib.learn_task(b1)
        ib.learn_task(b2)
    assert len(keep.buffer) == 6 and keep.tasks == [[0, 1, 2], [3, 4, 5]]
    assert len(reuse.buffer) == 1 and reuse.tasks == [[0, 0, 0], [0, 0, 0]] and reuse.chain == [0, 0, 0]
    assert gaussian_w2(keep.buffer[0], keep.buffer[0]) == 0 and gaussian_w2(keep.buffer[0], keep.buffer[3]) > 0


def test_prior_chain_and_bernoulli_likelihood():
    (x1, y1, b1), _ = _two_tasks(2)
    ib = IBCL(lambda: nn.Linear(5, 1), prior_stds=(0.5, 1.0), lr=0.05, epochs=3, likelihood="bernoulli")
    assert float(ib.prior(1)["weight"][1].max()) == 1.0
    ib.learn_task(b1)
    assert ib.prior(0) is ib.buffer[0] and len(ib.tasks[0]) == 2
    start = IBCL(lambda: nn.Linear(5, 1), prior_stds=(0.5, 1.0), init="prior")
    start.load_state_dict(ib.state_dict())
    start.start_task()  # init="prior": each chain's fit starts at its last posterior
    assert start.fitting and not ib.fitting
    for post, prior in zip(start.current(), (ib.buffer[0], ib.buffer[1])):
        for n in post:
            torch.testing.assert_close(post[n][0], prior[n][0])
            torch.testing.assert_close(post[n][1], prior[n][1])
    net = ib.model_for([1.0])
    assert float(((net(x1)[:, 0] > 0).long() == y1).float().mean()) > 0.85


def test_state_dict_round_trip_and_deepcopy():
    (_, _, b1), _ = _two_tasks(3)
    ib = IBCL(lambda: nn.Linear(5, 2), lr=0.05, epochs=1)
    ib.learn_task(b1)
    twin = copy.deepcopy(ib)
    other = IBCL(lambda: nn.Linear(5, 2))
    other.load_state_dict(ib.state_dict())
    for a, b in ((ib, twin), (ib, other)):
        for p, q in zip(a.model_for([1.0]).parameters(), b.model_for([1.0]).parameters()):
            assert torch.equal(p, q)
    twin.buffer[0]["weight"][0].add_(1.0)  # a deep copy shares no tensor
    assert not torch.equal(twin.buffer[0]["weight"][0], ib.buffer[0]["weight"][0])
    with pytest.raises(ValueError, match="state"):
        IBCL(lambda: nn.Linear(3, 2)).load_state_dict({"buffer": [], "tasks": [[0, 0, 0]], "chain": [None] * 3})


def test_bad_input_names_the_argument():
    lin = lambda: nn.Linear(5, 2)  # noqa: E731
    for kwargs, name in (({"prior_stds": ()}, "prior_stds"), ({"prior_stds": (0.1, -1)}, "prior_stds"),
                         ({"lr": 0}, "lr"), ({"epochs": 0}, "epochs"), ({"likelihood": "gauss"}, "likelihood"),
                         ({"discard_threshold": -1.0}, "discard_threshold"), ({"kl_weight": -1}, "kl_weight"),
                         ({"init": "ones"}, "init")):
        with pytest.raises(ValueError, match=name):
            IBCL(lin, **kwargs)
    with pytest.raises(ValueError, match="model_factory"):
        IBCL(nn.Linear(5, 2))
    (_, _, b1), _ = _two_tasks(4)
    ib = IBCL(lin, lr=0.05, epochs=1)
    ib.learn_task(b1)
    before = ib.state_dict()
    for pref in ([0.5, 0.5], [1.2], [-0.1], ["a"], 1.0):
        with pytest.raises(ValueError, match="preference"):
            ib.model_for(pref)
    with pytest.raises(ValueError, match="alpha"):
        ib.model_for([1.0], alpha=1.0)
    with pytest.raises(ValueError, match="weights"):
        convex_combination(ib.buffer, [0.5, 0.5])
    assert ib.state_dict()["tasks"] == before["tasks"] and len(ib.buffer) == 3
