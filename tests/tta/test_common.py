"""What every tta wrapper shares: BatchNorm set-up, bad input, reset, state_dict, deepcopy, compile."""
import copy

import pytest
import torch
from torch import nn

from gradwise import tta
from gradwise.registry import methods
from gradwise.tta import EATA, Tent, bn_parameters, configure_bn
from gradwise.tta._common import TTAWrapper

# every registered wrapper, with the keyword arguments that make it step on every batch (info["test_kwargs"])
RECORDS = [m for m in methods(family="tta") if isinstance(m.load(), type) and issubclass(m.load(), TTAWrapper)]
WRAPPERS = [m.load() for m in RECORDS]
KWARGS = {m.load(): dict(m.info.get("test_kwargs", {})) for m in RECORDS}


def mixed_model():
    """BatchNorm 1d, 2d and 3d in one model (the authors' code configures 2d only)."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv3 = nn.Conv3d(1, 2, 1)
            self.bn3 = nn.BatchNorm3d(2)
            self.bn2 = nn.BatchNorm2d(4)
            self.fc = nn.Linear(2 * 2 * 3 * 3, 6)
            self.bn1 = nn.BatchNorm1d(6)
            self.head = nn.Linear(6, 4)

        def forward(self, x):  # x: (N, 1, 2, 3, 3)
            h = self.bn3(self.conv3(x)).relu()
            h = self.bn2(h.flatten(1, 2)).relu()
            return self.head(self.bn1(self.fc(h.flatten(1))).relu())

    return Net().double()


def test_configure_bn_handles_every_batchnorm():
    model = mixed_model().eval()
    assert configure_bn(model) is model and model.training
    bns = [model.bn3, model.bn2, model.bn1]
    for m in bns:
        assert m.weight.requires_grad and m.bias.requires_grad
        assert not m.track_running_stats and m.running_mean is None and m.running_var is None
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("bn"))
    assert bn_parameters(model) == [p for m in bns for p in (m.weight, m.bias)]


@pytest.mark.parametrize("cls", WRAPPERS)
def test_batchnorm_1d_2d_3d_all_adapt(cls):
    model = mixed_model()
    before = [p.detach().clone() for p in bn_parameters(model)]
    wrapper = cls(model, torch.optim.SGD(bn_parameters(model), lr=0.5), **KWARGS[cls])
    wrapper(torch.randn(6, 1, 2, 3, 3, dtype=torch.float64))
    assert all((p - b).abs().max() > 0 for p, b in zip(bn_parameters(model), before))


def test_batchnorm3d_equals_batchnorm2d_on_depth_one():
    torch.manual_seed(1)
    m2 = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 4)).double()
    m3 = nn.Sequential(nn.BatchNorm3d(3), nn.Flatten(), nn.Linear(12, 4)).double()
    m3.load_state_dict(m2.state_dict())
    t2, t3 = Tent(m2, torch.optim.SGD(bn_parameters(m2), lr=0.3)), Tent(m3, torch.optim.SGD(bn_parameters(m3), lr=0.3))
    for _ in range(2):
        x = torch.randn(5, 3, 2, 2, dtype=torch.float64)
        torch.testing.assert_close(t3(x.unsqueeze(2)), t2(x), rtol=0, atol=1e-13)
    torch.testing.assert_close(bn_parameters(m3), bn_parameters(m2), rtol=0, atol=1e-13)


@pytest.mark.parametrize("cls", WRAPPERS)
def test_model_without_affine_batchnorm_is_refused(cls):
    with pytest.raises(ValueError, match="Invalid model: .*no BatchNorm"):
        cls(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)))
    with pytest.raises(ValueError, match=r"Invalid model: BatchNorm layer\(s\) \['1'\] have affine=False"):
        cls(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, affine=False)))
    with pytest.raises(TypeError, match="Invalid model"):
        cls(lambda x: x)
    with pytest.raises(TypeError, match="Invalid optimizer"):
        cls(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), optimizer="sgd")


@pytest.mark.parametrize("cls", WRAPPERS)
@pytest.mark.parametrize("n", [0, 1])
def test_batch_of_one_or_empty_is_refused(cls, n, make_model):
    wrapper = cls(make_model("cnn"))
    with pytest.raises(ValueError, match=f"Invalid x: a batch of {n} sample"):
        wrapper(torch.zeros(n, 2, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="Invalid x"):
        wrapper([1.0, 2.0])


@pytest.mark.parametrize("cls", WRAPPERS)
def test_default_optimizer_is_the_authors_sgd(cls, make_model):
    model = make_model("cnn")
    opt = cls(model).optimizer
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == 2.5e-4 and opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[0]["params"] == bn_parameters(model)


@pytest.mark.parametrize("cls", WRAPPERS)
def test_reset_restores_weights_and_optimizer_state(cls, make_model):
    model = make_model("mlp")
    wrapper = cls(model, torch.optim.SGD(bn_parameters(model), lr=0.2, momentum=0.9), **KWARGS[cls])
    xs = torch.randn(3, 8, 6, dtype=torch.float64)
    first = [wrapper(x) for x in xs]
    assert wrapper.optimizer.state  # momentum buffers exist
    wrapper.reset()
    assert not wrapper.optimizer.state
    if hasattr(wrapper, "prob_ema"):
        wrapper.prob_ema = None  # EATA's reset() keeps the EMA (authors' behaviour); clear it to replay exactly
    again = [wrapper(x) for x in xs]
    torch.testing.assert_close(again, first, rtol=0, atol=0)


@pytest.mark.parametrize("cls", WRAPPERS)
def test_episodic_resets_before_every_batch(cls, make_model):
    model = make_model("mlp")
    wrapper = cls(model, torch.optim.SGD(bn_parameters(model), lr=0.2), episodic=True, **KWARGS[cls])
    x = torch.randn(8, 6, dtype=torch.float64)
    a = wrapper(x)
    wrapper(torch.randn(8, 6, dtype=torch.float64))
    if hasattr(wrapper, "prob_ema"):
        wrapper.prob_ema = None
    torch.testing.assert_close(wrapper(x), a, rtol=0, atol=0)


@pytest.mark.parametrize("cls", WRAPPERS)
def test_deepcopy_is_independent_and_continues_alike(cls, make_model):
    model = make_model("mlp")
    wrapper = cls(model, torch.optim.SGD(bn_parameters(model), lr=0.2, momentum=0.9), **KWARGS[cls])
    xs = torch.randn(3, 8, 6, dtype=torch.float64)
    wrapper(xs[0])
    twin = copy.deepcopy(wrapper)
    assert twin.optimizer.param_groups[0]["params"][0] is bn_parameters(twin.model)[0]
    torch.testing.assert_close(twin(xs[1]), wrapper(xs[1]), rtol=0, atol=0)
    torch.testing.assert_close(bn_parameters(twin.model), bn_parameters(model), rtol=0, atol=0)
    twin(xs[2])
    assert not torch.equal(bn_parameters(twin.model)[0], bn_parameters(model)[0])


@pytest.mark.parametrize("cls", WRAPPERS)
def test_state_dict_round_trip_continues_identically(cls, make_model):
    def fresh():
        model = make_model("mlp", seed=3)
        return cls(model, torch.optim.SGD(bn_parameters(model), lr=0.2, momentum=0.9), **KWARGS[cls])

    a = fresh()
    xs = torch.randn(3, 8, 6, dtype=torch.float64)
    a(xs[0]), a(xs[1])
    b = fresh()
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(xs[2]), a(xs[2]), rtol=0, atol=0)
    torch.testing.assert_close(bn_parameters(b.model), bn_parameters(a.model), rtol=0, atol=0)
    if cls is EATA:
        assert (b.num_reliable, b.num_selected) == (a.num_reliable, a.num_selected)
        torch.testing.assert_close(b.prob_ema, a.prob_ema, rtol=0, atol=0)


class Wrapped(nn.Module):
    """Stands in for torch.compile's OptimizedModule: the model under ``_orig_mod``, names prefixed."""

    def __init__(self, inner):
        super().__init__()
        self._orig_mod = inner

    def forward(self, x):
        return self._orig_mod(x)


