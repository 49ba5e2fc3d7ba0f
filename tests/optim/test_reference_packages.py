"""Direct comparison with the authors' PyPI packages on a problem other than the golden one.

A small float64 MLP on a regression task, two parameter groups with different
learning rates, trained by the reference and by gradwise from the same start.
"""
import contextlib
import io

import pytest
import torch

import gradwise.optim as go

# compares a fused kernel or stored data with torch's ops: .ci/run repeats it per ATEN_CPU_CAPABILITY
pytestmark = pytest.mark.numerics

adabelief_pytorch = pytest.importorskip("adabelief_pytorch")
adamp = pytest.importorskip("adamp")
lion_pytorch = pytest.importorskip("lion_pytorch")


def _model():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16),
                               torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()


def _train(make_opt, steps=40):
    model = _model()
    groups = [{"params": list(model[0].parameters())},
              {"params": list(model[2].parameters()) + list(model[4].parameters()), "lr_scale": 0.5}]
    for g in groups:
        if g.pop("lr_scale", None):
            g["lr_scale_marker"] = True
    opt = make_opt(groups)
    for g in opt.param_groups:
        if g.pop("lr_scale_marker", False):
            g["lr"] *= 0.5
    gen = torch.Generator().manual_seed(11)
    for _ in range(steps):
        x = torch.randn(32, 6, generator=gen, dtype=torch.float64)
        y = torch.sin(x.sum(1, keepdim=True))
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach() for p in model.parameters()]


CASES = [
    ("AdaBelief", lambda g, **k: adabelief_pytorch.AdaBelief(g, print_change_log=False, **k),
     lambda g, **k: go.AdaBelief(g, **k), [
         dict(lr=3e-3),
         dict(lr=3e-3, rectify=False, amsgrad=True),
         dict(lr=3e-3, rectify=False, weight_decay=1e-2, fixed_decay=True),
         dict(lr=3e-3, rectify=True, degenerated_to_sgd=False, weight_decay=5e-3),
         dict(lr=3e-3, rectify=False, weight_decay=1e-2, weight_decouple=False),
     ]),
    ("AdamP", adamp.AdamP, go.AdamP, [dict(lr=3e-3), dict(lr=3e-3, betas=(0.8, 0.99), weight_decay=0.1,
                                                            delta=0.5, wd_ratio=0.3, nesterov=True)]),
    ("SGDP", adamp.SGDP, go.SGDP, [dict(lr=1e-2), dict(lr=1e-2, momentum=0.9, dampening=0.1, weight_decay=1e-2,
                                                       delta=0.5)]),
    ("Lion", lion_pytorch.Lion, go.Lion, [dict(lr=1e-3), dict(lr=3e-4, betas=(0.95, 0.98), weight_decay=0.5)]),
]
RENAME = {"weight_decouple": "decoupled_weight_decay"}


@pytest.mark.parametrize("name,ref,ours,kw", [(n, r, o, k) for n, r, o, ks in CASES for k in ks],
                         ids=lambda v: v if isinstance(v, str) else (
                             "-".join(f"{a}={b}" for a, b in v.items()) if isinstance(v, dict) else ""))
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
def test_matches_reference_package(name, ref, ours, kw, fused):
    with contextlib.redirect_stdout(io.StringIO()):
        want = _train(lambda g: ref(g, **kw))
    got = _train(lambda g: ours(g, fused=fused, **{RENAME.get(k, k): v for k, v in kw.items()}))
    start = [p.detach() for p in _model().parameters()]
    assert any((w - s).abs().max() > 1e-3 for w, s in zip(want, start))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
