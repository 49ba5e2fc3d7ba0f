"""DRM against the authors' code (tests/data/drm_golden.pt), its equations by hand, bad input, reset,
state_dict, deepcopy."""
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from gradwise.registry import get
from gradwise.tta import DRM, DRMNet, drm_loss

GOLDEN = torch.load(Path(__file__).resolve().parents[1] / "data" / "drm_golden.pt", weights_only=False)


def golden_net(case):
    c, d = case["num_classes"], case["num_domains"]
    net = DRMNet(nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU()),
                 [nn.Linear(8, c) for _ in range(d + 1)]).double()
    # theirs is nn.Sequential(featurizer, ModuleList(heads)): the same tensors in the same order
    net.load_state_dict(dict(zip(net.state_dict().keys(), case["init"].values())))
    return net


@pytest.mark.parametrize("case", GOLDEN, ids=[c["name"] for c in GOLDEN])
def test_matches_authors_code(case):
    net = golden_net(case)
    opt = torch.optim.Adam(net.parameters(), lr=case["train_lr"], weight_decay=0.0)  # their DRM.__init__
    net.train()
    for t, mb in enumerate(case["train_steps"]):
        loss = drm_loss(net, mb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert loss.item() == pytest.approx(case["losses"][t], rel=1e-12)
        want = case["train_states"][t]
        got = dict(zip(want.keys(), net.state_dict().values()))  # same order: featurizer, then heads
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    # inference and adaptation start from their trained weights exactly (no drift carried over)
    net.load_state_dict(dict(zip(net.state_dict().keys(), case["train_states"][-1].values())))
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(case["plain_x"]), case["plain_logits"], rtol=1e-10, atol=1e-12)
    a = case["adapt"]
    drm = DRM(net, lr=case["train_lr"] * a["alpha"], beta=a["beta"], gamma=a["gamma"], steps=a["step"])
    for i, x in enumerate(case["batches"]):
        with torch.no_grad():
            scores = drm(x)
        torch.testing.assert_close(scores, case["scores"][i], rtol=1e-10, atol=1e-12)
        want = case["heads"][i]
        torch.testing.assert_close(dict(zip(want.keys(), net.heads.state_dict().values())), want, rtol=1e-10, atol=1e-12)
        if i == case["reset_after"]:
            drm.reset()
    assert drm.num_updates == sum(case["updated"]) * a["step"] or not any(case["updated"])


def tiny(seed=0, d=2, c=3):
    torch.manual_seed(seed)
    return DRMNet(nn.Sequential(nn.Linear(4, 5), nn.ReLU()), [nn.Linear(5, c) for _ in range(d + 1)]).double()


