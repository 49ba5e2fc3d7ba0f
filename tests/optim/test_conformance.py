"""Every optimizer against golden trajectories of the authors' code (tests/data/README.md).

The golden cases use the reference's own argument names; ``RENAME`` maps them
to gradwise's. A faithful implementation ends within ~1e-9 of the reference
after 60 float64 steps with gradient spikes.
"""
from pathlib import Path

import pytest
import torch

import gradwise.optim as go
from optim_problem import make_params, run

# compares a fused kernel or stored data with torch's ops: .ci/run repeats it per ATEN_CPU_CAPABILITY
pytestmark = pytest.mark.numerics

GOLDEN = torch.load(Path(__file__).parent.parent / "data" / "optim_golden.pt", weights_only=True)

# reference argument name -> gradwise argument name, per optimizer
RENAME = {
    "SPAM": {"DeltaT": "reset_interval", "threshold": "spike_threshold", "warmup_steps": "warmup_steps",
             "grad_accu_steps": "clip_delay"},
    "StableSPAM": {"update_proj_gap": "reset_interval", "total_T": "beta1_schedule_steps",
                   "eta_min": "beta1_min"},
}


def _gradwise_kwargs(name, ref_kwargs):
    ren = RENAME.get(name, {})
    return {ren.get(k, k): v for k, v in ref_kwargs.items()}


def _case_id(c):
    return c["name"] + "-" + "-".join(f"{k}={v}" for k, v in c["ref_kwargs"].items())


# both update paths: the fused CPU kernels and the torch._foreach_ one
PATHS = [pytest.param(True, id="fused"), pytest.param(False, id="foreach")]


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("case", GOLDEN, ids=_case_id)
def test_matches_authors_code(case, fused):
    cls = getattr(go, case["name"], None)
    if cls is None:
        pytest.fail(f"gradwise.optim has no {case['name']}")
    kw = _gradwise_kwargs(case["name"], case["ref_kwargs"]) | {"fused": fused}
    final = run(lambda ps: cls(ps, **kw), case["steps"])
    start = make_params()
    for got, want, p0 in zip(final, case["final"], start):
        # the trajectory moved, and we follow it
        assert (want - p0.detach()).abs().max() > 1e-3
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


ORTHO = torch.load(Path(__file__).parent.parent / "data" / "orthograd_golden.pt", weights_only=True)


@pytest.mark.parametrize("case", ORTHO, ids=_case_id)
def test_perpendicular_grad_matches_authors_wrapper(case):
    base = getattr(torch.optim, case["base"])
    if case["name"] == "OrthoAdamW":
        factories = [lambda ps: go.OrthoAdamW(ps, fused=True, **case["ref_kwargs"]),
                     lambda ps: go.OrthoAdamW(ps, fused=False, **case["ref_kwargs"]),
                     lambda ps: go.OrthoGrad(ps, base, **case["ref_kwargs"])]
    else:
        factories = [lambda ps: go.OrthoGrad(ps, base, **case["ref_kwargs"])]
    for make in factories:
        final = run(make, case["steps"])
        for got, want in zip(final, case["final"]):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("case", [c for c in GOLDEN if c["name"] == "Lion"], ids=_case_id)
def test_lion_k_with_l1_is_lion(case, fused):
    final = run(lambda ps: go.LionK(ps, k="l1", fused=fused, **case["ref_kwargs"]), case["steps"])
    for got, want in zip(final, case["final"]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
