"""Reliability suite for losses (issue 8): every loss in the registry through the same bad-input cases.

The cases are those of torch's own cross entropy under bad input: labels out of range or of the wrong type,
NaN and inf inputs, an empty batch, a batch whose labels are all ``ignore_index``, and half-precision inputs at
the extremes of their range. Each loss must give, for each case, either a ``ValueError`` naming the argument, or
the behaviour written down for it in ``EXPECTED`` below (finite, or NaN where torch's ``cross_entropy`` gives
NaN), never an IndexError or RuntimeError from inside a kernel, and never a silently finite number for NaN input.

A loss registered without an adapter in ``ADAPTERS`` fails ``test_every_registered_loss_has_an_adapter``, so a
new loss is covered the day it is registered.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from gradwise.registry import methods

torch.set_num_threads(1)

N, C = 6, 4  # samples, classes (also the embedding width for metric losses)


@dataclass(frozen=True)
class Adapter:
    """How the suite calls one loss: ``call(x, y)`` with ``x`` [N, C] the loss's main float input (logits,
    embeddings, scores) and ``y`` [N] its labels (None for losses that take none). Other inputs are built
    from fixed values of the same dtype so that a bad value in ``x`` or ``y`` is the only bad value.
    ``labels``: ``"class"`` (class indices in [0, C)), ``"binary"`` ({-1, +1}), ``"index"`` (sample indices in
    [0, N)), ``"ids"`` (any integers naming groups, as metric losses take them) or ``"none"``;
    ``ignore_index``: it skips label -100."""

    call: Callable
    labels: str = "class"
    ignore_index: bool = False


def _fixed(shape, dtype, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).to(dtype)


def _gw(name):
    return next(m for m in methods() if m.name == name).load()


def _teacher(x):
    return _fixed(x.shape, x.dtype, seed=2)


def _isogclr(x, y):
    return _gw("ISogCLRLoss")(num_samples=N)(x, _fixed(x.shape, x.dtype), y)


def _mtard(x, y):
    t = _teacher(x)
    return _gw("MTARDLoss")()(x, t, x, t)


ADAPTERS: dict[str, Adapter] = {
    "aldr_loss": Adapter(lambda x, y: _gw("aldr_loss")(x, y), ignore_index=True),
    "ldr_loss": Adapter(lambda x, y: _gw("ldr_loss")(x, y), ignore_index=True),
    "comp_sum_loss": Adapter(lambda x, y: _gw("comp_sum_loss")(x, y), ignore_index=True),
    "coverage_classification_loss": Adapter(lambda x, y: _gw("coverage_classification_loss")(x, y),
                                            ignore_index=True),
    "coverage_loss": Adapter(lambda x, y: _gw("coverage_loss")(torch.log_softmax(x, 1)[:, 2]), labels="none"),
    "decoupled_softmax_loss": Adapter(lambda x, y: _gw("decoupled_softmax_loss")(x, y), labels="multi_hot"),
    "ensloss": Adapter(lambda x, y: _gw("ensloss")(x[:, 2], y, generator=torch.Generator().manual_seed(0)),
                       labels="binary"),
    "ensloss_ovr": Adapter(lambda x, y: _gw("ensloss_ovr")(x, y, generator=torch.Generator().manual_seed(0)),
                           ignore_index=True),
    "z_loss": Adapter(lambda x, y: _gw("z_loss")(x, y), ignore_index=True),
    "correctness_aware_loss": Adapter(lambda x, y: _gw("correctness_aware_loss")(x, y), ignore_index=True),
    "smooth_adversarial_comp_sum_loss": Adapter(
        lambda x, y: _gw("smooth_adversarial_comp_sum_loss")(x, _fixed(x.shape, x.dtype), y), ignore_index=True),
    "dhkd_loss": Adapter(lambda x, y: _gw("dhkd_loss")(x, _fixed(x.shape, x.dtype), _teacher(x), y),
                         ignore_index=True),
    "nd_loss": Adapter(lambda x, y: _gw("nd_loss")(x, _teacher(x), y, _fixed((C, C), x.dtype, seed=3)),
                       ignore_index=True),
    "unpg_loss": Adapter(lambda x, y: _gw("unpg_loss")(x, y, _fixed((C, C), x.dtype, seed=3)), ignore_index=True),
    "tcm_loss": Adapter(lambda x, y: _gw("tcm_loss")(x, y), labels="ids"),
    "icnn_loss": Adapter(lambda x, y: _gw("icnn_loss")(x, y, k=2), labels="ids"),
    "proto_triplet_loss": Adapter(lambda x, y: _gw("proto_triplet_loss")(x, y, x, y), labels="ids"),
    "amcl_loss": Adapter(lambda x, y: _gw("amcl_loss")(x, _fixed(x.shape, x.dtype), 0.5, topk=2), labels="none"),
    "kd_loss": Adapter(lambda x, y: _gw("kd_loss")(x, _teacher(x)), labels="none"),
    "bdkd_loss": Adapter(lambda x, y: _gw("bdkd_loss")(x, _teacher(x)), labels="none"),
    "ISogCLRLoss": Adapter(_isogclr, labels="index"),
    "MTARDLoss": Adapter(_mtard, labels="none"),
    "reweighted_loss": Adapter(lambda x, y: _gw("reweighted_loss")(x[:, 2].abs()), labels="none"),
}


def _registered_losses() -> list[str]:
    """Every registry record that is a loss: kind ``loss``, and functions of other kinds named ``*_loss``."""
    return sorted(m.name for m in methods()
                  if m.kind == "loss" or (m.family in ("losses", "data_weighting") and m.name.endswith("_loss")))


def test_every_registered_loss_has_an_adapter():
    missing = [n for n in _registered_losses() if n not in ADAPTERS]
    assert not missing, f"add an Adapter for {missing} to ADAPTERS (and its EXPECTED entries if it differs)"
    assert not [n for n in ADAPTERS if n not in _registered_losses()], "ADAPTERS names a loss not registered"


def _labels(kind: str, n: int) -> torch.Tensor | None:
    """Valid labels of each kind for ``n`` samples."""
    if kind in ("class", "ids"):
        return torch.arange(n) % C
    if kind == "binary":
        return torch.where(torch.arange(n) % 2 == 0, 1, -1)
    if kind == "index":
        return torch.arange(n)
    if kind == "multi_hot":
        return F.one_hot(torch.arange(n) % C, C).float()
    return None


def _outcome(fn, x) -> str:
    """'error' (ValueError), 'nan' (some output NaN or inf), 'finite' (output and gradient finite),
    'nan_grad' (finite output, non-finite gradient), or the unexpected exception."""
    try:
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        if not bool(torch.isfinite(out.detach().float()).all()):
            return "nan"
        grad, = torch.autograd.grad(out.float().sum(), x, allow_unused=True)
    except ValueError:
        return "error"
    except Exception as err:  # noqa: BLE001 - reported as the outcome
        return f"raised {type(err).__name__}: {str(err).splitlines()[0][:120]}"
    return "finite" if grad is None or bool(torch.isfinite(grad.float()).all()) else "nan_grad"


def _bad_labels(kind: str, case: str, y: torch.Tensor, ignore_index: bool) -> torch.Tensor:
    y = y.clone()
    if kind == "multi_hot":  # a multi-hot target: a value that is not 0 or 1, or a float label vector
        if case == "label_float":
            return y.long()
        y[0, 0] = 2.0 if case == "label_too_large" else -1.0
        return y
    if case == "label_float":
        return y.float()
    if kind == "binary":
        y[0] = 2 if case == "label_too_large" else 0
    elif kind == "index":
        y[0] = N if case == "label_too_large" else -1
    else:
        y[0] = C if case == "label_too_large" else (-7 if ignore_index else -1)
    return y


def _run(name: str, case: str, dtype=torch.float32) -> str:
    a = ADAPTERS[name]
    n = 0 if case == "empty" else N
    x = _fixed((n, C), torch.float32, seed=0)
    y = _labels(a.labels, n)
    if case.startswith("label_"):
        y = _bad_labels(a.labels, case, y, a.ignore_index)
    elif case == "nan_input":
        x[1, 2] = math.nan
    elif case == "inf_input":
        x[1, 2] = math.inf
    elif case == "neg_inf_other_class":  # logit masking: torch's cross entropy stays finite
        x[1, 3 if int(torch.arange(N)[1] % C) != 3 else 0] = -math.inf
    elif case == "all_ignored":
        y = torch.full_like(y, -100)
    elif case in ("fp16_extremes", "bf16_extremes"):
        dtype = torch.float16 if case == "fp16_extremes" else torch.bfloat16
        # large logits whose cross entropy still fits the dtype (torch's is finite here)
        x = torch.tensor([[1.0, -1.0, 0.5, -0.5]] * N) * (torch.finfo(dtype).max / 64)
    x = x.to(dtype).requires_grad_(True)
    return _outcome(lambda: a.call(x, y), x)


CASES = ("label_too_large", "label_negative", "label_float", "nan_input", "inf_input", "neg_inf_other_class",
         "empty", "all_ignored", "fp16_extremes", "bf16_extremes")


def _applies(name: str, case: str) -> bool:
    a = ADAPTERS[name]
    if case.startswith("label_"):
        return a.labels not in ("none", "ids")
    if case == "all_ignored":
        return a.ignore_index
    return True


# What each case gives unless EXPECTED says otherwise: torch's cross_entropy's behaviour, with a ValueError
# always allowed in place of a NaN. "nan" means NaN or inf somewhere in the output.
DEFAULT = {
    "label_too_large": {"error"}, "label_negative": {"error"}, "label_float": {"error"},
    "nan_input": {"nan", "error"}, "inf_input": {"nan", "error"},
    "neg_inf_other_class": {"finite"},   # -inf masking a logit that is not the label
    "empty": {"nan", "error"},           # a mean over no samples is NaN, as in torch
    "all_ignored": {"nan", "error"},     # likewise
    "fp16_extremes": {"finite"}, "bf16_extremes": {"finite"},
}

_EMBEDDING = "-inf is no embedding: normalizing or measuring distances to it is NaN"
_KL = "the KL divergence to a student log-probability of -inf where the teacher has mass is +inf"
#: (loss, case) -> (outcomes, why): the documented departures from DEFAULT
EXPECTED: dict[tuple[str, str], tuple[set[str], str]] = {
    ("ensloss", "label_float"): ({"finite"}, "float labels -1.0/+1.0 are read exactly; any other value is refused"),
    ("decoupled_softmax_loss", "label_float"): ({"finite"}, "an integer (or bool) multi-hot target is accepted"),
    ("aldr_loss", "neg_inf_other_class"): ({"nan"}, "its default normalization divides the logits by their L1 "
                                                    "norm, which a -inf logit makes inf/inf"),
    ("z_loss", "neg_inf_other_class"): ({"nan"}, "the z-score of the target logit uses the mean and deviation of "
                                                 "all logits, undefined with a -inf one"),
    ("ensloss_ovr", "neg_inf_other_class"): ({"nan"}, "the -inf class is a one-vs-rest margin of +inf, where the "
                                                      "sampled surrogates are unbounded"),
    ("smooth_adversarial_comp_sum_loss", "neg_inf_other_class"): (
        {"nan"}, "its regularizer takes the difference of clean and adversarial score gaps, inf - inf"),
    **{(n, "neg_inf_other_class"): ({"nan"}, _EMBEDDING) for n in (
        "nd_loss", "unpg_loss", "tcm_loss", "icnn_loss", "proto_triplet_loss", "amcl_loss", "ISogCLRLoss")},
    **{(n, "neg_inf_other_class"): ({"nan"}, _KL) for n in ("kd_loss", "bdkd_loss", "MTARDLoss")},
}


def _cases():
    return [(n, c) for n in _registered_losses() if n in ADAPTERS for c in CASES if _applies(n, c)]


@pytest.mark.parametrize("name, case", _cases())
def test_loss_under_bad_input_gives_a_value_error_or_its_documented_behaviour(name, case):
    accepted, why = EXPECTED.get((name, case), (DEFAULT[case], "torch's cross_entropy's behaviour"))
    got = _run(name, case)
    assert got in accepted, f"{name} on {case}: {got}; expected one of {sorted(accepted)} ({why})"


def test_expected_lists_only_cases_that_run():
    runs = set(_cases())
    assert not [k for k in EXPECTED if k not in runs]


def test_value_errors_name_the_argument():
    """The ValueErrors the suite counts as clear say which argument is wrong."""
    x, y = _fixed((N, C), torch.float32), torch.arange(N) % C
    y_bad = y.clone(); y_bad[0] = C
    for name in ("comp_sum_loss", "z_loss", "ldr_loss", "correctness_aware_loss", "unpg_loss"):
        with pytest.raises(ValueError, match=r"Invalid (target|labels)"):
            ADAPTERS[name].call(x, y_bad)
    with pytest.raises(ValueError, match=r"Invalid targets: expected a multi-hot tensor of 0s and 1s"):
        ADAPTERS["decoupled_softmax_loss"].call(x, F.one_hot(y, C) * 2)


# ---------------------------------------------------------------- what the suite found, pinned down directly

def test_tcm_loss_is_nan_for_nan_embeddings_not_silently_finite():
    tcm = _gw("tcm_loss")
    emb = _fixed((N, C), torch.float32)
    emb[2, 1] = math.nan
    assert torch.isnan(tcm(emb, torch.arange(N) % 2))
    # unchanged for finite embeddings: the masks are the same sets as before
    e = F.normalize(_fixed((N, C), torch.float32), dim=1)
    lab = torch.arange(N) % 2
    sim = e @ e.T
    same = lab[:, None] == lab[None, :]
    hp = same & ~torch.eye(N, dtype=torch.bool) & (sim <= 0.9)
    hn = ~same & (sim >= 0.5)
    want = (0.9 - sim)[hp].sum() / hp.sum().clamp(min=1) + (sim - 0.5)[hn].sum() / hn.sum().clamp(min=1)
    torch.testing.assert_close(tcm(e, lab), want)


def test_score_difference_regularizer_does_not_overflow_for_large_logits():
    from gradwise.losses.adversarial import score_difference_regularizer

    clean = torch.tensor([[1e20, -1e20, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], requires_grad=True)
    adv = torch.tensor([[2e20, -2e20, 0.0], [0.0, 0.0, 0.0], [1.5, 2.0, 2.0]])
    y = torch.tensor([0, 1, 2])
    got = score_difference_regularizer(clean, adv, y)
    d = (adv - clean).double()
    d = d - d.gather(1, y[:, None])
    torch.testing.assert_close(got.double(), d.norm(dim=1), rtol=1e-6, atol=0)  # 3e20 squared overflowed float32
    g, = torch.autograd.grad(got.sum(), clean)
    assert torch.isfinite(g).all() and (g[1] == 0).all()  # zero (not NaN) gradient where x' = x
    nan_adv = adv.clone(); nan_adv[2, 0] = math.nan
    assert torch.isnan(score_difference_regularizer(clean, nan_adv, y)[2])


def test_decoupled_softmax_refuses_non_binary_targets():
    loss = _gw("decoupled_softmax_loss")
    x = _fixed((2, 3), torch.float32)
    for bad in (torch.tensor([[2, 0, 0], [0, 1, 0]]), torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.7, 0.0]])):
        with pytest.raises(ValueError, match="Invalid targets"):
            loss(x, bad)
    ok = torch.tensor([[True, False, True], [False, False, False]])
    torch.testing.assert_close(loss(x, ok), loss(x, ok.float()))
