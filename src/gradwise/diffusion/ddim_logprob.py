r"""Log-density of one stochastic DDIM step, the per-step "policy" of DDPO-style reward fine-tuning.

The DDIM update with :math:`\eta > 0` samples
:math:`x_{t-1} \sim \mathcal N(\mu_\theta(x_t), \sigma_t^2 I)` with (DDIM paper, Eqs. 12 and 16)

.. math::

    \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon}{\sqrt{\bar\alpha_t}},\quad
    \sigma_t = \eta\sqrt{\tfrac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}
    \bigl(1-\bar\alpha_t/\bar\alpha_{t-1}\bigr)},\quad
    \mu = \sqrt{\bar\alpha_{t-1}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\,\hat\epsilon,

so each denoising step is a Gaussian policy whose log-density DDPO ("Training Diffusion Models with
Reinforcement Learning", Black, Janner, Du, Kostrikov, Levine, 2023, arXiv 2305.13301,
kvablack/ddpo-pytorch) and D3PO differentiate. ``ddim_step_logprob`` is that log-density, **averaged**
over the non-batch dims as in the reference (a scaled log-likelihood: the sum divided by the number of
entries), and ``ddim_alphas`` reads the two :math:`\bar\alpha` from a diffusers ``DDIMScheduler``.

Checked against ``d3po_pytorch/diffusers_patch/ddim_with_logprob.py`` of yk7333/D3PO @ 40d3175 (a copy
of DDPO's, run with diffusers 0.42.1; float64, rel 1e-10, ``tests/diffusion/test_ddim_logprob.py``).
Kept from the reference: the previous timestep is ``t - num_train_timesteps // num_inference_steps``
**clamped to 0**, so the last step uses ``alphas_cumprod[0]`` rather than the scheduler's
``final_alpha_cumprod``; ``prev_sample`` is detached (gradients flow through the mean only); the
predicted :math:`\hat x_0` is clipped (``clip_sample_range``) without re-deriving
:math:`\hat\epsilon` from it (the reference's ``use_clipped_model_output=False``). Departures: the
scheduler's ``thresholding`` (dynamic thresholding) is not supported; the Gaussian constant is
:math:`\tfrac12\log 2\pi` in the input's dtype, where the reference builds it from a tensor of the
default dtype (float32 unless changed, which is off by ~1e-8 in float64). Without clipping, the
mean is computed as one combination of ``sample`` and ``model_output`` with per-sample coefficients, and
the squared residual is averaged before it is scaled (the same values up to rounding, fewer full-size
operations).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from gradwise._validate import check_choice, check_positive
from gradwise.registry import register

from ._common import check_batch_tensor

__all__ = ["ddim_step_logprob", "ddim_alphas"]

PAPER = "Training Diffusion Models with Reinforcement Learning"
_KW = dict(kind="diffusion-objective", paper=PAPER, year=2023, arxiv="2305.13301",
           code="https://github.com/kvablack/ddpo-pytorch", seed=False)
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _alpha(name: str, a, like: Tensor) -> Tensor:
    """``a`` (a number, a 0-d tensor or a [B] tensor) shaped to broadcast against ``like`` [B, ...];
    values in (0, 1] checked where that needs no device sync (numbers, CPU tensors)."""
    if not torch.is_tensor(a):
        a = torch.tensor(check_positive(name, a), dtype=like.dtype, device=like.device)
    if not a.is_floating_point() or a.ndim > 1 or (a.ndim == 1 and a.shape[0] != like.shape[0]):
        raise ValueError(f"Invalid {name}: {a.dtype} tensor of shape {tuple(a.shape)} (accepted: a number, a 0-d "
                         f"tensor or a floating-point tensor [B] with B = {like.shape[0]})")
    if a.device.type == "cpu" and bool(((a <= 0) | (a > 1)).any()):
        raise ValueError(f"Invalid {name}: values outside (0, 1] (accepted: alphas_cumprod in (0, 1])")
    return a.reshape(a.shape + (1,) * (like.ndim - a.ndim)).to(device=like.device, dtype=like.dtype)


@register(**_KW, summary="Log-density of prev_sample under one stochastic DDIM step (eta > 0), averaged over "
                         "the non-batch dims as DDPO/D3PO")
def ddim_step_logprob(model_output: Tensor, sample: Tensor, prev_sample: Tensor, alpha_prod_t, alpha_prod_t_prev,
                      *, eta: float = 1.0, prediction_type: str = "epsilon",
                      clip_sample_range: float | None = None) -> Tensor:
    r"""Per-sample log-density ``[B]`` of ``prev_sample`` given ``sample`` under the DDIM step with
    noise scale ``eta`` (mean over the non-batch dims, as DDPO/D3PO).

    ``model_output`` is the network's prediction of type ``prediction_type`` (``"epsilon"``,
    ``"sample"`` or ``"v_prediction"``); ``alpha_prod_t``/``alpha_prod_t_prev`` are
    :math:`\bar\alpha_t, \bar\alpha_{t-1}` (numbers or [B] tensors, e.g. from :func:`ddim_alphas`).
    ``clip_sample_range`` clips :math:`\hat x_0` to [-r, r] (diffusers' ``clip_sample``). Gradients
    reach ``model_output`` (not ``prev_sample``, which is detached). ``eta`` must be > 0 (at 0 the step
    is deterministic and has no density). Dtype in = out. Paper: DDPO, arXiv 2305.13301 (the
    step's Gaussian is DDIM's); reference and departures in the module docstring.
    """
    for name, t in (("model_output", model_output), ("sample", sample), ("prev_sample", prev_sample)):
        if check_batch_tensor(name, t).shape != model_output.shape:
            raise ValueError(f"Invalid {name}: shape {tuple(t.shape)} (accepted: model_output's shape "
                             f"{tuple(model_output.shape)})")
    eta = check_positive("eta", eta)
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if clip_sample_range is not None:
        clip_sample_range = check_positive("clip_sample_range", clip_sample_range)
    a_t = _alpha("alpha_prod_t", alpha_prod_t, sample)
    a_prev = _alpha("alpha_prod_t_prev", alpha_prod_t_prev, sample)

    beta_t = 1 - a_t
    sa, sb = a_t.sqrt(), beta_t.sqrt()
    var = (1 - a_prev) / beta_t * (1 - a_t / a_prev)
    std = eta * var.sqrt()
    k_x0, k_eps = a_prev.sqrt(), (1 - a_prev - std * std).sqrt()  # mean = k_x0 * x0 + k_eps * eps
    if clip_sample_range is None:
        # x0 and eps are linear in (sample, model_output): fold the per-sample coefficients first, so the
        # mean costs two full-size operations (the same values up to rounding)
        if prediction_type == "epsilon":
            (p, q), (r, s) = (1 / sa, -sb / sa), (0.0, 1.0)
        elif prediction_type == "sample":
            (p, q), (r, s) = (0.0, 1.0), (1 / sb, -sa / sb)
        else:
            (p, q), (r, s) = (sa, -sb), (sb, sa)
        mean = torch.addcmul((k_x0 * p + k_eps * r) * sample, k_x0 * q + k_eps * s, model_output)
    else:
        if prediction_type == "epsilon":
            x0, eps = (sample - sb * model_output) / sa, model_output
        elif prediction_type == "sample":
            x0, eps = model_output, (sample - sa * model_output) / sb
        else:
            x0, eps = sa * sample - sb * model_output, sa * model_output + sb * sample
        mean = k_x0 * x0.clamp(-clip_sample_range, clip_sample_range) + k_eps * eps
    sq = (prev_sample.detach() - mean).square()
    if sq.ndim > 1:  # the mean over entries first: the Gaussian's other terms are per sample
        sq, std = sq.mean(dim=tuple(range(1, sq.ndim))), std.reshape(-1)
    return -sq / (2 * std * std) - std.log() - _HALF_LOG_2PI


@register(**_KW, summary="The two alphas_cumprod of a DDIM step from a diffusers DDIMScheduler, with DDPO's "
                         "clamp of the previous timestep to 0")
def ddim_alphas(scheduler, timesteps: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`(\bar\alpha_t, \bar\alpha_{t-1})` for a batch of ``timesteps`` of a diffusers
    ``DDIMScheduler`` after ``set_timesteps``: the previous timestep is
    ``t - num_train_timesteps // num_inference_steps`` clamped to [0, num_train_timesteps - 1] (DDPO's
    clamp, so the last step uses ``alphas_cumprod[0]``, not ``final_alpha_cumprod``). Returned in the
    dtype of ``scheduler.alphas_cumprod`` on ``timesteps``' device, shape of ``timesteps``. As DDPO
    (arXiv 2305.13301) and D3PO's copy of its DDIM step.
    """
    cfg = getattr(scheduler, "config", None)
    acp = getattr(scheduler, "alphas_cumprod", None)
    n_inf = getattr(scheduler, "num_inference_steps", None)
    if cfg is None or acp is None or not torch.is_tensor(acp):
        raise ValueError(f"Invalid scheduler: {type(scheduler).__name__} (accepted: a diffusers DDIMScheduler)")
    if n_inf is None:
        raise ValueError("Invalid scheduler: num_inference_steps is None (accepted: a scheduler after "
                         "set_timesteps(n))")
    if not torch.is_tensor(timesteps) or timesteps.is_floating_point() or timesteps.is_complex():
        got = type(timesteps).__name__ if not torch.is_tensor(timesteps) else timesteps.dtype
        raise ValueError(f"Invalid timesteps: {got} (accepted: an integer tensor of timesteps)")
    n_train = cfg.num_train_timesteps
    t = timesteps.to("cpu", torch.long)
    if bool(((t < 0) | (t >= n_train)).any()):
        raise ValueError(f"Invalid timesteps: values outside [0, {n_train - 1}] (accepted: training timesteps)")
    prev = (t - n_train // n_inf).clamp(0, n_train - 1)
    return acp[t].to(timesteps.device), acp[prev].to(timesteps.device)
