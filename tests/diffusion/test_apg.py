"""APG: diffusers' AdaptiveProjectedGuidance, configured by adaptive_projected_guidance, against the paper's
update rule recomputed by hand in float64 over a trajectory (momentum, rescaling, projection), and bad input."""
import pytest
import torch

pytest.importorskip("diffusers")

from gradwise.diffusion import adaptive_projected_guidance, guided_prediction  # noqa: E402

from .guidance_cases import ScriptedModel  # noqa: E402


def paper_apg(preds, w, beta, r, eta):
    """The paper's rule, step by step, in float64: m_t = (c - u) + beta m_{t-1}; rescale to norm <= r;
    project onto c; pred = c + (w - 1) (orth + eta par). Norms per sample over all non-batch dims."""
    out, m = [], torch.zeros_like(preds[0][0])
    for c, u in preds:
        m = (c - u) + beta * m
        d = m
        if r > 0:
            n = d.flatten(1).norm(dim=1).view(-1, *[1] * (d.dim() - 1))
            d = d * torch.clamp(r / n, max=1.0)
        ch = c / c.flatten(1).norm(dim=1).view(-1, *[1] * (c.dim() - 1))
        par = (d * ch).flatten(1).sum(1).view(-1, *[1] * (c.dim() - 1)) * ch
        out.append(c + (w - 1) * ((d - par) + eta * par))
    return out


def run(guider, preds, steps=None):
    model = ScriptedModel(preds)
    outs, nfes = [], []
    n = len(preds) if steps is None else steps
    for i in range(n):
        model.step = i
        o, nfe = guided_prediction(guider, model, preds[i][0], 999 - i, step=i, num_inference_steps=n,
                                   inputs={"label": ("c", "u")})
        outs.append(o.pred)
        nfes.append(nfe)
    return outs, nfes


def make_preds(steps=4, shape=(3, 2, 4, 4), seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g, dtype=torch.float64),
             torch.randn(shape, generator=g, dtype=torch.float64) * scale) for _ in range(steps)]


@pytest.mark.parametrize("w,beta,r,eta", [(5.0, -0.5, 2.0, 0.0), (7.5, -0.75, 0.0, 0.0),
                                          (4.0, 0.0, 1.5, 0.3), (10.0, -0.5, 100.0, 1.0)])
def test_guider_follows_the_papers_rule_over_a_trajectory(w, beta, r, eta):
    preds = make_preds()
    guider = adaptive_projected_guidance(w, momentum=beta, norm_threshold=r, eta=eta)
    got, nfes = run(guider, preds)
    want = paper_apg(preds, w, beta, r, eta)
    assert nfes == [2] * len(preds)
    for g_, w_ in zip(got, want):
        torch.testing.assert_close(g_, w_, rtol=1e-10, atol=1e-12)


def test_rescaling_is_active_in_the_check():
    # the threshold case above is not vacuous: every sample's update norm exceeds r = 2 at every step
    for c, u in make_preds():
        assert ((c - u).flatten(1).norm(dim=1) > 2.0).all()


def test_default_eta_drops_the_parallel_component():
    c, u = make_preds(1)[0]
    guider = adaptive_projected_guidance(5.0, momentum=0.0, norm_threshold=0.0)
    (out,), _ = run(guider, [(c, u)])
    update = (out - c) / 4.0
    # with eta = 0 the applied update is orthogonal to each sample's conditional prediction
    torch.testing.assert_close((update * c).flatten(1).sum(1), torch.zeros(3, dtype=torch.float64),
                               rtol=0, atol=1e-10)
    assert (update.flatten(1).norm(dim=1) > 0.1).all()


def test_momentum_is_reset_at_step_zero_of_a_new_trajectory():
    preds = make_preds(3)
    guider = adaptive_projected_guidance(5.0, momentum=-0.5, norm_threshold=2.0)
    first, _ = run(guider, preds)
    second, _ = run(guider, preds)  # step 0 again: a fresh buffer, same outputs
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # and the momentum does act: without it step 1 differs
    plain, _ = run(adaptive_projected_guidance(5.0, momentum=0.0, norm_threshold=2.0), preds)
    assert not torch.allclose(first[1], plain[1])


def test_diffusers_defaults_are_not_the_papers_rule():
    # diffusers' own default (eta = 1, u + w * update) keeps the parallel part the paper removes
    from diffusers.guiders import AdaptiveProjectedGuidance
    preds = make_preds(1)
    stock, _ = run(AdaptiveProjectedGuidance(guidance_scale=5.0, adaptive_projected_guidance_momentum=-0.5,
                                             adaptive_projected_guidance_rescale=2.0), preds)
    ours, _ = run(adaptive_projected_guidance(5.0, momentum=-0.5, norm_threshold=2.0), preds)
    assert (stock[0] - ours[0]).abs().max() > 1e-3


def test_scale_one_is_conditional_sampling_in_one_pass():
    preds = make_preds(2)
    out, nfes = run(adaptive_projected_guidance(1.0, momentum=-0.5, norm_threshold=2.0), preds)
    assert nfes == [1, 1]
    torch.testing.assert_close(out[1], preds[1][0], rtol=0, atol=0)


def test_float32_stays_float32():
    preds = [(c.float(), u.float()) for c, u in make_preds(2)]
    out, _ = run(adaptive_projected_guidance(5.0, momentum=-0.5, norm_threshold=2.0), preds)
    assert out[1].dtype == torch.float32


@pytest.mark.parametrize("kwargs,name", [
    (dict(guidance_scale=float("nan"), momentum=0.0, norm_threshold=1.0), "guidance_scale"),
    (dict(momentum=float("inf"), norm_threshold=1.0), "momentum"),
    (dict(momentum=-0.5, norm_threshold=-1.0), "norm_threshold"),
    (dict(momentum=-0.5, norm_threshold=1.0, eta=True), "eta"),
])
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        adaptive_projected_guidance(**kwargs)
