"""Iterative / online preference objectives: INPO, DNO, EGPO, APO, HyPO, SRPO, SSPO, SuperHF, SPO,
reward ensembles, token-level implicit rewards (docs/preference_iterative.md)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gradwise.preference import (
    aggregate_rewards, apo_dpo_loss, apo_extrapolated_logps, cumulative_implicit_rewards, dno_loss, dpo_loss,
    egpo_full_step_loss, egpo_half_step_loss, hypo_loss, inpo_loss, ipo_loss, spo_win_rate_reward, srpo_loss,
    sspo_loss, superhf_loss, superhf_select, token_implicit_rewards,
)

D = torch.float64


def t(*v):
    return torch.tensor(v, dtype=D)


def rnd(n=5, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return -scale * torch.rand(n, generator=g, dtype=D) - 1.0


# ---------------------------------------------------------------- INPO
def test_inpo_hand_value():
    # h = (-1 - (-3)) - 0.2 (0 - (-1)) - 0.8 (-2 - 0) = 2 - 0.2 + 1.6 = 3.4; eta/2 = 1
    out = inpo_loss(t(-1.0), t(-3.0), t(-2.0), t(0.0), t(0.0), t(-1.0), eta=2.0, tau=0.1)
    assert torch.allclose(out, t((3.4 - 1.0) ** 2))


def test_inpo_limits_are_ipo():
    a, b, c, d, e, f = (rnd(seed=s) for s in range(6))
    eta = 4.0
    # eta*tau = 1: IPO against pi_ref with beta = 1/eta (target 1/(2 beta) = eta/2)
    assert torch.allclose(inpo_loss(a, b, c, d, e, f, eta=eta, tau=1 / eta), ipo_loss(a, b, e, f, beta=1 / eta))
    # tau = 0: IPO against the previous iterate
    assert torch.allclose(inpo_loss(a, b, c, d, e, f, eta=eta, tau=0.0), ipo_loss(a, b, c, d, beta=1 / eta))


def test_inpo_minimizer_is_the_mirror_descent_target():
    # the loss is 0 exactly when log pi ratio = eta*tau ref ratio + (1-eta*tau) prev ratio + eta/2
    c, d, e, f = (rnd(seed=s) for s in range(4))
    eta, tau = 0.5, 0.6
    mix = eta * tau
    target = mix * (e - f) + (1 - mix) * (c - d) + eta / 2
    b = rnd(seed=9)
    assert torch.allclose(inpo_loss(b + target, b, c, d, e, f, eta=eta, tau=tau), torch.zeros(5, dtype=D))


# ---------------------------------------------------------------- DNO
def test_dno_hard_labels_are_dpo_against_previous_iterate():
    a, b, c, d = (rnd(seed=s) for s in range(4))
    assert torch.allclose(dno_loss(a, b, c, d, eta=0.3), dpo_loss(a, b, c, d, beta=0.3))


def test_dno_soft_label_formula_and_minimizer():
    a, b, c, d = t(-1.0), t(-2.0), t(-1.5), t(-1.5)
    r1, r2 = t(0.7), t(0.2)
    z = 2.0 * ((-1.0 + 1.5) - (-2.0 + 1.5))
    p = 1 / (1 + math.exp(-0.5))
    ref = -(p * math.log(1 / (1 + math.exp(-z))) + (1 - p) * math.log(1 / (1 + math.exp(z))))
    assert torch.allclose(dno_loss(a, b, c, d, eta=2.0, reward_1=r1, reward_2=r2), t(ref))
    # stationary where eta * log-ratio difference = r1 - r2
    x = (a - a + 0.25).requires_grad_(True)   # eta (x - c) ... : z = eta * (x - (-1.5) - (b - d)) with b = d
    loss = dno_loss(x - 1.5, d, c, d, eta=2.0, reward_1=r1, reward_2=r2)
    loss.sum().backward()
    assert abs(x.grad.item()) < 1e-12


# ---------------------------------------------------------------- EGPO
def test_egpo_matches_authors_compute_losses_form():
    # ExtragradientTrainer._compute_losses: (lp0 - lp1 - ref0 + ref1 - (P0 - P1)/beta)^2
    lp0, lp1, r0, r1 = (rnd(seed=s) for s in range(4))
    p0 = torch.rand(5, dtype=D, generator=torch.Generator().manual_seed(7))
    p1 = torch.rand(5, dtype=D, generator=torch.Generator().manual_seed(8))
    ref = (lp0 - lp1 - r0 + r1 - (p0 - p1) / 0.2) ** 2
    assert torch.allclose(egpo_half_step_loss(lp0, lp1, r0, r1, p0, p1, beta=0.2), ref)
    assert torch.allclose(egpo_full_step_loss(lp0, lp1, r0, r1, p0, p1, beta=0.2), ref)


def test_egpo_online_ipo2_with_hard_label_is_ipo():
    a, b, c, d = (rnd(seed=s) for s in range(4))
    one, half = torch.ones(5, dtype=D), torch.full((5,), 0.5, dtype=D)
    assert torch.allclose(egpo_half_step_loss(a, b, c, d, one, half, beta=0.1), ipo_loss(a, b, c, d, beta=0.1))


def test_egpo_tabular_extragradient_gradient_is_mirror_descent_direction():
    # Tabular softmax policy, full-support expectation over y, y' uniform and y'' ~ opponent: the gradient of
    # the online IPO loss in the logits is proportional to beta (log pi - log pi_ref) - P(. > opponent) + const.
    torch.manual_seed(0)
    n, beta = 4, 0.5
    P = torch.rand(n, n, dtype=D)
    P = (P - P.T) / 2 + 0.5
    theta = torch.randn(n, dtype=D, requires_grad=True)
    ref = torch.log_softmax(torch.randn(n, dtype=D), 0)
    opp = torch.softmax(torch.randn(n, dtype=D), 0)
    lp = torch.log_softmax(theta, 0)
    pref = P @ opp
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    loss = egpo_half_step_loss(lp[i.flatten()], lp[j.flatten()], ref[i.flatten()], ref[j.flatten()],
                               pref[i.flatten()], pref[j.flatten()], beta=beta).mean()
    (g,) = torch.autograd.grad(loss, theta)
    # gradient w.r.t. log pi (before the softmax Jacobian): 4/n * (u - mean u), u = (lp - ref) - pref/beta
    u = (lp - ref) - pref / beta
    gl = 4.0 / n * (u - u.mean())
    pi = lp.exp().detach()
    J = torch.diag(torch.ones(n, dtype=D)) - pi.unsqueeze(0)   # d log pi_i / d theta_k = delta_ik - pi_k
    expected = J.T @ gl.detach()
    assert torch.allclose(g, expected, atol=1e-12)


# ---------------------------------------------------------------- APO
def test_apo_extrapolation_and_loss():
    cur, prev = t(-2.0, -1.0), t(-3.0, -0.5)
    assert torch.allclose(apo_extrapolated_logps(cur, prev, alpha=0.3), cur + 0.3 * (cur - prev))
    assert torch.equal(apo_extrapolated_logps(cur, prev, alpha=0.0), cur)
    a, b, c, d = (rnd(seed=s) for s in range(4))
    assert torch.allclose(apo_dpo_loss(a, b, c, d, beta=0.2), dpo_loss(a, b, c, d, beta=0.2))
    # the left-out normalizer log Z(x) cancels
    assert torch.allclose(apo_dpo_loss(a, b, c + 7.0, d + 7.0, beta=0.2), apo_dpo_loss(a, b, c, d, beta=0.2))


# ---------------------------------------------------------------- HyPO
def test_hypo_value_and_score_function_gradient():
    a, b, c, d = (rnd(seed=s) for s in range(4))
    on = rnd(seed=5).requires_grad_(True)
    ref_on = rnd(seed=6)
    out = hypo_loss(a, b, c, d, on, ref_on, beta=0.1, lam=0.3)
    assert torch.allclose(out, dpo_loss(a, b, c, d, beta=0.1) + 0.3 * (on - ref_on).detach())
    out.sum().backward()
    assert torch.allclose(on.grad, 0.3 * (on - ref_on).detach())   # k1 * d log pi
    assert torch.allclose(hypo_loss(a, b, c, d, on.detach(), ref_on, lam=0.0), dpo_loss(a, b, c, d))


def test_hypo_kl_gradient_is_unbiased_for_a_tabular_policy():
    # E_{y~pi}[k1 * grad log pi(y)] = grad KL(pi || pi_ref) for a softmax policy
    theta = torch.randn(5, dtype=D, requires_grad=True)
    ref = torch.log_softmax(torch.randn(5, dtype=D), 0)
    lp = torch.log_softmax(theta, 0)
    z = torch.zeros(5, dtype=D)
    per_y = hypo_loss(z, z, z, z, lp, ref, lam=1.0) - math.log(2)
    (g,) = torch.autograd.grad((lp.exp().detach() * per_y).sum(), theta, retain_graph=True)
    (g_true,) = torch.autograd.grad((lp.exp() * (lp - ref)).sum(), theta)
    assert torch.allclose(g, g_true, atol=1e-12)


# ---------------------------------------------------------------- SRPO
def test_srpo_hand_value_and_zero_at_solution():
    z = torch.zeros(3, dtype=D)
    assert torch.allclose(srpo_loss(*[z] * 10, beta=0.1, alpha=0.5), torch.full((3,), 0.625, dtype=D))
    beta = 0.5
    # choose g(y_w|y_l) - g(y_l|y_l) = 1/(2 beta) and g(y_w|y_l) - h(y_l) - g(y_l|y_w) + h(y_w) = 1/beta
    g_wl, g_ll = t(1.0), t(0.0)
    h_w, h_l, g_lw = t(0.5), t(0.0), t(1.0 + 0.5 - 2.0)
    out = srpo_loss(h_w, h_l, t(0.0), t(0.0), g_wl, g_ll, g_lw, t(0.0), t(0.0), t(0.0), beta=beta, alpha=0.3)
    assert torch.allclose(out, t(0.0))


# ---------------------------------------------------------------- SSPO
def test_sspo_value():
    align = t(0.5, 1.0)
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]], dtype=D)
    lab = torch.tensor([2, 0])
    ref = align + 0.7 * F.cross_entropy(logits, lab, reduction="none")
    assert torch.allclose(sspo_loss(align, logits, lab, lam=0.7), ref)
    assert torch.allclose(sspo_loss(align, logits, lab, lam=0.0), align)


# ---------------------------------------------------------------- SuperHF
def test_superhf_matches_kldivloss_per_example():
    torch.manual_seed(1)
    pol = torch.log_softmax(torch.randn(2, 5, 7, dtype=D), -1)
    pri = torch.log_softmax(torch.randn(2, 5, 7, dtype=D), -1)
    lab = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = superhf_loss(pol, pri, lab, mask, kl_coef=0.35)
    kl = torch.nn.KLDivLoss(reduction="batchmean", log_target=True)   # the authors' call
    for i in range(2):
        m = mask[i]
        ce = F.nll_loss(pol[i, m], lab[i, m])
        ref = ce + 0.35 * torch.clamp(kl(pol[i, m], pri[i, m]), min=0.0)
        assert torch.allclose(out[i], ref)


def test_superhf_select():
    r = torch.tensor([[0.1, 0.9, 0.5, 0.7], [3.0, 1.0, 2.0, 0.0]])
    assert superhf_select(r, top_k=2).tolist() == [[False, True, False, True], [True, False, True, False]]
    with pytest.raises(ValueError, match="top_k"):
        superhf_select(r, top_k=5)


# ---------------------------------------------------------------- SPO
def test_spo_win_rate_reward():
    P = torch.tensor([[0.5, 1.0, 0.0], [0.0, 0.5, 1.0], [1.0, 0.0, 0.5]])   # rock-paper-scissors
    assert torch.allclose(spo_win_rate_reward(P), torch.full((3,), 0.5))
    Q = torch.rand(2, 4, 4)
    loop = torch.stack([torch.stack([(Q[b, i].sum() - Q[b, i, i]) / 3 for i in range(4)]) for b in range(2)])
    assert torch.allclose(spo_win_rate_reward(Q), loop)
    assert torch.allclose(spo_win_rate_reward(Q, include_self=True), Q.mean(-1))


# ---------------------------------------------------------------- reward ensembles
def test_aggregate_rewards_matches_authors_objectives():
    R = torch.randn(4, 6, dtype=D, generator=torch.Generator().manual_seed(3))
    Rn = R.numpy()
    assert np.allclose(aggregate_rewards(R, "mean").numpy(), np.mean(Rn, 0))
    assert np.allclose(aggregate_rewards(R, "worst_case").numpy(), np.min(Rn, 0))
    assert np.allclose(aggregate_rewards(R, "uncertainty_weighted", coef=0.5).numpy(),
                       np.mean(Rn, 0) - 0.5 * np.var(Rn, 0))            # bon/ensemble_rm.py
    assert torch.allclose(aggregate_rewards(R, "uncertainty_weighted", coef=0.5, unbiased=True),
                          torch.mean(R, 0) - 0.5 * torch.var(R, 0))     # ppo_reward_functions.py
    assert (aggregate_rewards(R, "worst_case") <= aggregate_rewards(R, "mean")).all()


# ---------------------------------------------------------------- r -> Q*
def test_token_rewards_sum_to_sequence_reward():
    torch.manual_seed(2)
    lp, lr = -torch.rand(3, 6, dtype=D) * 4, -torch.rand(3, 6, dtype=D) * 4
    mask = torch.rand(3, 6) > 0.3
    r = token_implicit_rewards(lp, lr, mask, beta=0.2)
    seq = 0.2 * ((lp * mask).sum(-1) - (lr * mask).sum(-1))
    assert torch.allclose(r.sum(-1), seq)
    assert (r[~mask] == 0).all()
    c = cumulative_implicit_rewards(lp, lr, mask, beta=0.2)
    assert torch.allclose(c, r.cumsum(-1)) and torch.allclose(c[:, -1], seq)


# ---------------------------------------------------------------- gradient direction
PAIR_LOSSES = {
    "inpo": lambda w, l, z: inpo_loss(w, l, z, z, z, z, eta=1.0, tau=0.5),
    "dno": lambda w, l, z: dno_loss(w, l, z, z, eta=0.5),
    "dno_soft": lambda w, l, z: dno_loss(w, l, z, z, eta=0.5, reward_1=z + 0.9, reward_2=z + 0.1),
    "egpo_half": lambda w, l, z: egpo_half_step_loss(w, l, z, z, z + 1.0, z, beta=0.1),
    "egpo_full": lambda w, l, z: egpo_full_step_loss(w, l, z, z, z + 1.0, z, beta=0.1),
    "apo": lambda w, l, z: apo_dpo_loss(w, l, z, z, beta=0.1),
    "hypo": lambda w, l, z: hypo_loss(w, l, z, z, z, z, lam=0.1),
    "srpo": lambda w, l, z: srpo_loss(w, l, z, z, z, z, z, z, z, z, beta=0.1, alpha=0.5),
}


@pytest.mark.parametrize("name", sorted(PAIR_LOSSES))
def test_raising_chosen_lowers_loss_and_raising_rejected_raises_it(name):
    z = torch.zeros(3, dtype=D)
    w = z.clone().requires_grad_(True)
    l = z.clone().requires_grad_(True)
    PAIR_LOSSES[name](w, l, z).sum().backward()
    assert (w.grad < 0).all(), w.grad
    assert (l.grad > 0).all(), l.grad


def test_srpo_raising_revision_towards_winner_lowers_loss():
    z = torch.zeros(2, dtype=D)
    g = z.clone().requires_grad_(True)
    srpo_loss(z, z, z, z, g, z, z, z, z, z).sum().backward()
    assert (g.grad < 0).all()


# ---------------------------------------------------------------- properties
logp = st.floats(min_value=-1e4, max_value=0.0, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(st.lists(logp, min_size=10, max_size=10), st.sampled_from([torch.float32, torch.float64]))
def test_finite_values_and_gradients_for_extreme_logps(vals, dtype):
    v = torch.tensor(vals, dtype=dtype)
    args = [v[i:i + 1].repeat(2).clone().requires_grad_(True) for i in range(10)]
    half = torch.full((2,), 0.5, dtype=dtype)
    outs = [
        inpo_loss(*args[:6], eta=2.0, tau=0.3),
        dno_loss(*args[:4], eta=0.5),
        dno_loss(*args[:4], eta=0.5, reward_1=half, reward_2=half * 0),
        egpo_half_step_loss(*args[:4], half, half * 0, beta=0.1),
        egpo_full_step_loss(*args[:4], half, half * 0, beta=0.1),
        apo_dpo_loss(*args[:4]),
        hypo_loss(*args[:6], lam=0.1),
        srpo_loss(*args),
        apo_extrapolated_logps(args[0], args[1], alpha=0.5),
    ]
    for o in outs:
        assert o.shape == (2,) and o.dtype == dtype and torch.isfinite(o).all()
    sum(o.sum() for o in outs).backward()
    for a in args:
        assert a.grad is None or torch.isfinite(a.grad).all()
    tok = token_implicit_rewards(v.view(2, 5), v.flip(0).view(2, 5), torch.ones(2, 5, dtype=torch.bool))
    assert tok.shape == (2, 5) and torch.isfinite(cumulative_implicit_rewards(
        v.view(2, 5), v.flip(0).view(2, 5), torch.ones(2, 5, dtype=torch.bool))).all()


def test_superhf_finite_for_extreme_logprobs():
    lp = torch.log_softmax(torch.tensor([[[0.0, -1e4, -1e4]]], dtype=torch.float32), -1).repeat(2, 3, 1)
    lp.requires_grad_(True)
    pri = torch.log_softmax(torch.tensor([[[-1e4, 0.0, -1e4]]], dtype=torch.float32), -1).repeat(2, 3, 1)
    out = superhf_loss(lp, pri, torch.full((2, 3), 2), torch.ones(2, 3, dtype=torch.bool), kl_coef=0.1)
    out.sum().backward()
    assert out.shape == (2,) and torch.isfinite(out).all() and torch.isfinite(lp.grad).all()


# ---------------------------------------------------------------- bad arguments
Z = torch.zeros(2)


@pytest.mark.parametrize("call,match", [
    (lambda: inpo_loss(Z, Z, Z, Z, Z, Z, eta=0.0, tau=0.1), "eta"),
    (lambda: inpo_loss(Z, Z, Z, Z, Z, Z, eta=1.0, tau=-1.0), "tau"),
    (lambda: inpo_loss(Z, Z, Z, Z, Z, Z, eta=2.0, tau=1.0), "eta\\*tau"),
    (lambda: inpo_loss(Z, Z, Z, Z, Z, torch.zeros(3), eta=1.0, tau=0.1), "ref_rejected_logps"),
    (lambda: dno_loss(Z, Z, Z, Z, eta=-1.0), "eta"),
    (lambda: dno_loss(Z, Z, Z, Z, eta=1.0, reward_1=Z), "reward"),
    (lambda: egpo_half_step_loss(Z, Z, Z, Z, Z, Z, beta=0.0), "beta"),
    (lambda: egpo_full_step_loss(Z, Z, Z, Z, Z, [0.0, 0.0], beta=0.1), "pref_prime"),
    (lambda: apo_extrapolated_logps(Z, Z, alpha=-0.1), "alpha"),
    (lambda: apo_dpo_loss(Z, Z, Z, Z, beta=float("inf")), "beta"),
    (lambda: hypo_loss(Z, Z, Z, Z, Z, Z, lam=-1.0), "lam"),
    (lambda: hypo_loss(Z, Z, Z, Z, torch.zeros(2, dtype=torch.long), Z, lam=1.0), "policy_online_logps"),
    (lambda: srpo_loss(*[Z] * 10, alpha=1.5), "alpha"),
    (lambda: sspo_loss(Z, torch.zeros(3, 4), torch.zeros(2, dtype=torch.long)), "degree_logits"),
    (lambda: sspo_loss(Z, torch.zeros(2, 4), torch.zeros(2)), "degree_labels"),
    (lambda: superhf_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long),
                          torch.ones(2, 3), kl_coef=-0.1), "kl_coef"),
    (lambda: superhf_loss(torch.zeros(2, 3), torch.zeros(2, 3), Z, Z, kl_coef=0.1), "policy_logprobs"),
    (lambda: spo_win_rate_reward(torch.zeros(3, 2)), "prefs"),
    (lambda: aggregate_rewards(torch.zeros(3, 2), "median"), "method"),
    (lambda: aggregate_rewards(torch.zeros(3, 2), "uncertainty_weighted", coef=-1.0), "coef"),
    (lambda: aggregate_rewards(torch.zeros(3), "mean"), "rewards"),
    (lambda: token_implicit_rewards(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4)), "mask"),
    (lambda: token_implicit_rewards(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), beta=0), "beta"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
