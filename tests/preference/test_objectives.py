"""DPO, IPO, SLiC hinge, f-DPO, SimPO, RPO and CPL: formulas, golden values, properties."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gradwise.preference.objectives.cpl import cpl_loss
from gradwise.preference.objectives.dpo import dpo_hinge_loss, dpo_loss
from gradwise.preference.objectives.fdpo import f_divergence_score, fdpo_loss
from gradwise.preference.objectives.ipo import ipo_loss
from gradwise.preference.objectives.rpo import rpo_loss
from gradwise.preference.objectives.simpo import simpo_loss
from gradwise.registry import get

DATA = Path(__file__).parents[1] / "data"
D64 = torch.float64


def _t(*v, dtype=D64):
    return torch.tensor(v, dtype=dtype)


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------------------------
# hand-computed values (each paper's formula)


def test_dpo_formula_and_smoothing():
    pc, pr, rc, rr = _t(-5.0), _t(-7.0), _t(-6.0), _t(-6.0)  # margin h = 1 - (-1) = 2
    assert dpo_loss(pc, pr, rc, rr, beta=0.1).item() == pytest.approx(-math.log(_sig(0.2)), rel=1e-12)
    eps = 0.1
    cons = -(1 - eps) * math.log(_sig(0.2)) - eps * math.log(_sig(-0.2))
    assert dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=eps).item() == pytest.approx(cons, rel=1e-12)
    rob = (-(1 - eps) * math.log(_sig(0.2)) + eps * math.log(_sig(-0.2))) / (1 - 2 * eps)
    got = dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=eps, smoothing="robust").item()
    assert got == pytest.approx(rob, rel=1e-12)
    assert dpo_hinge_loss(pc, pr, rc, rr, beta=0.1).item() == pytest.approx(0.8, rel=1e-12)
    assert dpo_hinge_loss(pc, pr, rc, rr, beta=1.0).item() == 0.0


def test_ipo_formula_minimum_and_token_average():
    pc, pr, rc, rr = _t(-5.0), _t(-7.0), _t(-6.0), _t(-6.0)  # h = 2
    assert ipo_loss(pc, pr, rc, rr, beta=0.1).item() == pytest.approx((2 - 5) ** 2, rel=1e-12)
    assert ipo_loss(pc, pr, rc, rr, beta=0.25).item() == 0.0  # minimum at h = 1/(2 beta)
    # the minimum over the margin is at 1/(2 beta), and the loss is the squared distance to it
    beta = 0.3
    hs = torch.linspace(-2, 5, 701, dtype=D64)
    z = torch.zeros_like(hs)
    vals = ipo_loss(hs, z, z, z, beta=beta)
    assert hs[vals.argmin()].item() == pytest.approx(1 / (2 * beta), abs=0.01)
    # token-averaged (TRL): log-ratios divided by lengths
    got = ipo_loss(pc, pr, rc, rr, beta=0.1, chosen_lengths=torch.tensor([4]), rejected_lengths=torch.tensor([2]))
    assert got.item() == pytest.approx((1 / 4 + 1 / 2 - 5) ** 2, rel=1e-12)


def test_fdpo_formulas_and_limits():
    pc, pr, rc, rr = _t(-5.0, -2.0), _t(-7.0, -9.0), _t(-6.0, -1.5), _t(-6.5, -8.0)
    lc, lr = (pc - rc), (pr - rr)
    uc, ur = lc.exp(), lr.exp()
    beta = 0.3
    exp = {
        "reverse_kl": lc - lr,
        "forward_kl": -1 / uc + 1 / ur,
        "js": torch.log(2 * uc / (1 + uc)) - torch.log(2 * ur / (1 + ur)),
        "alpha": (1 - uc ** -0.5) / 0.5 - (1 - ur ** -0.5) / 0.5,
    }
    for div, delta in exp.items():
        torch.testing.assert_close(fdpo_loss(pc, pr, rc, rr, beta=beta, divergence=div),
                                   -F.logsigmoid(beta * delta), rtol=1e-12, atol=0)
    # reverse KL is DPO; alpha = 1 is forward KL; alpha -> 0 approaches reverse KL
    torch.testing.assert_close(fdpo_loss(pc, pr, rc, rr, beta=beta), dpo_loss(pc, pr, rc, rr, beta=beta))
    torch.testing.assert_close(fdpo_loss(pc, pr, rc, rr, beta=beta, divergence="alpha", alpha=1.0),
                               fdpo_loss(pc, pr, rc, rr, beta=beta, divergence="forward_kl"))
    torch.testing.assert_close(fdpo_loss(pc, pr, rc, rr, beta=beta, divergence="alpha", alpha=1e-7),
                               dpo_loss(pc, pr, rc, rr, beta=beta), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fdpo_loss(pc, pr, rc, rr, beta=beta, divergence="js", loss="hinge"),
                               torch.relu(1 - beta * exp["js"]))


def test_simpo_formula():
    pc, pr = _t(-0.5), _t(-1.0)
    assert simpo_loss(pc, pr, beta=2.0, gamma=0.5).item() == pytest.approx(-math.log(_sig(2.0 * 0.5 - 0.5)))
    assert simpo_loss(pc, pr, beta=2.0, gamma=0.5, loss="hinge").item() == pytest.approx(0.5)
    # gamma = 0 and equal inputs: log 2
    assert simpo_loss(pc, pc, beta=3.0, gamma=0.0).item() == pytest.approx(math.log(2))


def test_rpo_formula():
    pc, pr, rc, rr = _t(-5.0, -8.0), _t(-7.0, -6.0), _t(-6.0, -8.0), _t(-6.0, -6.0)
    dpo = dpo_loss(pc, pr, rc, rr, beta=0.1)
    lens = torch.tensor([5, 4])
    torch.testing.assert_close(rpo_loss(pc, pr, rc, rr, beta=0.1, sft_weight=0.2, chosen_lengths=lens),
                               dpo + 0.2 * _t(1.0, 2.0))
    torch.testing.assert_close(rpo_loss(pc, pr, rc, rr, beta=0.1, sft_weight=0.01), dpo + 0.01 * _t(5.0, 8.0))
    torch.testing.assert_close(rpo_loss(pc, pr, rc, rr, beta=0.1, sft_weight=0.0), dpo)



def test_rpo_authors_cumulative_form_is_sft_weight_eta_times_beta():
    # YSLIU627/Regularized-Preference-Optimization@d0389c4d alignment-handbook/scripts/rpo_trainer.py:
    # losses = DPO sigmoid loss; losses -= policy_chosen_logps * beta * eta (summed log-probs), recipe
    # zephyr-7b-beta: beta = 0.01, eta = 0.005
    pc, pr, rc, rr = _t(-50.0, -80.0), _t(-70.0, -60.0), _t(-60.0, -80.0), _t(-60.0, -61.0)
    beta, eta = 0.01, 0.005
    logits = (pc - pr) - (rc - rr)
    authors = -F.logsigmoid(beta * logits) - pc * beta * eta
    torch.testing.assert_close(rpo_loss(pc, pr, rc, rr, beta=beta, sft_weight=beta * eta), authors)

def test_cpl_formula_discount_mask_label():
    c = _t(-1.0, -2.0, -0.5).unsqueeze(0)
    r = _t(-3.0, -1.0, -2.0).unsqueeze(0)
    a, lam, g = 0.2, 0.5, 0.9
    sc = a * (-1.0 + g * -2.0 + g * g * -0.5)
    sr = a * (-3.0 + g * -1.0 + g * g * -2.0)
    want = -math.log(math.exp(sc) / (math.exp(sc) + math.exp(lam * sr)))
    assert cpl_loss(c, r, alpha=a, bias=lam, discount=g).item() == pytest.approx(want, rel=1e-12)
    # mask drops the last step
    m = _t(1.0, 1.0, 0.0).unsqueeze(0)
    sc2, sr2 = a * -3.0, a * -4.0
    got = cpl_loss(c, r, alpha=a, bias=lam, chosen_mask=m, rejected_mask=m).item()
    assert got == pytest.approx(math.log1p(math.exp(lam * sr2 - sc2)), rel=1e-12)
    # soft label 0.5: symmetric mixture; label 0 swaps the roles
    l0 = cpl_loss(c, r, alpha=a, bias=lam, label=_t(0.0))
    torch.testing.assert_close(l0, cpl_loss(r, c, alpha=a, bias=lam))
    half = cpl_loss(c, r, alpha=a, bias=lam, label=_t(0.5))
    torch.testing.assert_close(half, 0.5 * (cpl_loss(c, r, alpha=a, bias=lam) + l0))


# ----------------------------------------------------------------------------------------------
# golden values from TRL 1.16, the SimPO authors' and the CPL authors' code


def _trl_cases():
    return torch.load(DATA / "trl_dpo_golden.pt", weights_only=True)["cases"]


def _ours_for_trl(c):
    args = (c["policy_chosen"], c["policy_rejected"], c["ref_chosen"], c["ref_rejected"])
    lt, fd, beta = c["loss_type"], c["f_divergence_type"], c["beta"]
    if lt == "ipo":
        return ipo_loss(*args, beta=beta, chosen_lengths=c["chosen_len"], rejected_lengths=c["rejected_len"])
    if lt == "robust":
        return dpo_loss(*args, beta=beta, label_smoothing=c["label_smoothing"], smoothing="robust")
    if lt == "sigmoid+sft":
        return rpo_loss(*args, beta=beta, sft_weight=c["sft_weight"], chosen_lengths=c["chosen_len"])
    div = {"reverse_kl": "reverse_kl", "forward_kl": "forward_kl", "js_divergence": "js",
           "alpha_divergence": "alpha"}[fd]
    alpha = 1.0 - c["f_alpha_divergence_coef"]  # TRL's coefficient a = 1 - paper's alpha
    if div == "reverse_kl" and lt == "sigmoid":
        return dpo_loss(*args, beta=beta)
    if div == "reverse_kl" and lt == "hinge":
        return dpo_hinge_loss(*args, beta=beta)
    return fdpo_loss(*args, beta=beta, divergence=div, alpha=alpha, loss=lt)


def test_trl_golden_dpo_family():
    cases = _trl_cases()
    kinds = {(c["loss_type"], c["f_divergence_type"]) for c in cases}
    assert ("ipo", "reverse_kl") in kinds and ("sigmoid", "alpha_divergence") in kinds and len(cases) >= 40
    for c in cases:
        ours = _ours_for_trl(c)
        tol = dict(rtol=1e-10, atol=1e-12) if c["loss"].dtype == D64 else dict(rtol=2e-5, atol=2e-6)
        torch.testing.assert_close(ours, c["loss"], **tol, msg=lambda m: f"{c['loss_type']} {c['f_divergence_type']}"
                                   f" a={c['f_alpha_divergence_coef']} beta={c['beta']}: {m}")
        if c["loss"].dtype != D64:  # float64 computation agrees with TRL's float32 one
            c64 = {k: (v.to(D64) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in c.items()}
            torch.testing.assert_close(_ours_for_trl(c64), c["loss"].to(D64), rtol=1e-5, atol=1e-6)


def test_trl_golden_ipo_sequence_level_is_unit_length_case():
    for c in _trl_cases():
        if c["loss_type"] == "ipo":
            args = (c["policy_chosen"], c["policy_rejected"], c["ref_chosen"], c["ref_rejected"])
            ones = torch.ones_like(c["chosen_len"])
            torch.testing.assert_close(ipo_loss(*args, beta=c["beta"]),
                                       ipo_loss(*args, beta=c["beta"], chosen_lengths=ones, rejected_lengths=ones))


def test_simpo_golden_authors_code():
    data = torch.load(DATA / "simpo_golden.pt", weights_only=True)
    assert len(data["cases"]) == 12
    for c in data["cases"]:
        pc = c["policy_chosen"].clone().requires_grad_(True)
        pr = c["policy_rejected"].clone().requires_grad_(True)
        gamma = c["gamma_beta_ratio"] * c["beta"]  # their config's ratio -> the paper's margin
        loss = simpo_loss(pc, pr, beta=c["beta"], gamma=gamma, label_smoothing=c["label_smoothing"],
                          loss=c["loss_type"])
        torch.testing.assert_close(loss.detach(), c["loss"], rtol=1e-10, atol=1e-12)
        loss.sum().backward()
        torch.testing.assert_close(pc.grad, c["grad_chosen"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(pr.grad, c["grad_rejected"], rtol=1e-10, atol=1e-12)


def test_cpl_golden_authors_code():
    data = torch.load(DATA / "cpl_golden.pt", weights_only=True)
    for c in data["cases"]:
        # their y = 1 prefers segment 2: segment 2 is our "chosen", label = y
        x1 = c["lp_1"].clone().requires_grad_(True)
        x2 = c["lp_2"].clone().requires_grad_(True)
        loss = cpl_loss(x2, x1, alpha=c["alpha"], bias=c["bias"], label=c["label"]).mean()
        torch.testing.assert_close(loss.detach(), c["loss"], rtol=1e-10, atol=1e-12)
        loss.backward()
        # their hand-written log-sum-exp rounds differently from softplus: ~1e-9 relative in the gradient
        torch.testing.assert_close(x1.grad, c["grad_1"], rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(x2.grad, c["grad_2"], rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# gradient direction: raising the chosen log-prob lowers the loss


def _paired(fn, **kw):
    return lambda pc, pr, rc, rr: fn(pc, pr, rc, rr, **kw)


PAIRED = {
    "dpo": _paired(dpo_loss, beta=0.1),
    "dpo_robust": _paired(dpo_loss, beta=0.1, label_smoothing=0.2, smoothing="robust"),
    "hinge": _paired(dpo_hinge_loss, beta=0.1),
    "ipo": _paired(ipo_loss, beta=0.1),
    "fdpo_fkl": _paired(fdpo_loss, beta=0.1, divergence="forward_kl"),
    "fdpo_js": _paired(fdpo_loss, beta=0.1, divergence="js"),
    "fdpo_alpha": _paired(fdpo_loss, beta=0.1, divergence="alpha", alpha=0.3),
    "rpo": _paired(rpo_loss, beta=0.1, sft_weight=0.2, chosen_lengths=torch.tensor([7, 3])),
    "simpo": lambda pc, pr, rc, rr: simpo_loss(pc, pr, beta=2.0, gamma=0.5),
}


@pytest.mark.parametrize("name", sorted(PAIRED))
def test_gradient_direction_paired(name):
    pc = _t(-12.0, -30.0).requires_grad_(True)
    pr, rc, rr = _t(-11.0, -28.0), _t(-11.5, -29.0), _t(-11.0, -27.0)
    if name == "simpo":
        pc = _t(-1.2, -0.9).requires_grad_(True)
        pr = _t(-1.0, -0.8)
    loss = PAIRED[name](pc, pr, rc, rr)
    loss.sum().backward()
    assert (pc.grad < 0).all(), pc.grad
    with torch.no_grad():
        assert (PAIRED[name](pc + 0.1, pr, rc, rr) < loss).all()


def test_gradient_direction_cpl():
    c = torch.full((3, 5), -2.0, dtype=D64, requires_grad=True)
    r = torch.full((3, 5), -1.0, dtype=D64, requires_grad=True)
    cpl_loss(c, r, alpha=0.1, bias=0.5).sum().backward()
    assert (c.grad < 0).all() and (r.grad > 0).all()


# ----------------------------------------------------------------------------------------------
# properties: finite for log-probs down to -1e4, shapes, dtypes

logp = st.floats(min_value=-1e4, max_value=0.0, allow_nan=False)
FINITE_FNS = dict(PAIRED)
FINITE_FNS["fdpo_alpha_big"] = _paired(fdpo_loss, beta=1.0, divergence="alpha", alpha=0.9)
FINITE_FNS["fdpo_fkl_big"] = _paired(fdpo_loss, beta=1.0, divergence="forward_kl")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=25, deadline=None)
@given(vals=st.lists(st.tuples(logp, logp, logp, logp), min_size=1, max_size=6))
def test_finite_loss_and_grad(dtype, vals):
    cols = [torch.tensor(list(c), dtype=dtype) for c in zip(*vals)]
    lens = torch.full((len(vals),), 5)
    for name, fn in FINITE_FNS.items():
        pc = cols[0].clone().requires_grad_(True)
        pr = cols[1].clone().requires_grad_(True)
        if name == "rpo":
            loss = rpo_loss(pc, pr, cols[2], cols[3], beta=0.1, sft_weight=0.2, chosen_lengths=lens)
        else:
            loss = fn(pc, pr, cols[2], cols[3])
        assert loss.shape == (len(vals),) and loss.dtype == dtype, name
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all(), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 4), t=st.integers(1, 8), lo=st.floats(-1e4, -1.0))
def test_cpl_finite_and_shape(dtype, b, t, lo):
    g = torch.Generator().manual_seed(b * 10 + t)
    c = (torch.rand(b, t, generator=g, dtype=dtype) * lo).requires_grad_(True)
    r = (torch.rand(b, t, generator=g, dtype=dtype) * lo).requires_grad_(True)
    loss = cpl_loss(c, r, alpha=1.0, bias=0.5, discount=0.99)
    assert loss.shape == (b,) and loss.dtype == dtype
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()


def test_f_divergence_score_capped():
    x = torch.tensor([-1e4, 0.0, 1e4])
    for div in ("forward_kl", "alpha"):
        assert torch.isfinite(f_divergence_score(x, divergence=div, alpha=0.5)).all()


# ----------------------------------------------------------------------------------------------
# bad arguments and registry


def _z(n=2, dtype=D64):
    return torch.zeros(n, dtype=dtype)


@pytest.mark.parametrize("call,word", [
    (lambda: dpo_loss(_z(), _z(), _z(), _z(), beta=0.0), "beta"),
    (lambda: dpo_loss(_z(), _z(), _z(), _z(), beta=float("nan")), "beta"),
    (lambda: dpo_loss(_z(), _z(), _z(), _z(), label_smoothing=0.5), "label_smoothing"),
    (lambda: dpo_loss(_z(), _z(), _z(), _z(), smoothing="x"), "smoothing"),
    (lambda: dpo_loss(_z(), _z(3), _z(), _z()), "policy_rejected_logps"),
    (lambda: dpo_loss(_z(), _z(), torch.zeros(2, dtype=torch.long), _z()), "ref_chosen_logps"),
    (lambda: dpo_hinge_loss(_z(), _z(), _z(), _z(), beta=-1.0), "beta"),
    (lambda: ipo_loss(_z(), _z(), _z(), _z(), chosen_lengths=torch.ones(2)), "chosen_lengths"),
    (lambda: ipo_loss(_z(), _z(), _z(), _z(), chosen_lengths=torch.ones(3), rejected_lengths=torch.ones(3)),
     "chosen_lengths"),
    (lambda: fdpo_loss(_z(), _z(), _z(), _z(), divergence="hellinger"), "divergence"),
    (lambda: fdpo_loss(_z(), _z(), _z(), _z(), divergence="alpha", alpha=0.0), "alpha"),
    (lambda: fdpo_loss(_z(), _z(), _z(), _z(), loss="ipo"), "loss"),
    (lambda: simpo_loss(_z(), _z(), gamma=-0.1), "gamma"),
    (lambda: simpo_loss(_z(), _z(), beta=0), "beta"),
    (lambda: simpo_loss(_z(), [0.0, 0.0]), "policy_rejected_avg_logps"),
    (lambda: rpo_loss(_z(), _z(), _z(), _z(), sft_weight=-1.0), "sft_weight"),
    (lambda: rpo_loss(_z(), _z(), _z(), _z(), chosen_lengths=torch.ones(5)), "chosen_lengths"),
    (lambda: cpl_loss(_z(), _z()), "chosen_logps"),
    (lambda: cpl_loss(torch.zeros(2, 3), torch.zeros(2, 3), bias=1.5), "bias"),
    (lambda: cpl_loss(torch.zeros(2, 3), torch.zeros(2, 3), discount=0.0), "discount"),
    (lambda: cpl_loss(torch.zeros(2, 3), torch.zeros(2, 3), alpha=-1), "alpha"),
    (lambda: cpl_loss(torch.zeros(2, 3), torch.zeros(2, 3), label=torch.ones(3)), "label"),
    (lambda: cpl_loss(torch.zeros(2, 3), torch.zeros(2, 3), chosen_mask=torch.ones(2, 4)), "chosen_mask"),
])
def test_bad_arguments(call, word):
    with pytest.raises(ValueError, match=word):
        call()


def test_registry_records():
    for name, arxiv, seed in [("dpo_loss", "2305.18290", False), ("ipo_loss", "2310.12036", False),
                              ("dpo_hinge_loss", "2305.10425", False), ("simpo_loss", "2405.14734", True),
                              ("fdpo_loss", "2309.16240", True), ("rpo_loss", "2405.16436", True),
                              ("cpl_loss", "2310.13639", True)]:
        rec = get(name)
        assert rec.kind == "preference" and rec.arxiv == arxiv and rec.seed is seed
        assert arxiv in rec.load().__doc__
