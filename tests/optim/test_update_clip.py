"""Update transforms (after the update) over every registered optimizer, with UpdateClip."""
import pytest
import torch

import gradwise.optim as go
from gradwise.optim import UpdateClip, UpdateTransform
from optim_cases import CASES, make
from optim_problem import make_params, set_grads

PATHS = [pytest.param(True, id="fused"), pytest.param(False, id="foreach")]


def _step(opt, params, t):
    set_grads(params, t)
    before = [p.detach().clone() for p in params]
    opt.step()
    return [p.detach() - b for p, b in zip(params, before)]


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_update_clip_bounds_every_tensors_update_rms(name, fused):
    ps = make_params()
    max_rms = 1e-4
    clipped = make(name, ps, fused=fused, update_transforms=[UpdateClip(max_rms)])
    clipped_any = False
    for t in range(12):
        for d in _step(clipped, ps, t):
            rms = d.norm() / d.numel() ** 0.5
            assert rms <= max_rms * (1 + 1e-9), (name, t, float(rms))
            clipped_any |= bool(rms > max_rms * 0.999)
    assert clipped_any, name  # the bound was reached: the transform had work to do


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_update_clip_within_its_bound_leaves_the_trajectory(name, fused):
    # a bound no update reaches: the factor is exactly 1, and p_old + (p_new - p_old) is p_new to rounding
    ref, ps = make_params(), make_params()
    plain = make(name, ref, fused=fused)
    loose = make(name, ps, fused=fused, update_transforms=[UpdateClip(1e30)])
    for t in range(20):
        _step(plain, ref, t)
        _step(loose, ps, t)
    for p, r in zip(ps, ref):
        torch.testing.assert_close(p, r, rtol=1e-12, atol=1e-14)


def test_update_transform_sees_the_old_parameters_and_the_whole_update():
    seen = []

    class Halve(UpdateTransform):
        key = "halve"

        def init_state(self, p):
            return {"calls": torch.zeros((), dtype=p.dtype)}

        def apply(self, params, updates, states, group):
            seen.append(([p.clone() for p in params], [u.clone() for u in updates]))
            for st in states:
                st["halve.calls"] += 1
            return torch._foreach_mul(updates, 0.5)

    p = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    q = torch.nn.Parameter(p.detach().clone())
    plain = go.AdamW([q], lr=0.1, weight_decay=0.1)
    opt = go.AdamW([p], lr=0.1, weight_decay=0.1, update_transforms=[Halve()])
    p.grad = torch.randn(5, 3, dtype=torch.float64)
    q.grad = p.grad.clone()
    start = p.detach().clone()
    plain.step()
    opt.step()
    (olds, updates), = seen
    assert torch.equal(olds[0], start)
    torch.testing.assert_close(updates[0], q.detach() - start, rtol=1e-15, atol=0)  # decay and lr included
    torch.testing.assert_close(p.detach(), start + 0.5 * (q.detach() - start), rtol=1e-15, atol=1e-16)
    assert opt.state[p]["halve.calls"] == 1 and "halve.calls" in opt.state_dict()["state"][0]


def test_invalid_update_transforms_name_the_argument():
    w = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match=r"Invalid update_transforms entry: .*SpikeClip.* \(accepted: UpdateTransform"):
        go.AdamW(w, update_transforms=[go.SpikeClip()])
    with pytest.raises(ValueError, match=r"Invalid update_transforms: .* \(accepted: a list or tuple"):
        go.AdamW(w, update_transforms=UpdateClip())
    with pytest.raises(ValueError, match=r"Invalid max_rms: 0"):
        UpdateClip(0.0)