@pytest.mark.parametrize("compile_it", [pytest.param(True, marks=pytest.mark.slow), False],
                         ids=["compiled", "orig_mod"])
@pytest.mark.parametrize("cls", WRAPPERS)
def test_compiled_inner_model(cls, compile_it, make_model):
    plain, inner = make_model("mlp", seed=4), make_model("mlp", seed=4)
    compiled = torch.compile(inner, backend="eager") if compile_it else Wrapped(inner)
    kw = dict(KWARGS[cls])
    if cls is EATA:  # Fisher names are the uncompiled model's, so they work for either
        kw["fishers"] = tta.eata_fishers(make_model("mlp", seed=4), [torch.randn(4, 6, dtype=torch.float64)])
    a = cls(plain, torch.optim.SGD(bn_parameters(plain), lr=0.2), **kw)
    b = cls(compiled, torch.optim.SGD(bn_parameters(compiled), lr=0.2), **kw)
    for _ in range(2):
        x = torch.randn(8, 6, dtype=torch.float64)
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=1e-12)
    b.reset()
    torch.testing.assert_close(bn_parameters(inner), bn_parameters(make_model("mlp", seed=4)), rtol=0, atol=0)


def test_family_is_registered():
    recs = {m.name: m for m in methods(family="tta")}
    assert {Tent, EATA} <= set(WRAPPERS)
    assert recs["Tent"].seed is False and recs["EATA"].seed is True
    assert recs["EATA"].paper == "Efficient Test-Time Model Adaptation without Forgetting"
    assert {"configure_bn", "bn_parameters", "Tent", "EATA", "eata_fishers"} <= set(tta.__all__)
