"""RMT against the authors' code (tests/data/rmt_golden.pt, tools/golden/make_rmt_golden.py), plus the
source-free mode, bad input, reset and copies."""
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from gradwise.registry import get
from gradwise.tta import RMT, symmetric_cross_entropy

GOLDEN = Path(__file__).parents[1] / "data" / "rmt_golden.pt"
TOL = dict(rtol=1e-9, atol=1e-10)


def augment(x):
    """The generator's fixed augmentation."""
    return x.flip(-1) * 0.8 + 0.1


def build(arch):
    if arch == "cnn":
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).double()
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5)).double()


def flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def make(case, **over):
    """Our RMT set up as the generator set up theirs for ``case``."""
    model = build(case["arch"])
    model.load_state_dict(case["state"])
    o = case["optim"]
    params = list(model.parameters())
    if o["METHOD"] == "Adam":
        opt = torch.optim.Adam(params, lr=o["LR"], betas=(o["BETA"], 0.999), weight_decay=o["WD"])
    else:
        opt = torch.optim.SGD(params, lr=o["LR"], momentum=o["MOMENTUM"], dampening=o["DAMPENING"],
                              weight_decay=o["WD"], nesterov=o["NESTEROV"])
    source_free = case["lambda_ce_src"] == 0 and case["warmup_steps"] == 0
    kwargs = dict(augment=augment, source_prototypes=case["prototypes"], projector_dim=case["projector_dim"],
                  temperature=case["temperature"], teacher_momentum=case["teacher_momentum"],
                  lambda_ce_trg=case["lambda_ce_trg"], lambda_cont=case["lambda_cont"],
                  lambda_ce_src=case["lambda_ce_src"], source_batches=None if source_free else case["source"],
                  warmup_steps=case["warmup_steps"])
    kwargs.update(over)
    torch.manual_seed(case["seed"])  # the projector's initialization, drawn as theirs
    return RMT(model, opt, **kwargs)


def test_symmetric_cross_entropy_matches_theirs(golden):
    sce = golden["sce"]
    for alpha, values in zip(sce["alphas"], sce["values"]):
        for (x, y), want in zip(sce["pairs"], values):
            got = symmetric_cross_entropy(x, y, alpha=alpha)
            assert got.shape == (x.shape[0],)
            torch.testing.assert_close(got, want, **TOL)


def test_symmetric_cross_entropy_properties():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    # alpha = 0.5 is symmetric in its arguments; alpha = 0 is the cross-entropy with the teacher as target
    torch.testing.assert_close(symmetric_cross_entropy(x, y), symmetric_cross_entropy(y, x))
    ce = -(y.softmax(1) * x.log_softmax(1)).sum(1)
    torch.testing.assert_close(symmetric_cross_entropy(x, y, alpha=0.0), ce)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_steps_match_theirs(golden, index):
    case = golden["cases"][index]
    rmt = make(case)
    for k, v in rmt.projector.state_dict().items():  # seeded the same; torch's init rounds per CPU kernel
        torch.testing.assert_close(v, case["projector_init"][k], **TOL)
    torch.testing.assert_close(flat(rmt.model), case["after_warmup"][0], **TOL)
    torch.testing.assert_close(flat(rmt.teacher), case["after_warmup"][1], **TOL)
    for t, x in enumerate(case["batches"]):
        if t == case["reset_at"]:
            rmt.reset()
        with torch.no_grad():
            out = rmt(x)
        assert not out.requires_grad
        torch.testing.assert_close(out, case["outputs"][t], **TOL)
        torch.testing.assert_close(flat(rmt.model), case["students"][t], **TOL)
        torch.testing.assert_close(flat(rmt.teacher), case["teachers"][t], **TOL)
        torch.testing.assert_close(flat(rmt.projector), case["projectors"][t], **TOL)
    assert rmt.num_skipped == 0


def test_source_free_draws_no_source(golden):
    case = golden["cases"][1]
    rmt = make(case, lambda_ce_src=1.0)  # the weight is moot without source batches
    assert rmt.source_batches is None
    with torch.no_grad():
        out = rmt(case["batches"][0])
    torch.testing.assert_close(out, case["outputs"][0], **TOL)
    torch.testing.assert_close(flat(rmt.model), case["students"][0], **TOL)


