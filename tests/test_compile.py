"""torch.compile with gradwise: the kernels are proper torch operators, and compiled code equals eager.

* The optimizer step runs eagerly under ``torch.compile`` (a clean graph
  break, see ``GradwiseOptimizer.step``), so ``torch.compile(opt.step)``, the
  recipe of PyTorch's "compiling the optimizer" tutorial, gives the eager
  result bit for bit and never recompiles, for every optimizer, fused and
  foreach.
* Every native kernel passes ``torch.library.opcheck`` on the arguments the
  optimizers and losses really pass it: schemas declare their mutations, the
  fake implementations agree with the kernels, and they trace under
  ``aot_eager`` with dynamic shapes.
* Losses with native kernels trace as torch ops when compiled, inside a
  compiled model's training step.
"""
from __future__ import annotations

import pytest
import torch

import gradwise.optim as go
from gradwise._kernels import family
from gradwise.losses import correctness_aware_loss, ldr_loss
from optim_cases import CASES, make

# compares a fused kernel or stored data with torch's ops: .ci/run repeats it per ATEN_CPU_CAPABILITY
pytestmark = pytest.mark.numerics

OPTIM_KERNELS = family("optim")
LOSS_KERNELS = family("losses")
NN_KERNELS = family("nn")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _grads(model, seed):
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


def _opts(name, fused):
    """The optimizer built from its test case, and from its defaults (lr only where it has none)."""
    cls = getattr(go, name.split("-")[0])
    return [lambda ps: make(name, ps, fused=fused), lambda ps: cls(ps, fused=fused)]


