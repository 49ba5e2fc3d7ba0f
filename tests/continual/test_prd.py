from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gradwise.continual import prd_loss, prototype_loss, supcon_loss

GOLDEN = Path(__file__).parents[1] / "data" / "prd_golden.pt"


def _golden():
    return torch.load(GOLDEN, weights_only=True)


def test_supcon_matches_authors():
    for c in _golden()["supcon"]:
        feats = c["features"].clone().requires_grad_(True)
        loss = supcon_loss(feats, c["labels"], temperature=c["temperature"], contrast_mode=c["contrast_mode"])
        loss.backward()
        torch.testing.assert_close(loss, c["loss"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(feats.grad, c["grad"], rtol=1e-10, atol=1e-12)


def test_prd_and_prototype_loss_match_authors():
    for c in _golden()["prd"]:
        feats = c["feats"].clone().requires_grad_(True)
        protos = [p.clone().requires_grad_(True) for p in c["prototypes"]]
        # their current task is 2: the distillation runs over the prototypes of tasks 0 and 1
        loss = prd_loss(feats, protos[:2], c["old_prototypes"][:2], old_feats=c["old_feats"],
                        temperature=c["temperature"])
        loss.backward()
        torch.testing.assert_close(loss, c["loss"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(feats.grad, c["grad_feats"], rtol=1e-10, atol=1e-12)
        for p, g in zip(protos[:2], c["grad_prototypes"]):
            torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
        head = c["prototypes"][0].clone().requires_grad_(True)
        lin = prototype_loss(feats, c["labels"], head)
        lin.backward()
        torch.testing.assert_close(lin, c["linear_loss"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(head.grad, c["linear_grad"], rtol=1e-10, atol=1e-12)


def test_prd_properties():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    protos = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    old = torch.randn(4, 5, generator=g, dtype=torch.float64)
    # nothing changed since the old model: the loss is the entropy of the relation and its gradient is 0
    loss = prd_loss(feats, protos, protos.detach(), old_feats=feats.detach(), temperature=2.0)
    q = torch.softmax(feats.detach() @ protos.detach().T / protos.detach().norm(dim=1) / 2.0, 1)
    torch.testing.assert_close(loss, -(q * q.log()).sum(1).mean())
    loss.backward()
    assert feats.grad.abs().max() < 1e-12 and protos.grad.abs().max() < 1e-12
    # the old side gets no gradient; a sequence of one group equals the tensor
    old_feats = torch.randn(8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    old_p = old.clone().requires_grad_(True)
    a = prd_loss(feats, protos, old_p, old_feats=old_feats)
    a.backward()
    assert old_feats.grad is None and old_p.grad is None
    torch.testing.assert_close(a, prd_loss(feats, [protos], [old], old_feats=old_feats))
    # scaling a prototype does not change the scores; scaling features does (not normalized, as theirs)
    torch.testing.assert_close(a, prd_loss(feats, protos * 3, old, old_feats=old_feats))
    assert not torch.allclose(a, prd_loss(feats * 3, protos, old, old_feats=old_feats))


def test_supcon_properties():
    g = torch.Generator().manual_seed(1)
    h = F.normalize(torch.randn(5, 2, 4, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.arange(5)
    # distinct labels: SupCon is SimCLR's loss (labels=None)
    torch.testing.assert_close(supcon_loss(h, labels), supcon_loss(h, None))
    # views that agree within a class and differ across classes give a lower loss
    base = F.normalize(torch.randn(3, 4, generator=g, dtype=torch.float64), dim=-1)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    tight = base[y][:, None].repeat(1, 2, 1)
    assert supcon_loss(tight, y) < supcon_loss(h.repeat(2, 1, 1)[:6], y)


@pytest.mark.parametrize("call, word", [
    (lambda: prd_loss(torch.zeros(3), torch.zeros(2, 3), torch.zeros(2, 3), old_feats=torch.zeros(3, 3)), "feats"),
    (lambda: prd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), old_feats=torch.zeros(3, 3)),
     "old_feats"),
    (lambda: prd_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 4), old_feats=torch.zeros(2, 3)),
     "prototypes"),
    (lambda: prd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 3), old_feats=torch.zeros(2, 3)),
     "old_prototypes"),
    (lambda: prd_loss(torch.zeros(2, 3), [torch.zeros(2, 3)], [], old_feats=torch.zeros(2, 3)), "old_prototypes"),
    (lambda: prd_loss(torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 3), old_feats=torch.zeros(2, 3),
                      temperature=0.0), "temperature"),
    (lambda: prototype_loss(torch.ones(2, 3), torch.tensor([0, 2]), torch.ones(2, 3)), "labels"),
    (lambda: prototype_loss(torch.ones(2, 3), torch.tensor([0.0, 1.0]), torch.ones(2, 3)), "labels"),
    (lambda: prototype_loss(torch.ones(2, 3), torch.tensor([0, 1]), [torch.ones(2, 3)] * 2), "prototypes"),
    (lambda: supcon_loss(torch.zeros(4, 3)), "features"),
    (lambda: supcon_loss(torch.zeros(4, 2, 3), torch.arange(3)), "labels"),
    (lambda: supcon_loss(torch.zeros(4, 2, 3), temperature=-1.0), "temperature"),
    (lambda: supcon_loss(torch.zeros(4, 2, 3), contrast_mode="two"), "contrast_mode"),
])
def test_bad_input(call, word):
    with pytest.raises(ValueError, match=f"Invalid {word}"):
        call()
