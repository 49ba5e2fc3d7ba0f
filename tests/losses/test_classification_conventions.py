"""What every classification loss shares: reductions, ignore_index, module twins, clear errors,
finite values at extreme logits, and no host reads once validation is off."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import gradwise.losses as L
from loss_inputs import logits_target as _data


f64 = torch.float64


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
