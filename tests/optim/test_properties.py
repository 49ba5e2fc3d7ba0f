"""Property tests (hypothesis): shapes, scales and the two update paths."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optim_cases import CASES, make
import pytest

# compares a fused kernel or stored data with torch's ops: .ci/run repeats it per ATEN_CPU_CAPABILITY
pytestmark = pytest.mark.numerics

shapes = st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple), min_size=1, max_size=4)

# optimizers whose step size does not grow with the gradient's scale (AdaBelief only unrectified:
# its rectified warm-up takes momentum-SGD steps)
NORMALIZED = ["AdaBelief-amsgrad", "DiffGrad", "AdamP", "Lion", "LionK", "SPAM", "StableSPAM", "OrthoAdamW", "AdamW"]


def _params(shape_list, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shape_list]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape_list=shapes, name=st.sampled_from(sorted(CASES)), seed=st.integers(0, 2**16))
def test_fused_and_foreach_agree_on_any_shapes(shape_list, name, seed):
    runs = []
    for fused in (True, False):
        params = _params(shape_list, torch.float64, seed)
        opt = make(name, params, fused=fused)
        g = torch.Generator().manual_seed(seed + 1)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
            opt.step()
        runs.append(params)
    for a, b in zip(*runs):
        assert a.shape == b.shape  # one-element tensors included (⊥Grad defines their ⊥ part as 0)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(NORMALIZED), log_scale=st.floats(-30, 30), fused=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_normalized_optimizers_stay_finite_for_extreme_gradient_scales(name, log_scale, fused, dtype):
    if dtype == torch.float32:
        # g**2 (second moments, norms) overflows float32 past |g| ~ 1e19 in every Adam-type method,
        # torch.optim.Adam included (StableSPAM's docstring says so for its AdaGN statistics)
        log_scale = min(log_scale, 15.0)
    params = _params([(6, 5), (5,)], dtype, 0)
    opt = make(name, params, fused=fused)
    scale = 10.0 ** log_scale
    g = torch.Generator().manual_seed(3)
    before = [p.detach().clone() for p in params]
    for _ in range(5):
        for p in params:
            p.grad = (torch.randn(p.shape, generator=g, dtype=torch.float64) * scale).to(dtype)
        opt.step()
    for p, b in zip(params, before):
        assert torch.isfinite(p).all(), (name, scale)
        # the step stays bounded by a small multiple of lr per step, whatever the scale
        lr = CASES[name]["lr"]
        assert (p - b).abs().max() <= 5 * 20 * lr + 1e-6
