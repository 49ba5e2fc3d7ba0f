"""LAME: affinities and adapted assignments equal the authors' lame.py (tests/data/lame_golden.pt); the
wrapper reads the head's input, changes no weights and works under no_grad; bad input is refused."""
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradwise.tta.lame_adaptation as lame_mod
from gradwise.tta import LAME, lame, lame_affinity, laplacian_optimization

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: intra-op threads only wait

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "lame_golden.pt", weights_only=True)


def _id(c):
    return f"N{c['probs'].shape[0]}-{c['affinity']}-k{c['knn']}-s{int(c['force_symmetry'])}-T{c['max_steps']}"


def _kwargs(c):
    return {k: c[k] for k in ("affinity", "knn", "force_symmetry", "bound_lambda", "max_steps")}


@pytest.mark.parametrize("case", GOLDEN, ids=_id)
def test_lame_equals_the_authors_run_step(case):
    y = lame(case["probs"], case["feats"], **_kwargs(case))
    torch.testing.assert_close(y, case["Y"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", [c for c in GOLDEN if "kernel" in c], ids=_id)
def test_affinity_equals_the_authors(case):
    w = lame_affinity(F.normalize(case["feats"], dim=-1), case["affinity"], case["knn"])
    torch.testing.assert_close(w, case["kernel"], rtol=0, atol=1e-12)
    assert w.dtype == torch.float64


@pytest.mark.parametrize("case", [c for c in GOLDEN if "kernel" in c and c["converged_at"] > 2], ids=_id)
def test_solver_stops_where_the_authors_loop_does(case):
    unary = -(case["probs"] + 1e-10).log()
    w = case["kernel"]
    if case["force_symmetry"]:
        w = (w + w.T) / 2
    lam = case["bound_lambda"]
    full = laplacian_optimization(unary, w, bound_lambda=lam, max_steps=case["max_steps"])
    torch.testing.assert_close(full, case["Y"], rtol=0, atol=1e-12)
    # their break at loop index i means i + 1 updates: one fewer gives another Y
    at = case["converged_at"] + 1
    assert torch.equal(laplacian_optimization(unary, w, bound_lambda=lam, max_steps=at), full)
    assert not torch.equal(laplacian_optimization(unary, w, bound_lambda=lam, max_steps=at - 1), full)


def test_accelerator_loop_freezes_y_and_gives_the_same_result(monkeypatch):
    # the path that reads the stopping test back every 10 steps, run on CPU
    monkeypatch.setattr(lame_mod, "_sync_every", lambda device: 10)
    for case in GOLDEN:
        torch.testing.assert_close(lame(case["probs"], case["feats"], **_kwargs(case)), case["Y"],
                                   rtol=0, atol=1e-12)


def test_rbf_keeps_self_affinity_and_its_bandwidth_counts_the_point():
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    # knn=2: the 2nd nearest counting the point itself = nearest other point: 1, 1, 2 -> sigma = 4/3
    w = lame_affinity(x, "rbf", knn=2)
    d2 = torch.tensor([[0, 1, 9], [1, 0, 4], [9, 4, 0]], dtype=torch.float64)
    torch.testing.assert_close(w, torch.exp(-d2 / (2 * (4 / 3) ** 2)))
    assert torch.equal(w.diagonal(), torch.ones(3, dtype=torch.float64))


def test_rbf_with_coinciding_points_gives_the_limit_kernel_not_nan():
    x = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    w = lame_affinity(x, "rbf", knn=2)  # sigma = 0
    assert torch.equal(w, torch.tensor([[1.0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]))


def test_knn_excludes_the_point_itself_even_with_duplicates():
    x = torch.tensor([[0.0], [0.0], [5.0], [6.0]])
    w = lame_affinity(x, "knn", knn=1)
    assert torch.equal(w.diagonal(), torch.zeros(4))
    assert torch.equal(w.sum(1), torch.ones(4))
    assert w[0, 1] == 1 and w[1, 0] == 1


def test_float32_inputs_give_float32_outputs():
    gen = torch.Generator().manual_seed(0)
    p, f = torch.rand(10, 4, generator=gen).softmax(-1), torch.randn(10, 5, generator=gen)
    for aff in ("rbf", "knn", "linear"):
        y = lame(p, f, affinity=aff)
        assert y.dtype == torch.float32 and torch.allclose(y.sum(-1), torch.ones(10))


@pytest.mark.parametrize("kwargs, match", [
    (dict(knn=0), "Invalid knn"),
    (dict(knn=1, affinity="rbf"), "Invalid knn"),
    (dict(affinity="cosine"), "Invalid affinity.*'rbf', 'knn' or 'linear'"),
    (dict(affinity="kNN"), "Invalid affinity"),
    (dict(max_steps=-1), "Invalid max_steps"),
    (dict(bound_lambda=float("nan")), "Invalid bound_lambda"),
    (dict(force_symmetry=1), "Invalid force_symmetry"),
])
def test_bad_arguments_are_refused(kwargs, match):
    p, f = torch.full((4, 3), 1 / 3), torch.randn(4, 2)
    with pytest.raises(ValueError, match=match):
        lame(p, f, **kwargs)
    with pytest.raises(ValueError, match=match):
        LAME(nn.Linear(2, 3), **kwargs)


def test_bad_shapes_are_refused():
    p, f = torch.full((4, 3), 1 / 3), torch.randn(4, 2)
    with pytest.raises(ValueError, match="Invalid feats: 5 rows.*4"):
        lame(p, torch.randn(5, 2))
    with pytest.raises(ValueError, match="Invalid probs: an empty batch"):
        lame(p[:0], f[:0])
    with pytest.raises(ValueError, match="Invalid feats: an empty batch"):
        lame_affinity(f[:0])
    with pytest.raises(ValueError, match="Invalid probs.*2-D"):
        lame(p[0], f)
    with pytest.raises(ValueError, match="Invalid kernel"):
        laplacian_optimization(p, torch.eye(3))
    with pytest.raises(ValueError, match="Invalid kernel"):
        laplacian_optimization(p, torch.eye(4)[:, :3])


class Net(nn.Module):
    """The classifier ``fc`` is not the last module: ``proj`` is registered after it, used before it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(8, 4)
        self.bn = nn.BatchNorm1d(8)
        self.proj = nn.Linear(6, 8)

    def body(self, x):
        return torch.relu(self.bn(self.proj(x)))

    def forward(self, x):
        return self.fc(self.body(x))


def _batch(n=16):
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(1))


def test_wrapper_reads_the_head_input_and_changes_nothing():
    net = Net()
    before = copy.deepcopy(net.state_dict())
    wrapped = LAME(net, head=net.fc, knn=3)
    assert not net.training  # eval mode, as the authors' NonAdaptiveMethod
    x = _batch()
    with torch.no_grad():
        out = wrapped(x)
        want = lame(net(x).softmax(-1), net.body(x), knn=3)
    torch.testing.assert_close(out.exp(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(16))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    # the default head is the last nn.Linear registered (here proj): other features, other output
    with torch.no_grad():
        other = LAME(net, knn=3)(x)
        want_proj = lame(net(x).softmax(-1), x, knn=3)
    torch.testing.assert_close(other.exp(), want_proj, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(other, out)


def test_wrapper_copies_and_missing_head_errors():
    net = Net()
    wrapped = LAME(net, head=net.fc)
    x = _batch()
    clone = copy.deepcopy(wrapped)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), wrapped(x))
    assert set(wrapped.state_dict()) == {f"model.{k}" for k in net.state_dict()}
    with pytest.raises(ValueError, match="Invalid head: not a submodule"):
        LAME(net, head=nn.Linear(8, 4))
    with pytest.raises(ValueError, match="has no nn.Linear"):
        LAME(nn.Sequential(nn.ReLU()))
    with pytest.raises(RuntimeError, match="head was not called"):
        net.spare = nn.Linear(4, 4)  # now the default head, never called
        LAME(net)(x)


@pytest.mark.slow  # dynamo tracing takes ~3-10 s on a shared 2-core machine
def test_wrapper_around_a_compiled_model():
    torch._dynamo.reset()
    net = Net().eval()
    x = _batch()
    with torch.no_grad():
        eager = LAME(net, head=net.fc)(x)
        compiled = LAME(torch.compile(net, backend="eager"), head=net.fc)(x)
    torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager)