def test_equations_by_hand():
    net = tiny()
    x0, x1 = torch.randn(3, 4, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    y0, y1 = torch.tensor([0, 1, 2]), torch.tensor([2, 2, 0, 1])

    def ce(logits, y):
        return -(logits.log_softmax(1)[torch.arange(len(y)), y]).mean()

    h, f = net.heads, net.featurizer
    want = 0.5 * (ce(h[0](f(x0)), y0) + ce(h[2](f(x0)), y0) + ce(h[1](f(x1)), y1) + ce(h[2](f(x1)), y1)) / 2
    torch.testing.assert_close(drm_loss(net, [(x0, y0), (x1, y1)]), want, rtol=1e-13, atol=0)

    x = torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        logits = torch.stack([hj(f(x)) for hj in h])
        p = logits.softmax(2)
        ent = -(p * p.log()).sum(2)  # [3, 5]
        # plain inference: the head with the lowest batch-mean entropy
        torch.testing.assert_close(net(x), logits[int(ent.mean(1).argmin())], rtol=0, atol=0)
        # gamma < 0: each sample's lowest-entropy head
        sel = torch.stack([p[int(ent[:, b].argmin()), b] for b in range(5)])
        torch.testing.assert_close(DRM(copy.deepcopy(net), gamma=-1.0).steer(logits), sel, rtol=0, atol=0)
        # gamma = 2: weights ent^-2 normalized over the 3 heads, the 2 domain heads summed
        w = ent ** -2.0 / (ent ** -2.0).sum(0)
        torch.testing.assert_close(DRM(copy.deepcopy(net), gamma=2.0).steer(logits), w[0, :, None] * p[0]
                                   + w[1, :, None] * p[1], rtol=1e-13, atol=0)


def test_confident_samples_train_every_head_and_reset_restores():
    net = tiny()
    x = torch.randn(6, 4, dtype=torch.float64)
    feat_before = copy.deepcopy(net.featurizer.state_dict())
    heads_before = copy.deepcopy(net.heads.state_dict())
    drm = DRM(net, lr=0.1)
    with torch.no_grad():
        q = drm(x)
    torch.testing.assert_close(q.sum(1), torch.ones(6, dtype=torch.float64))  # gamma < 0: probabilities
    assert drm.num_updates == 1
    for k, v in net.heads.state_dict().items():
        assert not torch.equal(v, heads_before[k]), k  # the loss sums over all D + 1 heads
    torch.testing.assert_close(net.featurizer.state_dict(), feat_before, rtol=0, atol=0)
    # the update moves every head towards the steered pseudo-labels
    with torch.no_grad():
        pseudo = q.argmax(1)
        after = torch.stack([h(net.featurizer(x)) for h in net.heads]).log_softmax(2)
        before = torch.stack([h(net.featurizer(x)) for h in tiny().heads]).log_softmax(2)
    idx = torch.arange(6)
    assert bool((after[:, idx, pseudo].mean(1) > before[:, idx, pseudo].mean(1)).all())
    drm.reset()
    torch.testing.assert_close(net.heads.state_dict(), heads_before, rtol=0, atol=0)
    # beta above e/(e + C - 1): nothing is pseudo-labelled, nothing moves
    frozen = DRM(net, beta=1.1, lr=0.1)
    with torch.no_grad():
        frozen(x)
    assert frozen.num_updates == 0
    torch.testing.assert_close(net.heads.state_dict(), heads_before, rtol=0, atol=0)


def test_state_dict_and_deepcopy_continue_identically():
    a = DRM(tiny(), lr=0.05, steps=2)
    x = torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        a(x)
    b = DRM(tiny(seed=1), lr=0.05, steps=2)
    b.load_state_dict(a.state_dict())
    c = copy.deepcopy(a)
    x2 = torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        ya, yb, yc = a(x2), b(x2), c(x2)
    assert torch.equal(ya, yb) and torch.equal(ya, yc) and b.num_updates == a.num_updates == 4
    c(x2)
    assert a.num_updates == 4 and c.num_updates == 6  # the copy is independent


def test_registered_under_the_seed_title():
    rec = get("DRM")
    assert rec.paper == "Domain-Specific Risk Minimization for Out-of-Distribution Generalization"
    assert rec.kind == "test-time-adaptation" and rec.arxiv == "2208.08661" and rec.load() is DRM


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": 0.0}, "Invalid lr"),
    ({"beta": float("nan")}, "Invalid beta"),
    ({"gamma": "x"}, "Invalid gamma"),
    ({"steps": 0}, "Invalid steps"),
    ({"episodic": 1}, "Invalid episodic"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DRM(tiny(), **kwargs)


def test_bad_nets_batches_and_minibatches_are_refused():
    with pytest.raises(TypeError, match="Invalid net"):
        DRM(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Invalid heads"):
        DRMNet(nn.Identity(), [nn.Linear(2, 2)])
    with pytest.raises(TypeError, match="Invalid featurizer"):
        DRMNet(lambda x: x, [nn.Linear(2, 2)] * 2)
    net = tiny()
    with pytest.raises(ValueError, match="Invalid minibatches: 1"):
        drm_loss(net, [(torch.randn(2, 4), torch.tensor([0, 1]))])
    with pytest.raises(ValueError, match="Invalid x"):
        DRM(net)(torch.randn(1, 4, dtype=torch.float64))
