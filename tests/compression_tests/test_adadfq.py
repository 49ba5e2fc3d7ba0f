"""AdaDFQ: the generator's losses and the student loss equal the authors' CIFAR trainer code
(tests/data/adadfq_golden.pt, made by tools/golden/make_adadfq_golden.py from hfutqian/AdaDFQ@84100f3), float64,
tolerance 1e-10."""
import math
from pathlib import Path

import pytest
import torch

from gradwise.compression import (BNStatsRecorder, adadfq_bns_loss, adadfq_entropy, adadfq_losses, adadfq_margin_loss,
                                  adadfq_student_loss)

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "adadfq_golden.pt", weights_only=True)
TOL = dict(rtol=1e-10, atol=1e-12)
PARTS = ("loss", "margin", "disagreement", "agreement", "onehot", "bns")


@pytest.mark.parametrize("case", GOLDEN["generator"], ids=lambda c: c["name"])
def test_generator_losses_and_gradients_equal_the_authors(case):
    s = case["settings"]
    teacher = case["teacher"].clone().requires_grad_()
    student = case["student"].clone().requires_grad_()
    stats = [[x.clone().requires_grad_(i < 2) for i, x in enumerate(st)] for st in case["stats"]]
    out = adadfq_losses(teacher, student, case["labels"], alpha_ds=s["alpha_ds"], alpha_as=s["alpha_as"],
                        lambda_lower=s["lambda_l"], lambda_upper=s["lambda_u"], beta=s["beta"], gamma=s["gamma"],
                        bn_stats=stats or None)
    for part in PARTS:
        torch.testing.assert_close(out[part].detach(), case[part], **TOL, msg=part)
    out["loss"].backward()
    torch.testing.assert_close(teacher.grad, case["grad_teacher"], **TOL)
    torch.testing.assert_close(student.grad, case["grad_student"], **TOL)
    for ours, theirs in zip(stats, case["grad_stats"]):
        torch.testing.assert_close(ours[0].grad, theirs[0], **TOL)
        torch.testing.assert_close(ours[1].grad, theirs[1], **TOL)


@pytest.mark.parametrize("case", GOLDEN["student"], ids=lambda c: f"C{c['classes']}")
def test_student_loss_equals_the_authors(case):
    student = case["student"].clone().requires_grad_()
    loss = adadfq_student_loss(case["teacher"], student)
    loss.backward()
    torch.testing.assert_close(loss.detach(), case["loss"], **TOL)
    torch.testing.assert_close(student.grad, case["grad_student"], **TOL)


def test_margin_loss_any_batch_size_and_its_two_sides():
    """The margin penalises normalised entropies below λ_l and above λ_u only (theirs needs 16 samples)."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(5, 10, dtype=torch.float64, generator=g) * 3
    s = t + torch.randn(5, 10, dtype=torch.float64, generator=g)
    h = adadfq_entropy(t - s)
    hn = (h - h.min()) / (math.log(10) - h.min())
    want = (0.2 - hn).clamp_min(0).mean() + (hn - 0.5).clamp_min(0).mean()
    torch.testing.assert_close(adadfq_margin_loss(t, s, lambda_lower=0.2, lambda_upper=0.5), want, **TOL)
    assert adadfq_margin_loss(t, s, lambda_lower=0.0, lambda_upper=1.0) == 0  # margin covering [0, 1]
    # the student that agrees up to a shift has maximal disagreement entropy: lowest student loss
    shift = t + 3.0
    assert adadfq_student_loss(t, shift) < adadfq_student_loss(t, s)
    torch.testing.assert_close(adadfq_student_loss(t, shift), torch.tensor(-400 * math.log(10), dtype=torch.float64))


def test_nan_propagates_and_bns_without_layers_is_zero():
    t = torch.randn(4, 10)
    t[1, 2] = float("nan")
    assert adadfq_margin_loss(t, torch.zeros(4, 10)).isnan()
    assert adadfq_losses(t, torch.zeros(4, 10), torch.tensor([0, 1, 2, 0]))["loss"].isnan()
    assert adadfq_bns_loss([]) == 0
    out = adadfq_losses(torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    assert out["bns"] == 0 and out["loss"].isfinite()


@pytest.mark.parametrize("kw, match", [
    (dict(student_logits=torch.zeros(4, 5)), "same shape"),
    (dict(teacher_logits=torch.zeros(4)), "teacher_logits"),
    (dict(labels=torch.tensor([0, 1, 2, 3])), "labels must lie"),
    (dict(labels=torch.zeros(4)), "labels must be an integer"),
    (dict(lambda_lower=0.9), "lambda_lower must be <="),
    (dict(lambda_upper=1.5), "lambda_upper"),
    (dict(alpha_ds=-1.0), "alpha_ds"),
    (dict(gamma=float("nan")), "gamma"),
    (dict(bn_stats=[(torch.zeros(3), torch.zeros(3), torch.zeros(4), torch.zeros(3))]), "stats\\[0\\]"),
])
def test_bad_input_raises_value_error(kw, match):
    args = dict(teacher_logits=torch.zeros(4, 3), student_logits=torch.zeros(4, 3), labels=torch.tensor([0, 1, 2, 0]))
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        adadfq_losses(**args)


def test_bad_temperature_raises_value_error():
    with pytest.raises(ValueError, match="temperature"):
        adadfq_student_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0)


def test_bn_recorder_collects_the_authors_statistics_and_a_generator_step_lowers_the_loss():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 5),
                                  torch.nn.BatchNorm1d(5)).eval()
    with torch.no_grad():
        teacher[0].running_mean.normal_()
        teacher[0].running_var.uniform_(0.5, 2)
    x = torch.randn(8, 2, 4, 4)
    with BNStatsRecorder(teacher) as rec:
        teacher(x)
    assert len(rec.stats) == 2
    torch.testing.assert_close(rec.stats[0][0], x.mean([0, 2, 3]))
    torch.testing.assert_close(rec.stats[0][1], x.var([0, 2, 3], unbiased=False))
    assert rec.stats[0][2] is teacher[0].running_mean
    rec.clear()
    teacher(x)
    assert rec.stats == []  # hooks removed on exit
    # gradient steps on the generated images (a generator reduced to its output) lower AdaDFQ's loss
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32, 5)).eval()
    image = torch.randn(8, 2, 4, 4, requires_grad=True)
    labels = torch.randint(0, 5, (8,))
    losses = []
    for _ in range(5):
        with BNStatsRecorder(teacher) as rec:
            t = teacher(image)
        loss = adadfq_losses(t, student(image), labels, bn_stats=rec.stats)["loss"]
        grad, = torch.autograd.grad(loss, image)
        with torch.no_grad():
            image -= 0.05 * grad
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_bad_recorder_model_raises_value_error():
    with pytest.raises(ValueError, match="model"):
        BNStatsRecorder(lambda x: x)