@pytest.mark.parametrize("fused", [None, False], ids=["default-fused", "foreach"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_step_equals_eager_and_never_recompiles(name, fused):
    from torch._dynamo.utils import counters

    for build in _opts(name, fused):
        m_eager, m_comp = _model(), _model()
        o_eager, o_comp = build(m_eager.parameters()), build(m_comp.parameters())
        step = torch.compile(o_comp.step)
        counters.clear()
        for i in range(6):
            _grads(m_eager, i)
            _grads(m_comp, i)
            o_eager.step()
            step()
        for a, b in zip(m_eager.parameters(), m_comp.parameters()):
            assert torch.equal(a, b), name
        assert counters["stats"]["unique_graphs"] <= 1, dict(counters["stats"])
        assert not counters["recompiles"], dict(counters["recompiles"])


def test_compiled_step_of_the_orthograd_wrapper_equals_eager():
    m_eager, m_comp = _model(), _model()
    o_eager = go.OrthoGrad(m_eager.parameters(), torch.optim.AdamW, lr=1e-2)
    o_comp = go.OrthoGrad(m_comp.parameters(), torch.optim.AdamW, lr=1e-2)
    step = torch.compile(o_comp.step)
    for i in range(4):
        _grads(m_eager, i)
        _grads(m_comp, i)
        o_eager.step()
        step()
    for a, b in zip(m_eager.parameters(), m_comp.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- the kernels as operators -------------------------------------------------------------------------------------

def _recorded_optimizer_calls():
    """(op name, args) of every optim kernel call made by one step of each optimizer case (fused)."""
    calls = []
    real = OPTIM_KERNELS.ops()

    class Recorder:
        def __getattr__(self, op_name):
            op = getattr(real, op_name)

            def record(*args):
                # as the step passes them, under no_grad: plain tensors, not parameters requiring grad
                calls.append((op_name, torch.utils._pytree.tree_map_only(
                    torch.Tensor, lambda t: t.detach().clone(), args)))
                return op(*args)
            return record

    orig = go._fused.ops
    go._fused.ops = lambda: Recorder()
    try:
        for name in sorted(CASES):
            model = _model()
            opt = make(name, model.parameters(), fused=True)
            for i in range(2):
                _grads(model, i)
                opt.step()
    finally:
        go._fused.ops = orig
    return calls


@pytest.mark.skipif(not OPTIM_KERNELS.available(), reason=f"optim kernels unavailable: {OPTIM_KERNELS.error()}")
def test_every_optimizer_kernel_passes_opcheck():
    calls = _recorded_optimizer_calls()
    seen = {}
    for op_name, args in calls:
        seen.setdefault(op_name, args)  # one call per kernel is enough, and keeps the test fast
    registered = {"adabelief_", "adamw_", "perp_stats", "diffgrad_", "lion_", "spam_", "stablespam_", "sgdsai_",
                  "radial_"}
    assert registered <= set(seen), f"kernels no optimizer case reached: {registered - set(seen)}"
    for op_name, args in seen.items():
        op = getattr(OPTIM_KERNELS.ops(), op_name).default
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.skipif(not LOSS_KERNELS.available(), reason=f"loss kernels unavailable: {LOSS_KERNELS.error()}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_loss_kernel_passes_opcheck(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=dtype)
    y = torch.randint(0, 5, (7,), generator=g)
    ops = LOSS_KERNELS.ops()
    utils = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(ops.ldr_softplus.default, (x, y, 2.0, 0.1, True, None), test_utils=utils)
    torch.library.opcheck(ops.ldr_softplus.default, (x, y, 2.0, 0.1, False, torch.rand(7, dtype=dtype)),
                          test_utils=utils)
    conf, pred, lse = ops.top_confidence_forward(x)
    torch.library.opcheck(ops.top_confidence_forward.default, (x,), test_utils=utils)
    torch.library.opcheck(ops.top_confidence_backward.default, (x, lse, pred, conf, torch.rand(7, dtype=dtype)),
                          test_utils=utils)


@pytest.mark.skipif(not NN_KERNELS.available(), reason=f"nn kernels unavailable: {NN_KERNELS.error()}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_every_nn_kernel_passes_opcheck(dtype, masked):
    g = torch.Generator().manual_seed(0)
    t, b, c = 5, 3, 8
    x = torch.randn(t, b, c, generator=g, dtype=dtype)
    w, bias = torch.rand(c, generator=g, dtype=dtype) + 0.5, torch.randn(c, generator=g, dtype=dtype)
    phi, ema = torch.rand(1, c, 1, 1, generator=g, dtype=dtype) + 0.5, torch.randn(1, c, 1, 1, generator=g, dtype=dtype)
    iters = torch.tensor([3])
    pad = (torch.rand(b, t, generator=g) < 0.3) if masked else None
    ops = NN_KERNELS.ops()
    utils = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    fwd = (x, w, bias, phi, iters, pad, 1e-5, 0.9, 2, 2)
    torch.library.opcheck(ops.power_norm_forward.default, fwd, test_utils=utils)
    _, r, stats = ops.power_norm_forward(*fwd)
    bwd = (torch.randn(t, b, c, generator=g, dtype=dtype), x, r, stats, w, ema, 0.9, 2)
    torch.library.opcheck(ops.power_norm_backward.default, bwd, test_utils=utils)
    torch.library.opcheck(ops.power_norm_eval.default, (x, w, bias, phi, 1e-5, 2), test_utils=utils)


# ---- losses inside a compiled training step -----------------------------------------------------------------------

@pytest.mark.parametrize("loss_fn", [ldr_loss, correctness_aware_loss], ids=["ldr_loss", "correctness_aware_loss"])
def test_compiled_model_and_loss_train_like_eager(loss_fn):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    m_eager, m_comp = _model(), _model()
    o_eager = go.AdaBelief(m_eager.parameters(), lr=1e-2)
    o_comp = go.AdaBelief(m_comp.parameters(), lr=1e-2)

    def train_step(model, opt):
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    compiled = torch.compile(train_step)
    for _ in range(3):
        le = train_step(m_eager, o_eager)
        lc = compiled(m_comp, o_comp)
        # inductor orders float operations its own way: equal to rounding, not bit for bit
        torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-6)
    for a, b in zip(m_eager.parameters(), m_comp.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
