"""ParetoDA: the LP weights and directions against the authors' EPO_LP (golden), the target surrogate and its
refinement against their TCM and rho_pred, the .grad helper, bad input, and a 2-D toy where two conflicting
quadratics reach the Pareto front at the point the held-out loss prefers."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from gradwise.registry import get
from gradwise.tta import (ParetoDA, epo_lp_weights, mutual_information, pareto_direction, refine_target_logits,
                          target_surrogate_loss)

GOLDEN = Path(__file__).parents[1] / "data" / "pareto_da_golden.pt"
GOLD = torch.load(GOLDEN, weights_only=True)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: intra-op threads only wait on a shared machine


@pytest.mark.parametrize("i", range(len(GOLD["lp"])))
def test_weights_and_direction_match_the_authors_lp(i):
    # non-degenerate cases only (the generator keeps LPs whose optimum is unique): there GLPK's vertex and
    # HiGHS' must agree
    c = GOLD["lp"][i]
    sol = pareto_direction(c["G"], c["g_val"], c["loss_val"], eps=c["eps"], relax=c["relax"])
    assert sol.move == c["move"]
    torch.testing.assert_close(sol.weights, c["alpha"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sol.direction, c["direction"], rtol=1e-10, atol=1e-10)
    # the LP's constraints hold: on the simplex, and in the dominance LP no objective rises (G d >= 0)
    assert (sol.weights >= 0).all() and abs(sol.weights.sum().item() - 1) < 1e-12
    if c["move"] == "dom":
        assert (c["G"] @ sol.direction >= -1e-10).all()


def test_infeasible_lp_falls_back_as_the_authors():
    assert GOLD["infeasible"], "the golden data holds an LP their GLPK found infeasible"
    for c in GOLD["infeasible"]:
        sol = pareto_direction(c["G"], c["g_val"], c["loss_val"], eps=c["eps"], relax=c["relax"])
        assert sol.weights is None and sol.direction is None and sol.move == "fallback"
        G = c["G"].clone()
        params = torch.zeros(G.shape[1], dtype=torch.float64, requires_grad=True)
        losses = [params @ g for g in G]  # gradients G exactly
        val = params @ c["g_val"] + c["loss_val"]
        helper = ParetoDA([params], eps=c["eps"], relax=c["relax"], preference=[2.0] + [1.0] * (len(G) - 1))
        w = helper.backward(losses, val)
        assert helper.last_move == "fallback" and helper.counts["fallback"] == 1
        # their script: alpha = m * preference
        torch.testing.assert_close(params.grad, len(G) * (w.to(G) @ G))
        assert w.tolist() == [2.0] + [1.0] * (len(G) - 1)


@pytest.mark.parametrize("i", range(len(GOLD["surrogate"])))
def test_surrogate_matches_their_tcm_and_rho_pred(i):
    c = GOLD["surrogate"][i]
    torch.testing.assert_close(mutual_information(c["logits"]), c["tcm"], rtol=1e-12, atol=1e-12)
    rho = refine_target_logits(c["logits"], c["domain_logits"])
    torch.testing.assert_close(rho, c["rho"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(target_surrogate_loss(c["logits"], c["domain_logits"]), -c["tcm_rho"],
                               rtol=1e-12, atol=1e-12)


def test_mutual_information_is_zero_for_one_prediction_and_log_k_for_confident_distinct_ones():
    same = torch.tensor([[0.3, -1.0, 2.0]] * 4, dtype=torch.float64)
    assert abs(mutual_information(same).item()) < 1e-5  # only the 1e-6 inside log(mean p)
    distinct = 50.0 * torch.eye(3, dtype=torch.float64)
    assert abs(mutual_information(distinct).item() - np.log(3)) < 1e-5
    big = torch.tensor([[1000.0, -1000.0, 0.0]], dtype=torch.float64)  # their log(softmax) gives NaN here
    assert torch.isfinite(mutual_information(big))


def test_helper_writes_the_scaled_direction_and_only_to_params():
    torch.manual_seed(0)
    w1 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    head = torch.randn(3, dtype=torch.float64, requires_grad=True)
    x, xv = torch.randn(6, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    f = (x @ w1 + w2).tanh()
    losses = [(f @ head).pow(2).mean(), (f.sum(1) - 1).pow(2).mean(), -f.mean()]
    val = ((xv @ w1 + w2).tanh() @ head).pow(2).mean() + 1.0  # > eps: the balance LP
    G = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(t, [w1, w2], retain_graph=True)])
                     for t in losses])
    gv = torch.cat([g.reshape(-1) for g in torch.autograd.grad(val, [w1, w2], retain_graph=True)])
    want = pareto_direction(G, gv, val)
    helper = ParetoDA([w1, w2])
    w = helper.backward(losses, val, retain_graph=True)
    assert helper.last_move == want.move == "bal"
    torch.testing.assert_close(w, want.weights)
    torch.testing.assert_close(torch.cat([w1.grad.reshape(-1), w2.grad]), 3 * want.direction)
    assert head.grad is None
    # accumulate adds; the graph was retained, so other losses can still be backpropagated
    before = w1.grad.clone()
    ParetoDA([w1, w2], scale=1.0).backward(losses, val, retain_graph=True, accumulate=True)
    torch.testing.assert_close(w1.grad, before + want.direction[:12].view(4, 3))
    losses[0].backward()
    assert head.grad is not None


def test_an_objective_that_does_not_reach_a_parameter_gives_it_zero():
    a = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    helper = ParetoDA([a, b], relax=True)
    helper.backward([(a ** 2).sum(), (b - 3).pow(2).sum()], (a.sum() - 10) ** 2 * 0)  # val loss 0: dominance
    assert helper.last_move == "dom"
    # dominance LP: Cα >= 0 with orthogonal gradients; max Σ_j (Cα)_j puts all weight on the larger gradient
    torch.testing.assert_close(helper.last_weights, torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(a.grad, torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(b.grad, torch.tensor([2 * 2 * -2.5], dtype=torch.float64))


@pytest.mark.parametrize("t", [0.25, 0.8])
def test_toy_reaches_the_pareto_front_at_the_target_preferred_point(t):
    # L1 = |x - a|^2 and L2 = |x - b|^2 conflict: their Pareto set is the segment [a, b]. The held-out loss
    # |x - c|^2, c on the segment, plays the target: the balance LP descends it while the aligned objective
    # does not rise, then the dominance LP settles on the front. Equal weights would end at the midpoint.
    a, b = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    c = (1 - t) * a + t * b
    x = torch.tensor([1.5, 1.2], dtype=torch.float64, requires_grad=True)
    helper, opt = ParetoDA([x]), torch.optim.SGD([x], lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        helper.backward([((x - a) ** 2).sum(), ((x - b) ** 2).sum()], ((x - c) ** 2).sum())
        opt.step()
    x = x.detach()
    s = ((x - a) @ (b - a) / 2).clamp(0, 1)
    assert (x - (a + s * (b - a))).norm() < 1e-8  # on the front
    assert (x - c).norm() < 0.03 < (x - (a + b) / 2).norm()  # at the preferred point, not the midpoint
    assert helper.counts["bal"] > 0 and helper.counts["dom"] > 0 and helper.counts["fallback"] == 0


def test_state_dict_deepcopy_and_registry():
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    helper = ParetoDA([x], eps=0.5, preference=[1.0, 3.0])
    helper.backward([((x - 1) ** 2).sum(), ((x + 1) ** 2).sum()], ((x - 0.2) ** 2).sum())
    state = helper.state_dict()
    other = ParetoDA([x])
    other.load_state_dict(state)
    assert other.state_dict()["counts"] == state["counts"] and other.eps == 0.5 and other.preference == [1.0, 3.0]
    twin = copy.deepcopy(helper)
    assert twin.params[0] is not x and twin.counts == helper.counts
    with pytest.raises(ValueError, match="Invalid state"):
        other.load_state_dict({"eps": 1.0})
    with pytest.raises(ValueError, match="Invalid eps"):
        other.load_state_dict({**state, "eps": float("nan")})
    assert other.eps == 0.5
    rec = get("ParetoDA")
    assert rec.paper == "Pareto Domain Adaptation" and rec.kind == "training-helper" and rec.load() is ParetoDA


def test_bad_input_names_the_argument():
    x = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="Invalid params"):
        ParetoDA([])
    with pytest.raises(ValueError, match="Invalid params"):
        ParetoDA([torch.zeros(2)])  # no grad
    for kw, name in (({"eps": float("inf")}, "eps"), ({"relax": 1}, "relax"), ({"preference": [1, -1]}, "preference"),
                     ({"scale": 0}, "scale")):
        with pytest.raises(ValueError, match=f"Invalid {name}"):
            ParetoDA([x], **kw)
    helper = ParetoDA([x], preference=[1.0, 1.0])
    loss = (x ** 2).sum()
    with pytest.raises(ValueError, match="Invalid losses"):
        helper.backward(loss, loss)
    with pytest.raises(ValueError, match=r"Invalid losses\[1\]"):
        helper.backward([loss, x ** 2], loss)
    with pytest.raises(ValueError, match="Invalid val_loss"):
        helper.backward([loss, loss], torch.tensor(1.0))
    with pytest.raises(ValueError, match="Invalid preference"):
        helper.backward([loss, loss, loss], loss)
    assert x.grad is None  # nothing written by a refused call
    G = torch.randn(2, 5)
    with pytest.raises(ValueError, match="Invalid grads"):
        pareto_direction(G[0], G[0], 1.0)
    with pytest.raises(ValueError, match="Invalid val_grad"):
        pareto_direction(G, torch.randn(4), 1.0)
    with pytest.raises(ValueError, match="Invalid gram"):
        epo_lp_weights(np.ones((2, 3)), np.ones(2), 1.0)
    with pytest.raises(ValueError, match="Invalid val_dots"):
        epo_lp_weights(np.eye(2), np.ones(3), 1.0)
    with pytest.raises(ValueError, match="Invalid val_loss"):
        epo_lp_weights(np.eye(2), np.ones(2), float("nan"))
    with pytest.raises(ValueError, match="Invalid domain_logits"):
        refine_target_logits(torch.randn(4, 3), torch.randn(4, 2, 2))
    with pytest.raises(ValueError, match="Invalid target_index"):
        refine_target_logits(torch.randn(4, 3), torch.randn(4, 3, 2), target_index=2)
    with pytest.raises(ValueError, match="Invalid logits"):
        mutual_information(torch.randn(4))



def digits_run(method: str, seed: int, steps: int) -> tuple[float, ParetoDA]:
    """Target accuracy of an MLP trained on sklearn digits (source) and tested on digits under a fixed random
    pixel-wise gain and offset (target): ``method`` "source" (source CE only), "sum" (CE + target surrogate,
    equal weights) or "pareto" (ParetoDA over [CE, surrogate], the surrogate on a held-out target split as
    ``val_loss``)."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(X), generator=g)
    xs, ys = X[perm[:900]], y[perm[:900]]
    gain, off = 1 + 0.8 * torch.randn(64, generator=g), 0.5 * torch.randn(64, generator=g)
    xt, yt = X[perm[900:]] * gain + off, y[perm[900:]]
    train_t, val_t, test_t, test_y = xt[:300], xt[300:450], xt[450:], yt[450:]
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    helper = ParetoDA(net.parameters())
    for _ in range(steps):
        i, j, k = (torch.randint(0, n, (64,), generator=g) for n in (900, 300, 150))
        ce = F.cross_entropy(net(xs[i]), ys[i])
        opt.zero_grad()
        if method == "pareto":
            helper.backward([ce, target_surrogate_loss(net(train_t[j]))], target_surrogate_loss(net(val_t[k])))
        elif method == "sum":
            (ce + target_surrogate_loss(net(train_t[j]))).backward()
        else:
            ce.backward()
        opt.step()
    with torch.no_grad():
        return (net(test_t).argmax(1) == test_y).float().mean().item(), helper


def test_digits_demo_the_pareto_direction_adapts_to_a_shifted_target():
    # unit scale; the held-out loss is -MI <= 0 < eps, so (as in the authors' DANN script) every step solves
    # the dominance LP. Seeds 0-2 and the equal-weight sum: the slow test below
    source, _ = digits_run("source", 0, 80)
    adapted, helper = digits_run("pareto", 0, 80)
    assert adapted > source + 0.15, (adapted, source)
    assert helper.counts["dom"] >= 70 and helper.counts["bal"] == 0


@pytest.mark.slow
def test_digits_demo_three_seeds(capsys):
    rows = {m: [digits_run(m, seed, 150)[0] for seed in range(3)] for m in ("source", "sum", "pareto")}
    with capsys.disabled():
        print("\ntarget accuracy, seeds 0-2, 150 steps:", {m: [round(a, 3) for a in v] for m, v in rows.items()})
    assert all(p > s for p, s in zip(rows["pareto"], rows["source"]))
