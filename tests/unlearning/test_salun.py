"""SalUn: masks and unlearning steps equal the authors' generate_mask.py and unlearn/RL.py
(tests/data/salun_golden.pt, float64), its tie rule, the frozen masked-out weights, and bad input."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwise.registry import get
from gradwise.unlearning import SalUn, saliency_mask

pytestmark = pytest.mark.usefixtures("one_thread")
GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "salun_golden.pt", weights_only=True)
RATIOS = GOLDEN["ratios"].tolist()


def golden_model():
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    model.load_state_dict(GOLDEN["init"])
    return model


def flat(tensors):
    return torch.cat([t.detach().flatten() for t in tensors])


def unflat(model, row):
    out, start = {}, 0
    for name, p in model.named_parameters():
        out[name] = row[start:start + p.numel()].view(p.shape)
        start += p.numel()
    return out


def close(a, b, atol):  # a plain max-abs check (torch.testing's first call imports torch._dynamo: ~4 s)
    a, b = a.detach(), b.detach()
    assert a.shape == b.shape and float((a - b).abs().max()) <= atol, float((a - b).abs().max())


def forget_saliency(model):  # |Σ_b ∇(−CE_b)|, written out here to know where the ties are
    grads = None
    for x, y in GOLDEN["forget"]:
        g = torch.autograd.grad(-F.cross_entropy(model(x), y), list(model.parameters()))
        grads = g if grads is None else [a + b for a, b in zip(grads, g)]
    return flat(grads).abs()


def test_masks_equal_the_authors_wherever_saliencies_differ():
    sal = forget_saliency(golden_model())
    tied = sal == 0
    assert tied.sum() > 0.3 * sal.numel()  # dead ReLUs: the high ratios cut inside the tie
    for ratio, want in zip(RATIOS, GOLDEN["masks"]):
        got = flat(saliency_mask(golden_model(), GOLDEN["forget"], ratio=ratio).values())
        assert got.dtype == torch.bool and int(got.sum()) == int(sal.numel() * ratio) == int(want.sum())
        assert torch.equal(got[~tied], want[~tied]), ratio
        if int(sal.numel() * ratio) <= int((~tied).sum()) or ratio == 1.0:
            assert torch.equal(got, want), ratio  # threshold outside the tie: the very same mask


def test_tie_rule_keeps_the_earliest_entries():
    sal = forget_saliency(golden_model())
    tied_positions = torch.nonzero(sal == 0).flatten()
    n_distinct = int((sal > 0).sum())
    inside = [r for r in RATIOS if n_distinct < int(sal.numel() * r) < sal.numel()]
    assert len(inside) >= 3  # 0.6 to 0.9 in this model
    for ratio in inside:
        got = flat(saliency_mask(golden_model(), GOLDEN["forget"], ratio=ratio).values())
        extra = int(sal.numel() * ratio) - n_distinct
        assert torch.equal(torch.nonzero(got & (sal == 0)).flatten(), tied_positions[:extra])
    # all saliencies equal (nothing reaches the loss): the mask is the first k entries, in order
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
        model[2].weight.zero_()
        model[2].bias.zero_()
    mask = saliency_mask(model, [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))], ratio=0.5)
    got = flat(mask.values())
    assert torch.equal(got, torch.arange(got.numel()) < got.numel() // 2)


def replay(case):
    """Their steps, one by one, with the labels their loss saw; checks the parameters after each."""
    model = golden_model()
    mask = None if case["ratio"] < 0 else unflat(model, GOLDEN["masks"][RATIOS.index(case["ratio"])])
    un = SalUn(model, mask, lr=case["lr"], momentum=case["momentum"], weight_decay=case["weight_decay"])
    labels, step = case["labels"], 0
    for _ in range(case["epochs"]):
        for x, _ in GOLDEN["forget"] + GOLDEN["retain"]:
            un.step(x, labels[:x.shape[0]])
            labels = labels[x.shape[0]:]
            step += 1
            close(flat(model.parameters()), case["params"][step], 1e-12)
    assert labels.numel() == 0 and step == case["params"].shape[0] - 1


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"ratio{c['ratio']}-m{c['momentum']}")
def test_steps_equal_the_authors_rl(case):
    replay(case)
    # fit draws the forget labels as theirs do (global generator, same order): same end point
    model = golden_model()
    mask = None if case["ratio"] < 0 else unflat(model, GOLDEN["masks"][RATIOS.index(case["ratio"])])
    torch.manual_seed(case["seed"])
    SalUn(model, mask, lr=case["lr"], momentum=case["momentum"], weight_decay=case["weight_decay"]).fit(
        GOLDEN["forget"], GOLDEN["retain"], num_classes=3, epochs=case["epochs"])
    close(flat(model.parameters()), case["params"][-1], 1e-12)
    assert (case["params"][-1] - case["params"][0]).abs().max() > 1e-2  # the run did move the model


def toy(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    batches = [(torch.randn(8, 6), torch.randint(0, 4, (8,))) for _ in range(4)]
    return model, batches[:2], batches[2:]


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_masked_out_weights_stay_exactly_at_theta0(momentum):
    model, forget, retain = toy()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = saliency_mask(model, forget, ratio=0.3)
    un = SalUn(model, mask, lr=0.5, momentum=momentum, weight_decay=0.1)  # large decay: it must not leak
    un.fit(forget, retain, num_classes=4, epochs=3, generator=torch.Generator().manual_seed(1))
    for (n, p), buf in zip(model.named_parameters(), un.momentum_buffers):
        assert torch.equal(p[~mask[n]], theta0[n][~mask[n]]), n
        assert (p[mask[n]] != theta0[n][mask[n]]).all(), n
        if momentum:
            assert torch.equal(buf[~mask[n]], torch.zeros_like(buf[~mask[n]]))


def test_mask_none_is_plain_random_labelling():
    model, forget, retain = toy(1)
    ref = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    ref.load_state_dict(model.state_dict())
    full = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    other = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    other.load_state_dict(model.state_dict())
    SalUn(model, None, lr=0.1, weight_decay=1e-2).fit(forget, retain, num_classes=4, epochs=2,
                                                      generator=torch.Generator().manual_seed(5))
    SalUn(other, full, lr=0.1, weight_decay=1e-2).fit(forget, retain, num_classes=4, epochs=2,
                                                      generator=torch.Generator().manual_seed(5))
    # the same run by hand: SGD written out (torch.optim's first step imports torch._dynamo: seconds),
    # forget batches relabelled from the same generator
    gen, bufs = torch.Generator().manual_seed(5), [None] * 4
    for _ in range(2):
        for x, y in forget + retain:
            if any(x is f for f, _ in forget):
                y = torch.randint(0, 4, y.shape, generator=gen)
            grads = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
            with torch.no_grad():
                for i, (p, g) in enumerate(zip(ref.parameters(), grads)):
                    d = g + 1e-2 * p
                    bufs[i] = d if bufs[i] is None else 0.9 * bufs[i] + d
                    p -= 0.1 * bufs[i]
    for a, b, c in zip(model.parameters(), ref.parameters(), other.parameters()):
        close(a, b, 1e-6)
        assert torch.equal(a, c)


def test_saliency_mask_runs_in_eval_mode_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 3))
    batches = [(torch.randn(8, 6), torch.randint(0, 3, (8,)))]
    model.train()
    a = saliency_mask(model, batches, ratio=0.4)
    b = saliency_mask(model, batches, ratio=0.4)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a[n], b[n]) for n in a)  # no dropout draws: eval mode
    assert set(a) == {n for n, _ in model.named_parameters()}


def test_registered_under_the_seed_title():
    rec = get("SalUn")
    assert rec.family == "unlearning" and rec.kind == "unlearning" and rec.arxiv == "2310.12508"
    assert rec.paper == ("SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both "
                         "Image Classification and Generation")


def test_bad_input_is_refused_with_a_clear_error():
    model, forget, retain = toy()
    mask = saliency_mask(model, forget)
    for ratio in (0, 0.0, -0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="Invalid ratio"):
            saliency_mask(model, forget, ratio=ratio)
    with pytest.raises(ValueError, match="Invalid forget_batches: no batch"):
        saliency_mask(model, [])
    with pytest.raises(ValueError, match="Invalid forget_batches: the forget-loss gradient is not finite"):
        saliency_mask(model, [(torch.full((2, 6), float("nan")), torch.tensor([0, 1]))])
    with pytest.raises(ValueError, match=r"Invalid mask: keys .*missing: \['2.bias'\]"):
        SalUn(model, {n: m for n, m in mask.items() if n != "2.bias"})
    with pytest.raises(ValueError, match=r"unexpected: \['extra'\]"):
        SalUn(model, {**mask, "extra": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"Invalid mask\['0.weight'\]: shape \(6, 8\)"):
        SalUn(model, {**mask, "0.weight": torch.ones(6, 8, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"Invalid mask\['0.bias'\]: values other than 0 and 1"):
        SalUn(model, {**mask, "0.bias": torch.full((8,), 2.0)})
    SalUn(model, {n: m.long() for n, m in mask.items()})  # 0/1 integers, as the authors save them
    un = SalUn(model, mask)
    for bad in (1, 0, -3, 2.0, True):
        with pytest.raises(ValueError, match="Invalid num_classes"):
            un.fit(forget, retain, num_classes=bad)
    with pytest.raises(ValueError, match="Invalid forget_batches"):
        un.fit([], retain, num_classes=4)
    with pytest.raises(ValueError, match="Invalid epochs"):
        un.fit(forget, retain, num_classes=4, epochs=0)
    for kw, name in ((dict(lr=0.0), "lr"), (dict(momentum=1.0), "momentum"), (dict(weight_decay=-1.0),
                                                                               "weight_decay")):
        with pytest.raises(ValueError, match=f"Invalid {name}"):
            SalUn(model, mask, **kw)
