"""Output-logit z-loss (PaLM's, as in Wortsman et al. 2023): closed form, mask, reductions, gradient, compile."""
import pytest
import torch

import gradwise.losses as L
from gradwise.registry import get

f64 = torch.float64


def _logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=f64) * 3


def test_closed_form_per_token_and_mean_over_tokens():
    x = _logits(2, 5, 7)
    log_z = torch.log(torch.exp(x).sum(-1))  # direct, no logsumexp
    per = L.output_logit_z_loss(x, coef=1e-4, reduction="none")
    assert per.shape == (2, 5)
    torch.testing.assert_close(per, 1e-4 * log_z ** 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(L.output_logit_z_loss(x), (1e-4 * log_z ** 2).mean())
    torch.testing.assert_close(L.output_logit_z_loss(x, coef=0.5, reduction="sum"), (0.5 * log_z ** 2).sum())


def test_zero_exactly_when_logits_are_log_probabilities():
    x = torch.log_softmax(_logits(4, 9), -1)
    torch.testing.assert_close(L.output_logit_z_loss(x, coef=1.0, reduction="none"), torch.zeros(4, dtype=f64),
                               atol=1e-12, rtol=0)
    # and a shift by c gives coef * c^2: the penalty is on the shift of the logits away from log-probabilities
    torch.testing.assert_close(L.output_logit_z_loss(x + 3.0, coef=1.0, reduction="none"),
                               torch.full((4,), 9.0, dtype=f64))


def test_gradient_is_2_coef_logz_softmax():
    x = _logits(3, 6).requires_grad_()
    L.output_logit_z_loss(x, coef=0.1, reduction="sum").backward()
    log_z = torch.logsumexp(x.detach(), -1, keepdim=True)
    torch.testing.assert_close(x.grad, 2 * 0.1 * log_z * torch.softmax(x.detach(), -1))


def test_mask_excludes_padding():
    x = _logits(2, 4, 5)
    mask = torch.tensor([[True, True, False, True], [False, True, True, False]])
    per = L.output_logit_z_loss(x, reduction="none")
    torch.testing.assert_close(L.output_logit_z_loss(x, mask), per[mask].mean())
    torch.testing.assert_close(L.output_logit_z_loss(x, mask, reduction="sum"), per[mask].sum())
    assert (L.output_logit_z_loss(x, mask, reduction="none")[~mask] == 0).all()


def test_module_twin_and_half_precision():
    x = _logits(6, 10).float()
    torch.testing.assert_close(L.OutputLogitZLoss(coef=1e-3)(x), L.output_logit_z_loss(x, coef=1e-3))
    out = L.output_logit_z_loss(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), L.output_logit_z_loss(x.bfloat16().float()), rtol=1e-2, atol=1e-6)


def test_bad_input_names_the_argument():
    x = _logits(3, 4)
    with pytest.raises(ValueError, match="Invalid coef"):
        L.output_logit_z_loss(x, coef=-1.0)
    with pytest.raises(ValueError, match="Invalid logits"):
        L.output_logit_z_loss(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="Invalid logits"):
        L.output_logit_z_loss(torch.zeros(3, 0))
    with pytest.raises(ValueError, match="Invalid mask"):
        L.output_logit_z_loss(x, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="Invalid mask"):
        L.output_logit_z_loss(x, torch.ones(3))
    with pytest.raises(ValueError, match="Invalid reduction"):
        L.output_logit_z_loss(x, reduction="max")


def test_not_the_2016_z_loss():
    rec, old = get("output_logit_z_loss"), get("z_loss")
    assert rec.arxiv == "2309.14322" and old.arxiv == "1604.08859"
    assert "output_logit_z_loss" in (L.z_loss.__doc__ or "") and "z_loss" in (L.output_logit_z_loss.__doc__ or "")


def test_compiles():
    x = _logits(4, 8).float()
    fn = torch.compile(L.output_logit_z_loss, backend="eager", fullgraph=True)
    torch.testing.assert_close(fn(x, coef=1e-4), L.output_logit_z_loss(x, coef=1e-4))


def test_as_t5x_adds_it_to_the_per_token_cross_entropy():
    # transcribed from t5x's losses.cross_entropy_with_logits (read in the code index, not run): per token,
    # loss = -sum(onehot * (logits - logsumexp)) + z_loss * logsumexp^2
    x = _logits(2, 3, 6)
    y = torch.randint(0, 6, (2, 3), generator=torch.Generator().manual_seed(1))
    log_z = torch.logsumexp(x, -1)
    t5x = -(torch.nn.functional.one_hot(y, 6) * (x - log_z[..., None])).sum(-1) + 1e-4 * log_z ** 2
    ce = torch.nn.functional.cross_entropy(x.flatten(0, 1), y.flatten(), reduction="none").reshape(2, 3)
    torch.testing.assert_close(ce + L.output_logit_z_loss(x, reduction="none"), t5x)
    torch.testing.assert_close(ce.mean() + L.output_logit_z_loss(x), t5x.mean())
