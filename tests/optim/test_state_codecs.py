"""The state-codec hook over every registered optimizer, with the 16-bit codecs that ship."""
import copy

import pytest
import torch

import gradwise.optim as go
from gradwise.optim.state_codecs import BFloat16StateCodec, Float16StateCodec, StateCodec
from optim_cases import CASES, make
from optim_problem import make_params, set_grads

PATHS = [pytest.param(True, id="fused"), pytest.param(False, id="foreach")]


def _params():
    return [torch.nn.Parameter(p.detach().float()) for p in make_params()]


def _grads(params, t):
    shadow = [torch.nn.Parameter(p.detach().double()) for p in params]
    set_grads(shadow, t)
    for p, q in zip(params, shadow):
        p.grad = q.grad.float()


def _run(opt, params, steps, start=0):
    for t in range(start, start + steps):
        _grads(params, t)
        opt.step()


def _stored(opt, p):
    """The state tensors the codec stores: parameter-shaped floating state."""
    return {k: x for k, x in opt.state[p].items() if isinstance(x, torch.Tensor) and k != "step" and x.dim() > 0}


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_bfloat16_state_is_stored_in_bfloat16_and_tracks_float32_state(name, fused):
    ref, ps = _params(), _params()
    ref_opt = make(name, ref, fused=fused)
    opt = make(name, ps, fused=fused, state_codec=BFloat16StateCodec())
    _run(ref_opt, ref, 20)
    _run(opt, ps, 20)
    for p in ps:
        stored = _stored(opt, p)
        assert stored, name  # every optimizer here keeps parameter-shaped state
        assert all(x.dtype == torch.bfloat16 for x in stored.values()), {k: x.dtype for k, x in stored.items()}
        # per-tensor 0-dim statistics stay in the parameter's dtype
        assert all(x.dtype == torch.float32 for k, x in opt.state[p].items()
                   if isinstance(x, torch.Tensor) and x.dim() == 0 and k != "step")
    # 8 significant bits of state: the trajectory stays close to float32 state's (relative to how far it moved)
    start = _params()
    for p, r, p0 in zip(ps, ref, start):
        assert torch.isfinite(p).all()
        moved = (r - p0).norm()
        assert (p - r).norm() <= 0.1 * moved + 1e-6, (name, float((p - r).norm()), float(moved))


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_round_trip_keeps_the_encoded_state(name, fused):
    # save after 8 steps, load into a fresh optimizer, 8 more: as if never interrupted
    ps = _params()
    opt = make(name, ps, fused=fused, state_codec=BFloat16StateCodec())
    _run(opt, ps, 8)
    sd = copy.deepcopy(opt.state_dict())
    assert sd["gradwise_state_codec"] == "BFloat16StateCodec"
    assert any(x.dtype == torch.bfloat16 for st in sd["state"].values() for x in st.values()
               if isinstance(x, torch.Tensor))
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = make(name, qs, fused=fused, state_codec=BFloat16StateCodec())
    opt2.load_state_dict(sd)
    for p, q in zip(ps, qs):
        for k, x in _stored(opt, p).items():
            assert opt2.state[q][k].dtype == torch.bfloat16 and torch.equal(opt2.state[q][k], x), k
    _run(opt, ps, 8, start=8)
    _run(opt2, qs, 8, start=8)
    for p, q in zip(ps, qs):
        assert torch.equal(p, q), name


def test_codec_state_is_refused_by_an_optimizer_without_that_codec():
    ps = _params()
    opt = go.AdaBelief(ps, lr=1e-2, state_codec=BFloat16StateCodec())
    _run(opt, ps, 3)
    sd = opt.state_dict()
    for other in (None, Float16StateCodec()):
        plain = go.AdaBelief([torch.nn.Parameter(p.detach().clone()) for p in ps], lr=1e-2, state_codec=other)
        with pytest.raises(ValueError, match="stored by the state codec BFloat16StateCodec.*state_codec="
                                             "BFloat16StateCodec"):
            plain.load_state_dict(sd)
        assert not plain.state  # nothing loaded


