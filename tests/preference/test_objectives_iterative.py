"""Iterative / online preference objectives: INPO, DNO, EGPO, APO, HyPO, SRPO, SSPO, SuperHF, SPO,
reward ensembles, token-level implicit rewards (docs/preference_iterative.md)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gradwise.preference import (
    aggregate_rewards, apo_dpo_loss, apo_extrapolated_logps, apo_extrapolated_parameters,
    cumulative_implicit_rewards, dno_loss, dpo_loss,
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
def test_inpo_hand_value_in_the_papers_convention():
    # Zhang et al. (2407.00617) Sec. 3.2 / Algorithm 1: h = log ratio - (tau/eta) ref ratio - ((eta-tau)/eta)
    # prev ratio, loss (h - 1/(2 eta))^2. eta = 2, tau = 0.5: weights 1/4 and 3/4, target 1/4.
    # h = (-1 - (-3)) - 0.25 (0 - (-1)) - 0.75 (-2 - 0) = 2 - 0.25 + 1.5 = 3.25
    out = inpo_loss(t(-1.0), t(-3.0), t(-2.0), t(0.0), t(0.0), t(-1.0), eta=2.0, tau=0.5)
    assert torch.allclose(out, t((3.25 - 0.25) ** 2))
    # the paper's run: eta = 0.005, tau = eta / 3 -> target 1/(2 eta) = 100, weights 1/3 and 2/3
    out = inpo_loss(t(-1.0), t(-3.0), t(-2.0), t(0.0), t(0.0), t(-1.0), eta=0.005, tau=0.005 / 3)
    assert torch.allclose(out, t((2.0 - 1 / 3 + 4 / 3 - 100.0) ** 2))


def test_inpo_limits_are_ipo():
    a, b, c, d, e, f = (rnd(seed=s) for s in range(6))
    eta = 0.25
    # tau = eta: IPO against pi_ref with IPO's beta = eta (target 1/(2 beta))
    assert torch.allclose(inpo_loss(a, b, c, d, e, f, eta=eta, tau=eta), ipo_loss(a, b, e, f, beta=eta))
    # tau = 0 ("INPO w/o KL"): IPO against the previous iterate
    assert torch.allclose(inpo_loss(a, b, c, d, e, f, eta=eta, tau=0.0), ipo_loss(a, b, c, d, beta=eta))


def test_inpo_minimizer_is_the_mirror_descent_target():
    # Eq. 5-6: the loss is 0 exactly when log pi ratio = (tau/eta) ref ratio + (1 - tau/eta) prev ratio + 1/(2 eta)
    c, d, e, f = (rnd(seed=s) for s in range(4))
    eta, tau = 0.5, 0.3
    w = tau / eta
    target = w * (e - f) + (1 - w) * (c - d) + 1 / (2 * eta)
    b = rnd(seed=9)
    assert torch.allclose(inpo_loss(b + target, b, c, d, e, f, eta=eta, tau=tau), torch.zeros(5, dtype=D))


def test_inpo_tabular_minimizer_is_the_omd_update():
    # Eq. 4-5 on a tabular policy: the minimizer of the population loss Eq. 7 (pairs y, y' ~ pi_t, target
    # (P(y > pi_t) - P(y' > pi_t)) / eta) is pi_t^(1 - tau/eta) pi_ref^(tau/eta) exp(P(y > pi_t) / eta).
    n, eta, tau = 4, 0.7, 0.2
    g = torch.Generator().manual_seed(5)
    P = torch.rand(n, n, generator=g, dtype=D)
    P = (P - P.T) / 2 + 0.5
    lt = torch.log_softmax(torch.randn(n, generator=g, dtype=D), 0)
    lr = torch.log_softmax(torch.randn(n, generator=g, dtype=D), 0)
    win = P @ lt.exp()
    omd = torch.log_softmax((1 - tau / eta) * lt + (tau / eta) * lr + win / eta, 0)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    i, j = i.flatten(), j.flatten()
    # Eq. 8 in expectation: pair (y, y') kept as (y_w, y_l) with prob P(y > y'), weight pi_t(y) pi_t(y')
    wgt = (lt[i] + lt[j]).exp() * P[i, j]
    theta = omd.clone().requires_grad_(True)
    loss = (wgt * inpo_loss(theta[i], theta[j], lt[i], lt[j], lr[i], lr[j], eta=eta, tau=tau)).sum()
    (grad,) = torch.autograd.grad(loss, theta)
    assert torch.allclose(grad, torch.zeros(n, dtype=D), atol=1e-10)


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


def test_apo_parameter_extrapolation_matches_logprob_extrapolation_for_softmax_linear_policy():
    # arXiv 2410.06293 Sec. 5.2: for a softmax-linear policy, theta + alpha (theta - theta_prev) is exactly the
    # extrapolation log pi_hat = log pi + alpha (log pi - log pi_prev) - log Z of Eq. (3.7)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=g, dtype=D)
    w0, w1 = torch.randn(4, 5, generator=g, dtype=D), torch.randn(4, 5, generator=g, dtype=D)
    alpha = 0.3
    w_hat = apo_extrapolated_parameters({"w": w1}, {"w": w0}, alpha=alpha)["w"]
    lp0, lp1 = F.log_softmax(x @ w0, -1), F.log_softmax(x @ w1, -1)
    expected = F.log_softmax(apo_extrapolated_logps(lp1, lp0, alpha=alpha), -1)   # renormalize: - log Z(x)
    assert torch.allclose(F.log_softmax(x @ w_hat, -1), expected, atol=1e-12)
    # the momentum direction: (1 + alpha) * new - alpha * old, not a pull back towards the old iterate
    assert torch.allclose(w_hat, 1.3 * w1 - 0.3 * w0)
    assert torch.equal(apo_extrapolated_parameters({"w": w1}, {"w": w0}, alpha=0.0)["w"], w1)


def test_apo_parameter_extrapolation_copies_integer_buffers_and_validates():
    cur = {"w": t(1.0, 2.0), "n": torch.tensor(5)}
    prev = {"w": t(0.0, 2.0), "n": torch.tensor(3)}
    out = apo_extrapolated_parameters(cur, prev, alpha=0.5)
    assert torch.equal(out["n"], torch.tensor(5)) and torch.allclose(out["w"], t(1.5, 2.0))
    assert out["w"].grad_fn is None
    with pytest.raises(ValueError, match="prev"):
        apo_extrapolated_parameters(cur, {"w": t(0.0, 2.0)}, alpha=0.5)
    with pytest.raises(ValueError, match="prev"):
        apo_extrapolated_parameters(cur, {"w": t(0.0), "n": torch.tensor(3)}, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        apo_extrapolated_parameters(cur, prev, alpha=-0.1)


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


def test_hypo_rloo_value_and_leave_one_out_gradient():
    a, b, c, d = (rnd(seed=s) for s in range(4))
    g = torch.Generator().manual_seed(11)
    on = (-3.0 * torch.rand(5, 4, generator=g, dtype=D)).requires_grad_(True)
    ref_on = -3.0 * torch.rand(5, 4, generator=g, dtype=D)
    out = hypo_loss(a, b, c, d, on, ref_on, beta=0.1, lam=0.3)
    k1 = (on - ref_on).detach()
    assert out.shape == (5,)
    assert torch.allclose(out, dpo_loss(a, b, c, d, beta=0.1) + 0.3 * k1.mean(-1))
    out.sum().backward()
    loo = torch.stack([torch.cat([k1[:, :i], k1[:, i + 1:]], 1).mean(1) for i in range(4)], 1)
    assert torch.allclose(on.grad, 0.3 * (k1 - loo) / 4)
    # one sample per prompt given as [B, 1]: no baseline, same as the [B] form
    x = on.detach()[:, :1]
    assert torch.allclose(hypo_loss(a, b, c, d, x, ref_on[:, :1], lam=0.3), hypo_loss(a, b, c, d, x[:, 0],
                                                                                       ref_on[:, 0], lam=0.3))


def test_hypo_rloo_kl_gradient_is_unbiased_for_a_tabular_policy():
    # E_{y1, y2 ~ pi}[grad of the K = 2 leave-one-out term] = grad KL(pi || pi_ref)
    n = 4
    theta = torch.randn(n, dtype=D, generator=torch.Generator().manual_seed(2), requires_grad=True)
    ref = torch.log_softmax(torch.randn(n, dtype=D, generator=torch.Generator().manual_seed(3)), 0)
    lp = torch.log_softmax(theta, 0)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    i, j = i.flatten(), j.flatten()
    z = torch.zeros(n * n, dtype=D)
    per = hypo_loss(z, z, z, z, torch.stack([lp[i], lp[j]], 1), torch.stack([ref[i], ref[j]], 1), lam=1.0)
    w = (lp[i] + lp[j]).exp().detach()
    (g,) = torch.autograd.grad((w * per).sum(), theta, retain_graph=True)
    (g_true,) = torch.autograd.grad((lp.exp() * (lp - ref)).sum(), theta)
    assert torch.allclose(g, g_true, atol=1e-12)


# ---------------------------------------------------------------- SRPO
def test_srpo_hand_value_and_zero_at_solution():
    z = torch.zeros(3, dtype=D)
    assert torch.allclose(srpo_loss(*[z] * 10, beta=0.1, alpha=0.5), torch.full((3,), 0.625, dtype=D))
    # with the draft-y_w term: 0.5 * (0.25 + 0.25) + 0.5 * 1
    assert torch.allclose(srpo_loss(*[z] * 10, beta=0.1, alpha=0.5, improve_w_given_w_logps=z,
                                    ref_w_given_w_logps=z), torch.full((3,), 0.75, dtype=D))
    beta = 0.5
    # choose g(y_w|y_l) - g(y_l|y_l) = 1/(2 beta), g(y_w|y_w) - g(y_l|y_w) = 1/(2 beta) and
    # g(y_w|y_l) - h(y_l) - g(y_l|y_w) + h(y_w) = 1/beta
    g_wl, g_ll = t(1.0), t(0.0)
    h_w, h_l, g_lw = t(0.5), t(0.0), t(1.0 + 0.5 - 2.0)
    g_ww = g_lw + 1.0
    out = srpo_loss(h_w, h_l, t(0.0), t(0.0), g_wl, g_ll, g_lw, t(0.0), t(0.0), t(0.0), beta=beta, alpha=0.3,
                    improve_w_given_w_logps=g_ww, ref_w_given_w_logps=t(0.0))
    assert torch.allclose(out, t(0.0))


def test_srpo_matches_trl_pr_reimplementation_golden():
    # tests/data/srpo_golden.pt: SRPOTrainer.srpo_loss of TRL PR #1772 (tools/make_srpo_golden.py)
    data = torch.load(Path(__file__).parents[1] / "data" / "srpo_golden.pt", weights_only=True)
    assert len(data["cases"]) == 4
    for c in data["cases"]:
        p, r = c["policy"], c["reference"]
        out = srpo_loss(p["chosen"], p["rejected"], r["chosen"], r["rejected"],
                        p["chosen_improved_to_given_rejected"], p["rejected_improved_to_given_rejected"],
                        p["rejected_improved_to_given_chosen"], r["chosen_improved_to_given_rejected"],
                        r["rejected_improved_to_given_rejected"], r["rejected_improved_to_given_chosen"],
                        beta=c["beta"], alpha=c["alpha"],
                        improve_w_given_w_logps=p["chosen_improved_to_given_chosen"],
                        ref_w_given_w_logps=r["chosen_improved_to_given_chosen"])
        torch.testing.assert_close(out, c["loss"], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- SSPO
def test_sspo_value():
    align = t(0.5, 1.0)
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]], dtype=D)
    lab = torch.tensor([2, 0])
    ref = align + 0.7 * F.cross_entropy(logits, lab, reduction="none")
    assert torch.allclose(sspo_loss(align, logits, lab, lam=0.7), ref)
    assert torch.allclose(sspo_loss(align, logits, lab, lam=0.0), align)


# ---------------------------------------------------------------- SuperHF
def _superhf_authors(logits, prior_logits, labels, kl_coef):
    """The authors' finetune_language_model per example (openfeedback/superhf, src/superhf/training.py):
    Hugging Face's shifted LM loss on ``labels`` (-100 on the prompt) plus ``kl_coef`` times the clamped
    ``KLDivLoss(batchmean, log_target=True)`` of ``logp[i, labels[i] != -100]``, the unshifted positions."""
    kl_loss = torch.nn.KLDivLoss(reduction="batchmean", log_target=True)
    logp, logp_prior = torch.log_softmax(logits, 2), torch.log_softmax(prior_logits, 2)
    out = []
    for i in range(logits.shape[0]):
        ce = F.cross_entropy(logits[i, :-1], labels[i, 1:], ignore_index=-100)  # what outputs.loss is
        mask = labels[i] != -100
        kl = torch.maximum(kl_loss(logp[i, mask, :], logp_prior[i, mask, :]), torch.tensor(0.0, dtype=D))
        out.append(ce + kl_coef * kl)
    return torch.stack(out)


def test_superhf_matches_the_authors_code_loss_and_gradient():
    """CE rows (t - 1) and KL rows (t) differ by one position; the old version took the KL on the CE rows."""
    torch.manual_seed(1)
    logits = torch.randn(3, 6, 7, dtype=D, requires_grad=True)
    prior = torch.randn(3, 6, 7, dtype=D)
    ids = torch.randint(0, 7, (3, 6))
    prompt_len = torch.tensor([2, 1, 4])
    labels = ids.masked_fill(torch.arange(6)[None] < prompt_len[:, None], -100)
    ref = _superhf_authors(logits, prior, labels, 0.35)
    g_ref, = torch.autograd.grad(ref.sum(), logits)
    pri = torch.log_softmax(prior, -1)
    for call in (lambda pol: superhf_loss(pol, pri, ids, labels != -100, kl_coef=0.35),  # mask given
                 lambda pol: superhf_loss(pol, pri, labels, kl_coef=0.35)):             # or from labels' -100
        out = call(torch.log_softmax(logits, -1))
        torch.testing.assert_close(out, ref)
        g, = torch.autograd.grad(out.sum(), logits)
        torch.testing.assert_close(g, g_ref)
    pol = torch.log_softmax(logits, -1).detach()
    # the test tells the two masks apart: the KL on the CE rows (previous version) is another number
    m = labels != -100
    kl_tok = (pri.exp() * (pri - pol)).sum(-1)
    ce_rows = m[:, 1:]
    kl_on_ce_rows = (kl_tok[:, :-1] * ce_rows).sum(-1) / ce_rows.sum(-1)
    kl_authors = (kl_tok * m).sum(-1) / m.sum(-1)
    assert not torch.allclose(kl_on_ce_rows, kl_authors, atol=1e-3)
    # kl_coef = 0 is the plain language-modelling loss
    lm = torch.stack([F.cross_entropy(logits[i, :-1], labels[i, 1:], ignore_index=-100) for i in range(3)])
    torch.testing.assert_close(superhf_loss(pol, pri, labels, kl_coef=0.0), lm)


def test_superhf_refuses_labels_outside_the_vocabulary():
    lp = torch.log_softmax(torch.zeros(1, 3, 4), -1)
    with pytest.raises(ValueError, match=r"Invalid labels: a completion position holds 9, outside \[0, 4\)"):
        superhf_loss(lp, lp, torch.tensor([[-100, 1, 9]]), kl_coef=0.1)


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
    "srpo_both_drafts": lambda w, l, z: srpo_loss(w, l, z, z, z, z, z, z, z, z, beta=0.1, alpha=0.5,
                                                  improve_w_given_w_logps=z, ref_w_given_w_logps=z),
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
        srpo_loss(*args, improve_w_given_w_logps=args[1], ref_w_given_w_logps=args[0]),
        hypo_loss(*args[:4], torch.stack(args[4:7], 1), torch.stack(args[7:10], 1), lam=0.1),
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
    (lambda: inpo_loss(Z, Z, Z, Z, Z, Z, eta=1.0, tau=2.0), "tau"),
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
    (lambda: srpo_loss(*[Z] * 10, improve_w_given_w_logps=Z), "ref_w_given_w_logps"),
    (lambda: srpo_loss(*[Z] * 10, improve_w_given_w_logps=torch.zeros(3), ref_w_given_w_logps=torch.zeros(3)),
     "improve_w_given_w_logps"),
    (lambda: hypo_loss(Z, Z, Z, Z, torch.zeros(3, 2), torch.zeros(3, 2), lam=1.0), "policy_online_logps"),
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
