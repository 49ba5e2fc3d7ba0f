"""Distillation losses: plain KD, DHKD, ND (KD++), BD-KD, MTARD.

Golden values come from the authors' code (tests/data/distillation_golden.pt,
made by tools/make_distillation_golden.py); the rest are closed forms,
limiting cases and properties.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gradwise.losses import (BDKDLoss, DHKDLoss, DualHeadKD, KDLoss, MTARDBalancer, MTARDLoss, NDLoss,
                             bdkd_loss, bdkd_teacher_loss, binary_kl_loss, class_means, dhkd_aligned_backward,
                             dhkd_loss, kd_loss, mtard_adversarial_examples, mtard_kl, nd_loss)

GOLDEN = torch.load(Path(__file__).parent / "data" / "distillation_golden.pt", weights_only=True)
F64 = dict(rtol=1e-9, atol=1e-12)


def _kl(p, q):
    return (p * (p.log() - q.log())).sum(1)


# ----------------------------------------------------------------------------- golden values from the authors' code

@pytest.mark.parametrize("case", GOLDEN["kd"], ids=lambda c: f"T={c['temperature']}")
def test_kd_matches_reference_code(case):
    s = case["student"].clone().requires_grad_()
    loss = kd_loss(s, case["teacher"], temperature=case["temperature"])
    (g,) = torch.autograd.grad(loss, s)
    torch.testing.assert_close(loss, case["loss"], **F64)
    torch.testing.assert_close(g, case["grad"], **F64)


@pytest.mark.parametrize("case", GOLDEN["binary_kl"], ids=lambda c: f"{c['variant']}-T={c['temperature']}")
def test_binary_kl_matches_dhkd_code(case):
    s = case["student"].clone().requires_grad_()
    loss = binary_kl_loss(s, case["teacher"], temperature=case["temperature"], variant=case["variant"])
    (g,) = torch.autograd.grad(loss, s)
    torch.testing.assert_close(loss, case["loss"], **F64)
    torch.testing.assert_close(g, case["grad"], **F64)


@pytest.mark.parametrize("case", GOLDEN["dhkd"], ids=lambda c: f"alpha={c['alpha']}")
def test_dhkd_loss_matches_dhkd_training_loop(case):
    main, aux = case["main"].clone().requires_grad_(), case["aux"].clone().requires_grad_()
    loss = dhkd_loss(main, aux, case["teacher"], case["target"], gamma=case["gamma"], alpha=case["alpha"],
                     temperature=case["temperature"])
    gm, ga = torch.autograd.grad(loss, [main, aux])
    torch.testing.assert_close(loss, case["loss"], **F64)
    torch.testing.assert_close(gm, case["grad_main"], **F64)
    torch.testing.assert_close(ga, case["grad_aux"], **F64)


@pytest.mark.parametrize("case", GOLDEN["dhkd_ga"], ids=lambda c: f"seed={c['seed']}")
def test_gradient_alignment_matches_dhkd_optimizer(case):
    torch.manual_seed(case["seed"])
    backbone, fc, fc2 = (torch.nn.Linear(6, 4, dtype=torch.float64), torch.nn.Linear(4, 3, dtype=torch.float64),
                         torch.nn.Linear(4, 3, dtype=torch.float64))
    params = [*backbone.parameters(), *fc.parameters(), *fc2.parameters()]
    with torch.no_grad():
        for p, v in zip(params, case["init"]):
            p.copy_(v)
    feat = torch.relu(backbone(case["x"]))
    l_cls = F.cross_entropy(fc(feat), case["target"])
    l_kd = binary_kl_loss(fc2(feat), case["teacher"], temperature=2.0)
    dhkd_aligned_backward([l_cls, l_kd], params)
    for p, g in zip(params, case["grads"]):
        torch.testing.assert_close(p.grad, g, **F64)


@pytest.mark.parametrize("case", GOLDEN["nd"], ids=lambda c: f"D={c['student'].shape[1]}")
def test_nd_matches_direct_norm_loss(case):
    s = case["student"].clone().requires_grad_()
    loss = nd_loss(s, case["teacher"], case["target"], case["centers"])
    (g,) = torch.autograd.grad(loss, s)
    torch.testing.assert_close(loss, case["loss"], **F64)
    torch.testing.assert_close(g, case["grad"], **F64)


@pytest.mark.parametrize("case", GOLDEN["mtard_kl"], ids=lambda c: f"C={c['student'].shape[1]}")
def test_mtard_kl_matches_reference(case):
    s = case["student"].clone().requires_grad_()
    loss = mtard_kl(s, case["teacher"])
    (g,) = torch.autograd.grad(loss, s)
    torch.testing.assert_close(loss, case["loss"], **F64)
    torch.testing.assert_close(g, case["grad"], **F64)


@pytest.mark.parametrize("case", GOLDEN["mtard_weights"], ids=lambda c: f"lr={c['lr']}")
def test_mtard_weight_update_matches_reference(case):
    bal = MTARDBalancer(lr=case["lr"], beta=case["beta"])
    got = torch.stack([torch.stack(bal.update(la, ln)) for la, ln in case["losses"]])
    torch.testing.assert_close(got, case["weights"], **F64)


# ----------------------------------------------------------------------------- closed forms and limits

def test_kd_is_t_squared_kl_by_hand():
    s, t = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    T = 3.0
    by_hand = T ** 2 * _kl(torch.softmax(t / T, 1), torch.softmax(s / T, 1))
    torch.testing.assert_close(kd_loss(s, t, temperature=T, reduction="none"), by_hand, **F64)
    torch.testing.assert_close(kd_loss(s, t, temperature=T), by_hand.mean(), **F64)


@pytest.mark.parametrize("fn", [
    lambda s, t: kd_loss(s, t, reduction="none"),
    lambda s, t: binary_kl_loss(s, t, reduction="none"),
    lambda s, t: binary_kl_loss(s, t, variant="plain", reduction="none"),
    lambda s, t: bdkd_loss(s, t, reduction="none"),
    lambda s, t: bdkd_loss(s, t, reverse_weight_uncertain=0.3, reverse_weight_confident=0.6, reduction="none"),
    lambda s, t: bdkd_teacher_loss(t, s, reduction="none"),
    lambda s, t: mtard_kl(s, t, eps=0.0, reduction="none"),
], ids=["kd", "binkl-norm", "binkl-plain", "bdkd", "bdkd-mix", "bdkd-teacher", "mtard"])
def test_identical_student_and_teacher_give_zero_and_different_give_positive(fn):
    s = torch.randn(6, 4, dtype=torch.float64)
    torch.testing.assert_close(fn(s, s.clone()), torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (fn(s, s + torch.randn(6, 4, dtype=torch.float64)) > 0).all()


def test_binary_kl_norm_sees_logit_shifts_that_softmax_ignores():
    s = torch.randn(4, 6, dtype=torch.float64)
    assert kd_loss(s + 3.0, s).abs().max() < 1e-12          # softmax is shift invariant
    assert binary_kl_loss(s + 3.0, s) > 0.1                   # the logit-level loss is not
    x = 3.0 / 2.0                                             # closed form of the norm variant for a constant shift
    per_class = 0.5 * (math.log1p(math.exp(x)) + math.log1p(math.exp(-x))) - math.log(2)
    torch.testing.assert_close(binary_kl_loss(s + 3.0, s, temperature=2.0).item(), 4 * 6 * per_class, rtol=1e-12,
                               atol=0)


def test_bdkd_reduces_to_forward_or_reverse_kl_at_its_weight_extremes():
    t = torch.randn(9, 5, dtype=torch.float64) * 3
    scale = torch.tensor([0.3, 0.5, 2.0, 3.0, 0.7, 1.5, 0.2, 4.0, 0.9], dtype=torch.float64)[:, None]
    s = t * scale + 0.1 * torch.randn(9, 5, dtype=torch.float64)  # flatter (<1) or sharper (>1) than the teacher
    T = 2.0
    ps, pt = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    fwd = bdkd_loss(s, t, temperature=T, reverse_weight_uncertain=0.0, reverse_weight_confident=0.0, reduction="none")
    rev = bdkd_loss(s, t, temperature=T, reverse_weight_uncertain=1.0, reverse_weight_confident=1.0, reduction="none")
    torch.testing.assert_close(fwd, kd_loss(s, t, temperature=T, reduction="none"), **F64)
    torch.testing.assert_close(rev, T ** 2 * _kl(ps, pt), **F64)
    # default: reverse KL where the student's entropy exceeds the teacher's, forward KL elsewhere
    ent = lambda p: -(p * p.log()).sum(1)  # noqa: E731
    uncertain = ent(ps) > ent(pt)
    assert 0 < uncertain.sum() < 9  # both branches are exercised
    torch.testing.assert_close(bdkd_loss(s, t, temperature=T, reduction="none"), torch.where(uncertain, rev, fwd),
                               **F64)
    mix = bdkd_loss(s, t, temperature=T, reverse_weight_uncertain=0.25, reverse_weight_confident=0.25,
                    reduction="none")
    torch.testing.assert_close(mix, 0.75 * fwd + 0.25 * rev, **F64)


def test_bdkd_gradient_reaches_the_student_only_and_teacher_loss_the_teacher_only():
    s, t = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    bdkd_loss(s, t).backward()
    assert s.grad is not None and t.grad is None
    s.grad = None
    bdkd_teacher_loss(t, s).backward()
    assert t.grad is not None and s.grad is None


def test_nd_closed_form_and_limits():
    centers = torch.eye(3, 4, dtype=torch.float64) * 5.0
    y = torch.tensor([0, 1, 2])
    e = centers / 5.0
    # a student on its class direction with a norm at least the teacher's has loss 0
    t = torch.randn(3, 4, dtype=torch.float64)
    s = e[y] * (t.norm(dim=1, keepdim=True) * 1.5)
    torch.testing.assert_close(nd_loss(s, t, y, centers, reduction="none"), torch.zeros(3, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    # on the direction but shorter than the teacher: 1 - |s| / |t|
    s_short = e[y] * (t.norm(dim=1, keepdim=True) * 0.25)
    torch.testing.assert_close(nd_loss(s_short, t, y, centers, reduction="none"),
                               torch.full((3,), 0.75, dtype=torch.float64), **F64)
    # orthogonal to the class direction: 1
    s_orth = e[(y + 1) % 3] * 2.0
    torch.testing.assert_close(nd_loss(s_orth, t, y, centers, reduction="none"), torch.ones(3, dtype=torch.float64),
                               **F64)


def test_class_means():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    torch.testing.assert_close(class_means(x, torch.tensor([0, 0, 2]), 3),
                               torch.tensor([[2.0, 1.0], [0.0, 0.0], [5.0, 5.0]]))


def test_mtard_kl_is_kl_over_classes_when_eps_is_zero():
    s, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    torch.testing.assert_close(mtard_kl(s, t, eps=0.0), kd_loss(s, t, temperature=1.0) / 5, **F64)


def test_mtard_loss_combines_with_updated_weights_and_round_trips_state():
    torch.manual_seed(0)
    crit = MTARDLoss(lr=0.2)
    seq = [[torch.randn(4, 3, dtype=torch.float64) for _ in range(4)] for _ in range(5)]
    for sa, ta, sn, tn in seq[:3]:
        crit(sa, ta, sn, tn)
    w_adv, w_nat = crit.balancer.weight_adv.item(), crit.balancer.weight_nat.item()
    assert w_adv != 0.5 and math.isclose(w_adv + w_nat, 1.0)
    clone = MTARDLoss(lr=0.2)
    clone.load_state_dict(crit.state_dict())
    for sa, ta, sn, tn in seq[3:]:
        a, b = crit(sa, ta, sn, tn), clone(sa, ta, sn, tn)
        assert torch.equal(a, b)
    sa, ta, sn, tn = seq[0]
    w = crit.balancer.weight_nat.clone()
    crit.eval()
    out = crit(sa, ta, sn, tn)
    assert torch.equal(crit.balancer.weight_nat, w)  # eval: no update
    torch.testing.assert_close(out, (1 - w) * mtard_kl(sa, ta) + w * mtard_kl(sn, tn), **F64)


def test_mtard_adversarial_examples_stay_in_the_ball_and_raise_the_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.rand(16, 5), torch.randint(0, 3, (16,))
    x_adv = mtard_adversarial_examples(model, x, y, epsilon=0.05, step_size=0.02, steps=5)
    assert (x_adv - x).abs().max() <= 0.05 + 1e-7 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    assert model.training


def test_mtard_adversarial_examples_follow_the_authors_loop():
    # mtard_inner_loss_ce: x_adv = x + 0.001 N(0,1) (unclamped); 10 x { x_adv += step * sign(grad CE);
    # project onto the l_inf ball around x; clamp to [0, 1] }, the model in eval mode; transcribed here with the
    # same start noise drawn from the same generator
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(0.3), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.rand(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    x[:4] = 0.0  # pixels at the data bound: the unclamped start matters there
    model = model.double()
    got = mtard_adversarial_examples(model, x, y, generator=torch.Generator().manual_seed(7))
    ref = x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    model.eval()
    for _ in range(10):
        ref.requires_grad_(True)
        g, = torch.autograd.grad(F.cross_entropy(model(ref), y), ref)
        ref = ref.detach() + 2 / 255 * g.sign()
        ref = torch.min(torch.max(ref, x - 8 / 255), x + 8 / 255).clamp(0.0, 1.0)
    model.train()
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="random_start"):
        mtard_adversarial_examples(model, x, y, random_start=True)
    with pytest.raises(ValueError, match="start_noise"):
        mtard_adversarial_examples(model, x, y, start_noise=-1.0)


# ----------------------------------------------------------------------------- the dual head

def test_dual_head_routes_each_loss_to_its_own_head_and_both_to_the_backbone():
    torch.manual_seed(0)
    backbone = torch.nn.Linear(6, 8)
    dh = DualHeadKD(in_features=8, num_classes=4)
    x, y, t = torch.randn(10, 6), torch.randint(0, 4, (10,)), torch.randn(10, 4)
    main, aux = dh(backbone(x))
    assert main.shape == aux.shape == (10, 4)
    ce_only = dh.loss(main, aux, t, y) - 1.0 * binary_kl_loss(aux, t)
    grads = torch.autograd.grad(ce_only, [dh.head.weight, dh.aux_head.weight, backbone.weight], retain_graph=True,
                                allow_unused=True)
    assert grads[0].abs().sum() > 0 and (grads[1] is None or grads[1].abs().sum() == 0) and grads[2].abs().sum() > 0
    kd_only = binary_kl_loss(aux, t)
    grads = torch.autograd.grad(kd_only, [dh.head.weight, dh.aux_head.weight, backbone.weight], allow_unused=True)
    assert grads[0] is None and grads[1].abs().sum() > 0 and grads[2].abs().sum() > 0
    nonlinear = DualHeadKD(torch.nn.Linear(8, 4), aux="nonlinear")
    assert nonlinear(torch.randn(3, 8))[1].shape == (3, 4)


def test_gradient_alignment_projects_only_conflicting_gradients():
    w = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
    dhkd_aligned_backward([(w * torch.tensor([1.0, 0.0])).sum(), (w * torch.tensor([-1.0, 1.0])).sum()], [w])
    torch.testing.assert_close(w.grad, torch.tensor([1.0, 1.0]))   # conflict: [-1, 1] -> [0, 1]
    dhkd_aligned_backward([(w * torch.tensor([1.0, 0.0])).sum(), (w * torch.tensor([1.0, 1.0])).sum()], [w])
    torch.testing.assert_close(w.grad, torch.tensor([2.0, 1.0]))   # no conflict: plain sum


# ----------------------------------------------------------------------------- properties

BIG = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)


def _tensor(draw, shape, dtype):
    vals = draw(st.lists(BIG, min_size=math.prod(shape), max_size=math.prod(shape)))
    return torch.tensor(vals, dtype=torch.float32).view(shape).to(dtype)


@st.composite
def pairs(draw):
    n, c = draw(st.integers(1, 5)), draw(st.integers(2, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    return _tensor(draw, (n, c), dtype), _tensor(draw, (n, c), dtype), torch.tensor(
        draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))


LOGIT_LOSSES = {
    "kd": lambda s, t, y, r: kd_loss(s, t, reduction=r),
    "binkl-norm": lambda s, t, y, r: binary_kl_loss(s, t, reduction=r),
    "binkl-plain": lambda s, t, y, r: binary_kl_loss(s, t, variant="plain", reduction=r),
    "bdkd": lambda s, t, y, r: bdkd_loss(s, t, reduction=r),
    "bdkd-teacher": lambda s, t, y, r: bdkd_teacher_loss(s, t, reduction=r),
    "dhkd": lambda s, t, y, r: dhkd_loss(s, s * 0.5, t, y, reduction=r),
    "nd": lambda s, t, y, r: nd_loss(s, t, y, torch.eye(s.shape[1], dtype=s.dtype) + 0.1, reduction=r),
    "mtard": lambda s, t, y, r: mtard_kl(s, t, reduction=r),
}


@pytest.mark.parametrize("name", LOGIT_LOSSES)
@settings(max_examples=25, deadline=None)
@given(data=pairs())
def test_finite_loss_and_grad_for_large_logits(name, data):
    s, t, y = data
    s = s.clone().requires_grad_()
    loss = LOGIT_LOSSES[name](s, t, y, "mean")
    (g,) = torch.autograd.grad(loss, s)
    assert loss.dtype == s.dtype
    assert torch.isfinite(loss) and torch.isfinite(g).all()


@pytest.mark.parametrize("name", LOGIT_LOSSES)
@settings(max_examples=15, deadline=None)
@given(data=pairs())
def test_reductions_are_consistent(name, data):
    s, t, y = (x.double() if x.is_floating_point() else x for x in data)
    fn = LOGIT_LOSSES[name]
    none = fn(s, t, y, "none")
    assert none.shape == (s.shape[0],)
    torch.testing.assert_close(fn(s, t, y, "sum"), none.sum(), rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(fn(s, t, y, "mean"), none.mean(), rtol=1e-9, atol=1e-6)


def test_ignore_index_leaves_samples_out():
    s, aux, t = (torch.randn(6, 4, dtype=torch.float64) for _ in range(3))
    y = torch.tensor([0, 1, -100, 3, -100, 2])
    keep = y != -100
    full = dhkd_loss(s, aux, t, y, reduction="none")
    assert (full[~keep] == 0).all()
    torch.testing.assert_close(dhkd_loss(s, aux, t, y), dhkd_loss(s[keep], aux[keep], t[keep], y[keep]), **F64)
    f, ft, centers = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64), torch.randn(
        4, 3, dtype=torch.float64)
    torch.testing.assert_close(nd_loss(f, ft, y, centers), nd_loss(f[keep], ft[keep], y[keep], centers), **F64)


def test_module_twins_equal_their_functions():
    s, aux, t = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 4)
    y = torch.randint(0, 4, (5,))
    assert torch.equal(KDLoss(temperature=2.0)(s, t), kd_loss(s, t, temperature=2.0))
    assert torch.equal(BDKDLoss(temperature=2.0, reduction="sum")(s, t), bdkd_loss(s, t, temperature=2.0,
                                                                                    reduction="sum"))
    assert torch.equal(DHKDLoss(alpha=0.5)(s, aux, t, y), dhkd_loss(s, aux, t, y, alpha=0.5))
    centers = torch.randn(4, 4)
    crit = NDLoss(centers, reduction="none")
    assert torch.equal(crit(s, t, y), nd_loss(s, t, y, centers, reduction="none"))
    assert "class_centers" in crit.state_dict()


@pytest.mark.parametrize("call, arg", [
    (lambda: kd_loss(torch.randn(3, 4), torch.randn(3, 4), temperature=0), "temperature"),
    (lambda: kd_loss(torch.randn(3, 4), torch.randn(3, 5)), "teacher_logits"),
    (lambda: kd_loss(torch.randn(3), torch.randn(3)), "student_logits"),
    (lambda: kd_loss(torch.randn(3, 4), torch.randn(3, 4), reduction="avg"), "reduction"),
    (lambda: binary_kl_loss(torch.randn(3, 4), torch.randn(3, 4), variant="zscore"), "variant"),
    (lambda: bdkd_loss(torch.randn(3, 4), torch.randn(3, 4), reverse_weight_uncertain=1.5),
     "reverse_weight_uncertain"),
    (lambda: bdkd_loss(torch.randn(3, 4), torch.randint(0, 3, (3, 4))), "teacher_logits"),
    (lambda: dhkd_loss(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 4])), "target"),
    (lambda: dhkd_loss(torch.randn(3, 4), torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0, 1, 2])),
     "aux_logits"),
    (lambda: dhkd_loss(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2]), alpha=-1),
     "alpha"),
    (lambda: nd_loss(torch.randn(3, 4), torch.randn(3, 5), torch.tensor([0, 1, 2]), torch.randn(3, 4)),
     "teacher_features"),
    (lambda: nd_loss(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 3]), torch.randn(3, 4)), "target"),
    (lambda: nd_loss(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.randn(3, 5)),
     "class_centers"),
    (lambda: mtard_kl(torch.randn(3, 4), torch.randn(3, 4), eps=-1.0), "eps"),
    (lambda: MTARDBalancer(lr=-0.1), "lr"),
    (lambda: DualHeadKD(in_features=8, num_classes=4, aux="mlp"), "aux"),
    (lambda: DualHeadKD(), "in_features"),
])
def test_invalid_input_is_rejected_naming_the_argument(call, arg):
    with pytest.raises(ValueError, match=f"Invalid {arg}"):
        call()


# ----------------------------------------------------------------------------- the study

def test_distillation_study_smoke(tmp_path):
    import argparse

    from rich.console import Console

    from gradwise.arena import STUDIES, load_study

    assert "distillation" in STUDIES
    study = load_study("distillation")
    parser = argparse.ArgumentParser()
    study.add_arguments(parser)
    args = parser.parse_args(["--seeds", "1", "--teacher-epochs", "2", "--epochs", "2", "--out", str(tmp_path)])
    out = study.run(args, Console(file=open(tmp_path / "log.txt", "w"), width=160))
    import json
    doc = json.loads((out / "results.json").read_text())
    names = {s["name"] for s in doc["summary"]}
    assert {"CE only", "KD", "DHKD", "KD++ (ND)", "BD-KD (online)", "DML (online)"} <= names
    assert (out / "distillation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "results.csv").stat().st_size > 0