def test_state_saved_without_a_codec_is_encoded_on_load():
    ps = _params()
    plain = go.AdaBelief(ps, lr=1e-2)
    _run(plain, ps, 3)
    coded = go.AdaBelief([torch.nn.Parameter(p.detach().clone()) for p in ps], lr=1e-2,
                         state_codec=BFloat16StateCodec())
    coded.load_state_dict(plain.state_dict())
    for p, q in zip(ps, coded.param_groups[0]["params"]):
        for k, x in _stored(plain, p).items():
            assert torch.equal(coded.state[q][k], x.to(torch.bfloat16)), k


@pytest.mark.parametrize("fused", PATHS)
def test_float16_codec_stores_float16(fused):
    ps = _params()
    opt = go.AdamW(ps, lr=1e-2, fused=fused, state_codec=Float16StateCodec())
    _run(opt, ps, 3)
    assert {x.dtype for p in ps for x in _stored(opt, p).values()} == {torch.float16}


def test_codec_sees_every_state_entry_around_each_update():
    # the hook's contract: decode before the update (float of the parameter's dtype), encode after
    seen = []

    class Recording(StateCodec):
        name = "Recording"

        def encode(self, name, x, param):
            seen.append(("encode", name, x.dtype))
            return x

        def decode(self, name, stored, param):
            seen.append(("decode", name, stored.dtype))
            return stored

        def fits(self, name, stored, param):
            return True

    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = go.AdamW([p], state_codec=Recording())
    p.grad = torch.randn(4, 3)
    # a fresh state too is handed to decode (as made, in the parameter's dtype) and encoded after
    for _ in range(2):
        seen.clear()
        opt.step()
        assert seen == [("decode", "exp_avg", torch.float32), ("decode", "exp_avg_sq", torch.float32),
                        ("encode", "exp_avg", torch.float32), ("encode", "exp_avg_sq", torch.float32)]


def test_invalid_state_codec_names_the_argument():
    with pytest.raises(ValueError, match=r"Invalid state_codec: 'bf16' \(accepted: None or a StateCodec"):
        go.AdamW([torch.nn.Parameter(torch.zeros(2))], state_codec="bf16")


@pytest.mark.parametrize("fused", PATHS)
def test_skipped_steps_leave_the_stored_state_as_it_was(fused):
    # skip_nonfinite with a codec: a NaN gradient changes neither parameters nor the stored state
    ps = _params()
    opt = go.AdaBelief(ps, lr=1e-2, rectify=False, fused=fused, skip_nonfinite=True,
                       state_codec=BFloat16StateCodec())
    _run(opt, ps, 3)
    saved = copy.deepcopy(opt.state_dict()["state"])
    before = [p.detach().clone() for p in ps]
    for p in ps:
        p.grad = torch.full_like(p, float("nan"))
    opt.step()
    for i, (p, b) in enumerate(zip(ps, before)):
        assert torch.equal(p, b)
        for k, x in opt.state[p].items():
            y = saved[i][k]
            assert (x == y) if k == "step" else (x.dtype == y.dtype == torch.bfloat16 and torch.equal(x, y)), k
    assert opt.param_groups[0]["skipped_steps"] == 1


@pytest.mark.parametrize("fused", PATHS)
def test_an_overflowing_step_is_undone_with_a_codec(fused):
    # SGD-SaI's first step divides |g| by eps for a one-element tensor: inf, so the step is put back
    w, s = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(1))
    opt = go.SGDSaI([w, s], lr=1e-2, fused=fused, skip_nonfinite=True, state_codec=BFloat16StateCodec())
    before = [w.detach().clone(), s.detach().clone()]
    w.grad, s.grad = torch.full_like(w, 1e30), torch.full_like(s, 3e38)
    opt.step()
    assert torch.equal(w, before[0]) and torch.equal(s, before[1]) and not opt.state
    assert opt.param_groups[0]["skipped_steps"] == 1


def test_deepcopy_keeps_the_codec_and_the_update_transforms():
    ps = _params()
    opt = go.SPAM(ps, lr=1e-2, state_codec=BFloat16StateCodec(), update_transforms=[go.UpdateClip(1e-3)])
    _run(opt, ps, 2)
    twin = copy.deepcopy(opt)
    assert isinstance(twin.state_codec, BFloat16StateCodec) and len(twin.update_transforms) == 1
    qs = twin.param_groups[0]["params"]
    _run(opt, ps, 3, start=2)
    _run(twin, qs, 3, start=2)
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
