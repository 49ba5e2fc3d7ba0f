"""Reliability suite for losses (issue 8): every loss in the registry through the same bad-input cases.

The cases are those of torch's own cross entropy under bad input: labels out of range or of the wrong type,
NaN and inf inputs, an empty batch, a batch whose labels are all ``ignore_index``, and half-precision inputs at
the extremes of their range. Each loss must give, for each case, either a ``ValueError`` naming the argument, or
the behaviour its record documents (finite, or NaN where torch's ``cross_entropy`` gives NaN), never an
IndexError or RuntimeError from inside a kernel, and never a silently finite number for NaN input.

What the suite needs to know about a loss is on its registry record, ``info["reliability"]`` (see
:func:`adapter`): how to call it and which departures from torch's behaviour it documents, with the reason.
Every record of kind ``loss`` must carry one (``test_every_registered_loss_has_reliability_info``), and records of
other kinds that are losses (``correctness_aware_loss``, ``reweighted_loss``) opt in with one, so a new loss is
covered the day it is registered.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

from gradwise.registry import methods

torch.set_num_threads(1)

N, C = 6, 4  # samples, classes (also the embedding width for metric losses)

LABELS = ("class", "binary", "index", "ids", "multi_hot", "none")


@dataclass(frozen=True)
class Adapter:
    """How the suite calls one loss: ``call(x, y)`` with ``x`` [N, C] the loss's main float input (logits,
    embeddings, scores) and ``y`` [N] its labels (None for losses that take none). Other inputs are built
    from fixed values of the same dtype so that a bad value in ``x`` or ``y`` is the only bad value.
    ``labels``: ``"class"`` (class indices in [0, C)), ``"binary"`` ({-1, +1}), ``"index"`` (sample indices in
    [0, N)), ``"ids"`` (any integers naming groups, as metric losses take them), ``"multi_hot"`` or ``"none"``;
    ``ignore_index``: it skips label -100; ``expected``: case -> (accepted outcomes, why)."""

    call: Callable
    labels: str = "class"
    ignore_index: bool = False
    expected: dict = field(default_factory=dict)


def _fixed(shape, dtype, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).to(dtype)


# The inputs a record's ``info["reliability"]["inputs"]`` may name, in the order the loss takes them
# (default ``("x", "labels")``): each built from the suite's ``x`` [N, C] and ``y``.
INPUTS: dict[str, Callable] = {
    "x": lambda x, y: x,                                       # the main input, where the bad values go
    "labels": lambda x, y: y,                                  # the labels (their kind: ``labels``)
    "scores": lambda x, y: x[:, 2],                            # one score per sample (binary losses)
    "losses": lambda x, y: x[:, 2].abs(),                      # per-sample losses (reweighting)
    "logprob": lambda x, y: torch.log_softmax(x, 1)[:, 2],     # a log-probability per sample
    "other": lambda x, y: _fixed(x.shape, x.dtype),            # a second view / adversarial / auxiliary logits
    "teacher": lambda x, y: _fixed(x.shape, x.dtype, seed=2),  # a teacher's logits
    "class_matrix": lambda x, y: _fixed((C, C), x.dtype, seed=3),  # class centers or class weights
}


def adapter(record) -> Adapter:
    """The suite's call of ``record`` from its ``info["reliability"]``, whose keys are all optional:

    ``inputs`` (names from :data:`INPUTS`, default ``("x", "labels")``), ``labels`` (one of :data:`LABELS`,
    default ``"class"``), ``ignore_index`` (it skips label -100), ``kwargs`` (keyword arguments of the call),
    ``seeded`` (pass ``generator=torch.Generator().manual_seed(0)``), ``init`` (constructor arguments when the
    record is a class; the value ``"N"`` is the suite's batch size) and ``expected`` (case -> (outcome or
    outcomes, why): the documented departures from the default behaviour)."""
    spec = dict(record.info["reliability"])
    unknown = set(spec) - {"inputs", "labels", "ignore_index", "kwargs", "seeded", "init", "expected"}
    assert not unknown, f"{record.name}: unknown reliability keys {sorted(unknown)}"
    obj = record.load()
    inputs = tuple(spec.get("inputs", ("x", "labels")))
    assert set(inputs) <= set(INPUTS), f"{record.name}: inputs {inputs} (known: {sorted(INPUTS)})"
    kwargs = dict(spec.get("kwargs", {}))
    init = {k: N if v == "N" else v for k, v in spec.get("init", {}).items()}

    def call(x, y):
        fn = obj(**init) if inspect.isclass(obj) else obj
        extra = {"generator": torch.Generator().manual_seed(0)} if spec.get("seeded") else {}
        return fn(*(INPUTS[name](x, y) for name in inputs), **kwargs, **extra)

    expected = {case: ({out} if isinstance(out, str) else set(out), why)
                for case, (out, why) in spec.get("expected", {}).items()}
    labels = spec.get("labels", "class")
    assert labels in LABELS, f"{record.name}: labels {labels!r} (accepted: {LABELS})"
    return Adapter(call, labels, bool(spec.get("ignore_index", False)), expected)


def _registered_losses() -> list:
    """Every registry record that is a loss: kind ``loss``, and records of other kinds that say how to call them."""
    return sorted((m for m in methods() if m.kind == "loss" or "reliability" in m.info), key=lambda m: m.name)


ADAPTERS: dict[str, Adapter] = {m.name: adapter(m) for m in _registered_losses() if "reliability" in m.info}


def _gw(name):
    return next(m for m in methods() if m.name == name).load()


def test_every_registered_loss_has_reliability_info():
    missing = [m.name for m in _registered_losses() if "reliability" not in m.info]
    assert not missing, (f"register {missing} with info={{'reliability': {{...}}}} saying how the suite calls it "
                         "(tests/losses/test_reliability.py: adapter)")
    assert len(ADAPTERS) >= 23  # the suite is not silently empty


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

#: (loss, case) -> (outcomes, why): the documented departures from DEFAULT, read from the records
EXPECTED: dict[tuple[str, str], tuple[set[str], str]] = {
    (name, case): outcome for name, a in ADAPTERS.items() for case, outcome in a.expected.items()}


def _cases():
    return [(n, c) for n in ADAPTERS for c in CASES if _applies(n, c)]


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


# ---------------------------------------------------------------- reductions, from the same records

def _takes_reduction(record) -> bool:
    obj = record.load()
    return "reduction" in inspect.signature(obj.__init__ if inspect.isclass(obj) else obj).parameters


REDUCING = [n for n, m in ((m.name, m) for m in _registered_losses()) if n in ADAPTERS and _takes_reduction(m)]


def _reduced(name: str, x, y, reduction: str):
    record = next(m for m in methods() if m.name == name)
    spec = {**record.info["reliability"]}
    where = "init" if inspect.isclass(record.load()) else "kwargs"
    spec[where] = {**spec.get(where, {}), "reduction": reduction}
    return adapter(dataclasses.replace(record, info={"reliability": spec})).call(x, y)


@pytest.mark.parametrize("name", REDUCING)
def test_reductions_agree_and_ignored_samples_count_for_nothing(name):
    """``"sum"`` is the sum and ``"mean"`` the mean over kept samples of ``"none"``; ignored samples get 0."""
    a = ADAPTERS[name]
    x, y = _fixed((N, C), torch.float64, seed=4), _labels(a.labels, N)
    keep = torch.ones(N, dtype=torch.bool)
    if a.ignore_index:
        y = y.clone()
        y[[1, 4]] = -100
        keep[[1, 4]] = False
    none, total, mean = (_reduced(name, x, y, r) for r in ("none", "sum", "mean"))
    torch.testing.assert_close(total, none.sum())
    if a.ignore_index:
        assert none.shape[0] == N and (none[~keep] == 0).all()
        torch.testing.assert_close(mean, none[keep].mean())
    else:
        torch.testing.assert_close(mean, none.mean())


def test_reduction_suite_is_not_silently_empty():
    assert len(REDUCING) >= 15 and "comp_sum_loss" in REDUCING and "ISogCLRLoss" in REDUCING