def test_defaults_adapt_every_parameter_and_register():
    torch.manual_seed(0)
    model = build("cnn")
    rmt = RMT(model, augment=augment, source_prototypes=torch.randn(5, 4, dtype=torch.float64))
    assert not model.training and all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in rmt.teacher.parameters())
    assert isinstance(rmt.optimizer, torch.optim.Adam) and len(rmt.optimizer.param_groups) == 2
    assert model[1].running_mean is None
    before = flat(model).clone()
    with torch.no_grad():
        rmt(torch.randn(4, 2, 5, 5, dtype=torch.float64))
    assert not torch.equal(flat(model), before)
    ident = RMT(build("cnn"), augment=augment, source_prototypes=torch.randn(5, 4, dtype=torch.float64),
                projector_dim=None)  # their DomainNet-126 choice: no projector, no extra optimizer group
    assert isinstance(ident.projector, nn.Identity) and len(ident.optimizer.param_groups) == 1
    with torch.no_grad():
        assert torch.isfinite(ident(torch.randn(4, 2, 5, 5, dtype=torch.float64))).all()
    rec = get("RMT")
    assert rec.kind == "test-time-adaptation" and rec.entry == "gradwise.tta.rmt:RMT"


def test_reset_and_deepcopy(golden):
    case = golden["cases"][0]
    rmt = make(case)
    start = (flat(rmt.model).clone(), flat(rmt.teacher).clone(), flat(rmt.projector).clone())
    with torch.no_grad():
        rmt(case["batches"][0])
    twin = copy.deepcopy(rmt)
    with torch.no_grad():
        a, b = rmt(case["batches"][1]), twin(case["batches"][1])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(flat(rmt.teacher), flat(twin.teacher), rtol=0, atol=0)
    rmt.reset()
    for got, want in zip((rmt.model, rmt.teacher, rmt.projector), start):
        torch.testing.assert_close(flat(got), want, rtol=0, atol=0)
    assert not torch.equal(flat(twin.model), start[0])  # the copy is independent


def test_state_dict_round_trip(golden):
    case = golden["cases"][1]
    rmt = make(case)
    with torch.no_grad():
        rmt(case["batches"][0])
    other = make(case)
    other.load_state_dict(rmt.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(case["batches"][1]), rmt(case["batches"][1]), rtol=0, atol=0)


def test_bad_input():
    torch.manual_seed(0)
    protos = torch.randn(5, 4, dtype=torch.float64)
    ok = dict(augment=augment, source_prototypes=protos)
    with pytest.raises(TypeError, match="augment"):
        RMT(build("cnn"), augment=None, source_prototypes=protos)
    with pytest.raises(ValueError, match="source_prototypes"):
        RMT(build("cnn"), augment=augment, source_prototypes=torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="source_prototypes"):
        RMT(build("cnn"), augment=augment, source_prototypes=torch.randn(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="warmup_steps"):
        RMT(build("cnn"), warmup_steps=2, **ok)
    with pytest.raises(TypeError, match="source_batches"):
        RMT(build("cnn"), source_batches=iter([]), **ok)
    for name, value in (("temperature", 0.0), ("teacher_momentum", 1.5), ("lambda_cont", -1.0),
                        ("projector_dim", 0)):
        with pytest.raises(ValueError, match=name):
            RMT(build("cnn"), **ok, **{name: value})
    with pytest.raises(TypeError, match="optimizer"):
        RMT(build("cnn"), "sgd", **ok)
    with pytest.raises(ValueError, match="head"):
        RMT(nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)), **ok)
    with pytest.raises(ValueError, match="source_batches"):
        RMT(build("cnn"), source_batches=[], warmup_steps=1, **ok)
    rmt = RMT(build("cnn"), **ok)
    with pytest.raises(ValueError, match="x"):
        rmt(torch.randn(1, 2, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="x_ema"):
        symmetric_cross_entropy(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="alpha"):
        symmetric_cross_entropy(torch.randn(3, 4), torch.randn(3, 4), alpha=2.0)


def test_non_finite_step_is_skipped():
    torch.manual_seed(0)
    model = build("cnn")
    rmt = RMT(model, augment=augment, source_prototypes=torch.randn(5, 4, dtype=torch.float64))
    before = flat(model).clone(), flat(rmt.teacher).clone()
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    x[0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        rmt(x)
    assert rmt.num_skipped == 1
    assert torch.equal(flat(model), before[0]) and torch.equal(flat(rmt.teacher), before[1])


def test_episodic_steps_and_inference_mode(golden):
    case = golden["cases"][1]
    rmt = make(case, episodic=True, steps=2)
    x = case["batches"][0]
    with torch.no_grad():
        a = rmt(x)
        rmt(case["batches"][1])
        torch.testing.assert_close(rmt(x), a, rtol=0, atol=0)  # reset before every call
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="inference_mode"):
            rmt(x)
