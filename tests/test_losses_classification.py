"""Classification objectives: comp-sum (+ smooth adversarial, PGD), Z-loss, LDR/ALDR,
decoupled softmax, direct coverage optimization."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import gradwise.losses as L

DATA = Path(__file__).parent / "data"
f64 = torch.float64


def _data(n=12, c=7, seed=0, scale=2.0, dtype=f64):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=g, dtype=f64) * scale).to(dtype)
    y = torch.randint(0, c, (n,), generator=g)
    return x, y


def _p_y(x, y):
    return torch.softmax(x, 1).gather(1, y[:, None]).squeeze(1)


# ----- comp-sum -------------------------------------------------------------------------------------------------

def test_comp_sum_closed_forms():
    x, y = _data()
    p = _p_y(x, y)
    torch.testing.assert_close(L.comp_sum_loss(x, y, tau=1.0), F.cross_entropy(x, y), rtol=0, atol=1e-12)
    torch.testing.assert_close(L.comp_sum_loss(x, y, tau=2.0, reduction="none"), 1 - p, rtol=0, atol=1e-12)
    sum_exp = (torch.exp(x - x.gather(1, y[:, None])).sum(1) - 1)
    torch.testing.assert_close(L.comp_sum_loss(x, y, tau=0.0, reduction="none"), sum_exp, rtol=1e-12, atol=1e-12)
    q = 0.5
    torch.testing.assert_close(L.comp_sum_loss(x, y, tau=1 + q, reduction="none"), (1 - p ** q) / q,
                               rtol=1e-12, atol=1e-12)


def test_comp_sum_continuous_in_tau():
    x, y = _data()
    for t0 in (1.0, 2.0):
        ref = L.comp_sum_loss(x, y, tau=t0)
        for h in (1e-6, -1e-6):
            assert abs(float(L.comp_sum_loss(x, y, tau=t0 + h) - ref)) < 1e-4
    # monotone in tau (Phi^tau decreases with tau for u >= 1)
    vals = [float(L.comp_sum_loss(x, y, tau=t)) for t in (0.0, 0.5, 1.0, 1.5, 2.0)]
    assert all(a > b for a, b in zip(vals, vals[1:]))


def test_comp_sum_gradient_matches_autograd_of_formula():
    x, y = _data()
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    L.comp_sum_loss(x1, y, tau=1.5).backward()
    ((1 - _p_y(x2, y) ** 0.5) / 0.5).mean().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)


# ----- smooth adversarial comp-sum and PGD ----------------------------------------------------------------------

def test_smooth_adversarial_closed_form_and_reduction_to_comp_sum():
    x, y = _data()
    adv = x + torch.randn_like(x) * 0.1
    d = adv - x
    reg = (d - d.gather(1, y[:, None])).norm(dim=1)
    out = L.smooth_adversarial_comp_sum_loss(x, adv, y, tau=1.5, nu=0.3, reduction="none")
    torch.testing.assert_close(out, L.comp_sum_loss(x, y, tau=1.5, reduction="none") + 0.3 * reg)
    # x' = x: no regularizer, finite (zero) gradient of the norm
    xx = x.clone().requires_grad_(True)
    L.smooth_adversarial_comp_sum_loss(xx, xx, y, tau=1.0, nu=5.0).backward()
    assert torch.isfinite(xx.grad).all()
    torch.testing.assert_close(L.smooth_adversarial_comp_sum_loss(x, x + 3.0, y, nu=2.0), F.cross_entropy(x, y))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_ball_and_increases_loss(norm):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    x = torch.randn(32, 5, dtype=f64)
    y = torch.randint(0, 3, (32,))
    eps = 0.3
    g = torch.Generator().manual_seed(1)
    xa = L.pgd_attack(model, x, y, eps=eps, alpha=eps / 4, steps=10, norm=norm, generator=g)
    delta = (xa - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-9
    assert F.cross_entropy(model(xa), y) > F.cross_entropy(model(x), y) + 1e-3
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    # custom objective: the smooth term grows
    clean = model(x).detach()
    reg = lambda out, t: L.score_difference_regularizer(clean, out, t).sum()  # noqa: E731
    # (from x' = x the norm's zero subgradient leaves PGD stuck: the random start is needed)
    stuck = L.pgd_attack(model, x, y, eps=eps, alpha=eps / 4, steps=3, norm=norm, loss_fn=reg, random_start=False)
    assert torch.equal(stuck, x)
    x1 = L.pgd_attack(model, x, y, eps=eps, alpha=eps / 4, steps=1, norm=norm, loss_fn=reg, generator=g)
    x10 = L.pgd_attack(model, x, y, eps=eps, alpha=eps / 4, steps=10, norm=norm, loss_fn=reg,
                       generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        r1 = L.score_difference_regularizer(clean, model(x1), y).mean()
        r10 = L.score_difference_regularizer(clean, model(x10), y).mean()
    assert float(r10) > float(r1) > 0
    xc = L.pgd_attack(model, x, y, eps=eps, alpha=eps / 4, steps=3, norm=norm, clamp=(-0.5, 0.5), generator=g)
    assert float(xc.abs().max()) <= 0.5


# ----- Z-loss ---------------------------------------------------------------------------------------------------

def test_z_loss_closed_form_and_invariances():
    x, y = _data(c=9)
    mu, sd = x.mean(1), x.std(1, unbiased=False)
    z = (x.gather(1, y[:, None]).squeeze(1) - mu) / sd
    a, b = 0.7, 2.0
    torch.testing.assert_close(L.z_loss(x, y, a=a, b=b, reduction="none"), torch.log1p(torch.exp(a * (b - z))) / a,
                               rtol=1e-9, atol=1e-9)
    base = L.z_loss(x, y, reduction="none")
    shift = torch.randn(x.shape[0], 1, dtype=f64) * 100
    scale = torch.rand(x.shape[0], 1, dtype=f64) * 50 + 0.01
    torch.testing.assert_close(L.z_loss(x + shift, y, reduction="none"), base, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(L.z_loss(x * scale, y, reduction="none"), base, rtol=1e-9, atol=1e-9)
    xf = x.float()
    torch.testing.assert_close(L.z_loss(xf * 1000 + 5000, y), L.z_loss(xf, y), rtol=1e-4, atol=1e-4)
    # default b is sqrt(C - 1)
    torch.testing.assert_close(L.z_loss(x, y), L.z_loss(x, y, b=math.sqrt(8)))


def test_z_loss_gradcheck_and_constant_row():
    x, y = _data(n=4, c=5)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: L.z_loss(t, y, a=0.5, b=1.0, reduction="none"), (x,))
    c = torch.zeros(3, 4, requires_grad=True)
    L.z_loss(c, torch.tensor([0, 1, 2])).backward()
    assert torch.isfinite(c.grad).all()


# ----- LDR / ALDR (golden values from the authors' loss.py) ----------------------------------------------------

GOLD = torch.load(DATA / "ldr_golden.pt", weights_only=True)


@pytest.mark.parametrize("case", [c for c in GOLD["cases"] if c["kind"] == "ldr"], ids=lambda c: f"ldr-{c['lam']}")
def test_ldr_matches_authors_code(case):
    x = case["logits"].clone().requires_grad_(True)
    loss = L.ldr_loss(x, case["target"], lam=case["lam"], margin=case["margin"])
    loss.backward()
    torch.testing.assert_close(loss, case["loss"], rtol=0, atol=1e-12)
    torch.testing.assert_close(x.grad, case["grad"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", [c for c in GOLD["cases"] if c["kind"] == "aldr"], ids=lambda c: f"aldr-{c['lam']}")
def test_aldr_matches_authors_code_over_two_visits(case):
    lambdas = None
    for step in case["steps"]:
        x = step["logits"].clone().requires_grad_(True)
        loss, lambdas = L.aldr_loss(x, case["target"], lambdas, lam=case["lam"], alpha=case["alpha"],
                                    margin=case["margin"], softplus=case["softplus"], return_lambdas=True)
        loss.backward()
        torch.testing.assert_close(loss, step["loss"], rtol=0, atol=1e-12)
        torch.testing.assert_close(x.grad, step["grad"], rtol=0, atol=1e-12)
        torch.testing.assert_close(lambdas, step["lambdas"], rtol=0, atol=1e-12)


def test_ldr_limits_and_variants():
    x, y = _data()
    # raw scores, margin 0, lam 1: cross-entropy - log K
    torch.testing.assert_close(L.ldr_loss(x, y, lam=1.0, margin=0.0, normalize="none"),
                               F.cross_entropy(x, y) - math.log(x.shape[1]))
    d = x - x.gather(1, y[:, None]) + 1.0
    d = d.scatter(1, y[:, None], 0.0)
    # lam -> 0: Crammer-Singer hinge; lam -> inf: mean of margin differences
    torch.testing.assert_close(L.ldr_loss(x, y, lam=1e-4, margin=1.0, normalize="none", reduction="none"),
                               d.max(1).values, rtol=0, atol=1e-3)
    torch.testing.assert_close(L.ldr_loss(x, y, lam=1e6, margin=1.0, normalize="none", reduction="none"),
                               d.mean(1), rtol=0, atol=1e-4)
    for norm in ("l1", "none"):
        xx = x.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: L.ldr_loss(t, y, normalize=norm, reduction="none"), (xx,))
    xx = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: L.ldr_loss(t, y, lam=0.3, margin=0.5, reduction="none"), (xx,))


def test_aldr_module_keeps_per_instance_temperatures():
    x, y = _data(n=6)
    crit = L.ALDRLoss(10, lam=2.0, alpha=3.0)
    idx = torch.tensor([1, 3, 5, 7, 8, 9])
    loss = crit(x, y, idx)
    ref, lam = L.aldr_loss(x, y, lam=2.0, alpha=3.0, return_lambdas=True)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(crit.lambdas[idx], lam.float())
    assert float(crit.lambdas[0]) == 2.0 and "lambdas" in crit.state_dict()
    assert float(lam.min()) >= 2.0 * (1 - 1 / 3.0) - 1e-12  # lambda >= lam0 (1 - 1/alpha)


# ----- decoupled softmax ----------------------------------------------------------------------------------------

def _decoupled_loop(x, t):
    out = []
    for i in range(x.shape[0]):
        pos = [j for j in range(x.shape[1]) if t[i, j] > 0]
        neg = [j for j in range(x.shape[1]) if t[i, j] <= 0]
        terms = []
        for p in pos:
            den = torch.logsumexp(torch.cat([x[i, p:p + 1], x[i, neg]]), 0)
            terms.append(den - x[i, p])
        out.append(torch.stack(terms).mean() if terms else x.new_zeros(()))
    return torch.stack(out)


def test_decoupled_softmax_matches_brute_force_and_ce():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 8, generator=g, dtype=f64) * 2
    t = (torch.rand(9, 8, generator=g) < 0.3).int()
    t[0] = 0
    t[1] = 1
    t[2, :] = 0
    t[2, 4] = 1
    torch.testing.assert_close(L.decoupled_softmax_loss(x, t, reduction="none"), _decoupled_loop(x, t))
    torch.testing.assert_close(L.decoupled_softmax_loss(x, t, reduction="sum"), _decoupled_loop(x, t).sum())
    y = torch.randint(0, 8, (9,), generator=g)
    torch.testing.assert_close(L.decoupled_softmax_loss(x, F.one_hot(y, 8).bool()), F.cross_entropy(x, y))
    xx = x.clone().requires_grad_(True)
    L.decoupled_softmax_loss(xx, t).backward()
    assert torch.isfinite(xx.grad).all()


# ----- direct coverage optimization ---------------------------------------------------------------------------

def test_coverage_loss_closed_form_and_limits():
    p = torch.tensor([1e-3, 0.1, 0.5, 0.9, 0.999], dtype=f64)
    for n in (1, 2, 7.5, 64):
        torch.testing.assert_close(L.coverage_loss(p.log(), n=n, reduction="none"), -torch.log1p(-(1 - p) ** n))
    x, y = _data()
    torch.testing.assert_close(L.coverage_classification_loss(x, y, n=1), F.cross_entropy(x, y))
    # tiny p: -log p - log N even when p underflows; p -> 1: loss and gradient vanish
    lp = torch.tensor([-2e4, -1e-30, 0.0], dtype=torch.float32, requires_grad=True)
    out = L.coverage_loss(lp, n=8, reduction="none")
    out_ = out.detach()
    assert abs(float(out_[0]) - (2e4 - math.log(8))) < 1e-2 and float(out_[1]) == 0.0 and float(out_[2]) == 0.0
    out.sum().backward()
    assert torch.isfinite(lp.grad).all() and float(lp.grad[2]) == 0.0


def test_coverage_gradient_is_ce_scaled_by_F():
    p = torch.tensor([0.05, 0.3, 0.7, 0.95], dtype=f64)
    lp = p.log().requires_grad_(True)
    n = 8
    L.coverage_loss(lp, n=n, reduction="sum").backward()
    f = n * p * (1 - p) ** (n - 1) / (1 - (1 - p) ** n)
    torch.testing.assert_close(lp.grad, -f)
    assert float(f[-1]) < 1e-6 < float(f[0])  # confident examples stop pushing


# ----- shared properties ----------------------------------------------------------------------------------------

INDEX_LOSSES = {
    "comp_sum_gce": (L.comp_sum_loss, dict(tau=1.5), L.CompSumLoss),
    "comp_sum_mae": (L.comp_sum_loss, dict(tau=2.0), L.CompSumLoss),
    "z_loss": (L.z_loss, dict(a=0.5), L.ZLoss),
    "ldr": (L.ldr_loss, dict(lam=1.0), L.LDRLoss),
    "ldr_l1": (L.ldr_loss, dict(normalize="l1"), L.LDRLoss),
    "aldr": (L.aldr_loss, dict(), None),
    "coverage": (L.coverage_classification_loss, dict(n=4), L.CoverageClassificationLoss),
}


@pytest.mark.parametrize("name", list(INDEX_LOSSES))
def test_reductions_ignore_index_and_module_twin(name):
    fn, kw, mod = INDEX_LOSSES[name]
    x, y = _data()
    y = y.clone()
    y[[2, 5]] = -100
    none = fn(x, y, reduction="none", **kw)
    keep = y != -100
    assert none.shape == (12,) and (none[~keep] == 0).all()
    torch.testing.assert_close(fn(x, y, reduction="sum", **kw), none.sum())
    torch.testing.assert_close(fn(x, y, reduction="mean", **kw), none[keep].mean())
    if mod is not None:
        torch.testing.assert_close(mod(**kw)(x, y), fn(x, y, **kw))
    with pytest.raises(ValueError, match="reduction"):
        fn(x, y, reduction="avg", **kw)
    with pytest.raises(ValueError, match="target"):
        fn(x, torch.full_like(y, 7), **kw)
    with pytest.raises(ValueError, match="logits"):
        fn(x[0], y, **kw)


@pytest.mark.parametrize("call,match", [
    (lambda x, y: L.comp_sum_loss(x, y, tau=-1), "tau"),
    (lambda x, y: L.comp_sum_loss(x, y, tau=float("nan")), "tau"),
    (lambda x, y: L.z_loss(x, y, a=0), "Invalid a"),
    (lambda x, y: L.z_loss(x, y, b=float("inf")), "Invalid b"),
    (lambda x, y: L.ldr_loss(x, y, lam=0), "lam"),
    (lambda x, y: L.ldr_loss(x, y, normalize="l2"), "normalize"),
    (lambda x, y: L.aldr_loss(x, y, alpha=-1), "alpha"),
    (lambda x, y: L.aldr_loss(x, y, torch.ones(3, dtype=f64)), "lambdas"),
    (lambda x, y: L.coverage_loss(x[:, 0], n=0.5), "Invalid n"),
    (lambda x, y: L.smooth_adversarial_comp_sum_loss(x, x[:3], y), "adv_logits"),
    (lambda x, y: L.smooth_adversarial_comp_sum_loss(x, x, y, nu=-1), "nu"),
    (lambda x, y: L.decoupled_softmax_loss(x, y), "targets"),
    (lambda x, y: L.pgd_attack(torch.nn.Identity(), x, y, eps=-1, alpha=0.1, steps=1), "eps"),
    (lambda x, y: L.pgd_attack(torch.nn.Identity(), x, y, eps=1, alpha=0.1, steps=1, norm="l1"), "norm"),
])
def test_invalid_arguments_name_themselves(call, match):
    x, y = _data()
    with pytest.raises(ValueError, match=match):
        call(x, y)


ALL = [
    lambda x, y: L.comp_sum_loss(x, y, tau=1.0),
    lambda x, y: L.comp_sum_loss(x, y, tau=1.5),
    lambda x, y: L.comp_sum_loss(x, y, tau=2.0),
    lambda x, y: L.z_loss(x, y),
    lambda x, y: L.ldr_loss(x, y),
    lambda x, y: L.ldr_loss(x, y, normalize="l1", lam=0.1),
    lambda x, y: L.aldr_loss(x, y, alpha=1.0),
    lambda x, y: L.coverage_classification_loss(x, y, n=16),
    lambda x, y: L.decoupled_softmax_loss(x, F.one_hot(y, x.shape[1]) | (torch.arange(x.shape[1]) == 0)),
    lambda x, y: L.smooth_adversarial_comp_sum_loss(x, x.flip(0), y, tau=1.5),
]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from([1e-3, 1.0, 100.0, 1e4]),
       st.sampled_from([torch.float32, torch.bfloat16]))
def test_finite_loss_and_grad_for_extreme_logits(seed, scale, dtype):
    g = torch.Generator().manual_seed(seed)
    x0 = ((torch.rand(6, 5, generator=g) * 2 - 1) * scale)
    x0[0] = scale  # a constant row
    y = torch.randint(0, 5, (6,), generator=g)
    for fn in ALL:
        x = x0.to(dtype).requires_grad_(True)
        loss = fn(x, y)
        loss.float().backward()
        assert loss.dtype == dtype and torch.isfinite(loss.float()), fn
        assert torch.isfinite(x.grad.float()).all(), fn


def test_noisy_labels_study_smoke(tmp_path):
    import argparse

    from rich.console import Console

    from gradwise.arena import load_study
    from gradwise.arena.noisy_labels_study import noisy_labels

    y = torch.arange(10).repeat(100)
    yn, flip = noisy_labels(y, 10, 0.4, seed=0)
    assert abs(float(flip.float().mean()) - 0.4) < 0.05 and (yn[flip] != y[flip]).all() and (yn[~flip] == y[~flip]).all()
    study = load_study("noisy-labels")
    parser = argparse.ArgumentParser()
    study.add_arguments(parser)
    args = parser.parse_args(["--steps", "20", "--seeds", "1", "--losses", "CE,ALDR-KL", "--out", str(tmp_path)])
    out = study.run(args, Console(quiet=True))
    assert (out / "results.csv").exists() and (out / "results.json").exists() and (out / "test_accuracy.png").exists()


# ----- host syncs: none in the forward paths once validation is off ---------------------------------------------

_HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


@pytest.fixture
def count_host_reads(monkeypatch):
    """Counts Python-level reads of tensor values (``.item()``, ``.tolist()``, ``bool``/``int``/``float``)."""
    reads = []
    for name in _HOST_READS:
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, _name=name, **k):
            reads.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return reads


def _no_sync_calls():
    x, y = _data(n=10, c=6)
    y = y.clone()
    y[3] = -100
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(10, 4, generator=g, dtype=f64)
    centers = torch.randn(6, 4, generator=g, dtype=f64)
    return {
        "comp_sum": lambda: L.comp_sum_loss(x, y, tau=1.5, validate=False),
        "z_loss": lambda: L.z_loss(x, y, validate=False),
        "coverage": lambda: L.coverage_classification_loss(x, y, validate=False),
        "smooth_adv": lambda: L.smooth_adversarial_comp_sum_loss(x, x.flip(0), y, validate=False),
        "ensloss_ovr": lambda: L.ensloss_ovr(x, y, generator=torch.Generator().manual_seed(1), validate=False),
        "ensloss": lambda: L.ensloss(x[:, 0], (y > 2).long(), generator=torch.Generator().manual_seed(1),
                                     validate=False),
        "correctness_aware": lambda: L.correctness_aware_loss(x, y, validate=False),
        "dhkd": lambda: L.dhkd_loss(x, x * 0.5, x.flip(0), y, validate=False),
        "nd": lambda: L.nd_loss(feats, feats.flip(0), y, centers, validate=False),
        "unpg": lambda: L.unpg_loss(feats, y, centers, validate=False),
    }


@pytest.mark.parametrize("name", list(_no_sync_calls()))
def test_forward_reads_no_tensor_values_with_validate_false(name, count_host_reads):
    call = _no_sync_calls()[name]
    out = call()
    assert torch.isfinite(out).all()
    assert count_host_reads[-1:] == ["__bool__"]        # the counter works: the assert above read one value
    count_host_reads.clear()
    call()
    assert count_host_reads == [], count_host_reads


def test_label_range_validation_is_one_host_read_and_can_be_skipped(count_host_reads):
    x, y = _data(n=10, c=6)
    y = y.clone()
    y[[1, 4]] = -100
    L.comp_sum_loss(x, y)
    assert count_host_reads == ["tolist"]               # min and max read together
    count_host_reads.clear()
    bad = y.clone()
    bad[0] = 6
    with pytest.raises(ValueError, match="Invalid target: label 6 out of range"):
        L.z_loss(x, bad)
    bad[0] = -3                                         # negative labels other than ignore_index are rejected too
    with pytest.raises(ValueError, match="Invalid target: label -3 out of range"):
        L.coverage_classification_loss(x, bad)
    with pytest.raises(ValueError, match="Invalid labels: label -3"):
        L.unpg_loss(x[:, :4], bad, torch.randn(6, 4, dtype=f64))
    with pytest.raises(ValueError, match="Invalid target: label -3"):
        L.nd_loss(x[:, :4], x[:, :4], bad, torch.randn(6, 4, dtype=f64))
    # only ignored labels: nothing to check, nothing raised; ignore_index=None checks every label
    everything_ignored = torch.full_like(y, -100)
    assert L.comp_sum_loss(x, everything_ignored, reduction="sum") == 0
    with pytest.raises(ValueError, match="label -100 out of range"):
        L.comp_sum_loss(x, everything_ignored, ignore_index=None)
    # validate=False skips the check (torch's own kernel then fails on the bad label)
    bad[0] = 6
    with pytest.raises((IndexError, RuntimeError)):
        L.comp_sum_loss(x, bad, validate=False)
    torch.testing.assert_close(L.comp_sum_loss(x, y, tau=0.5, validate=False), L.comp_sum_loss(x, y, tau=0.5))
