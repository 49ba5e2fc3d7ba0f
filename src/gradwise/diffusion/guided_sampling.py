"""Driving a diffusers guider by hand: one guided prediction per step, and a sampling loop around it.

diffusers' guiders (``diffusers.guiders``, experimental in 0.42) keep per-trajectory state: the step
index (which decides whether guidance is on, ``start``/``stop``), how many model passes the step needs
(``num_conditions``) and, for some, buffers reset at step 0 (APG's momentum, AG's switch to one pass).
Their contract, as diffusers' own modular denoise loops follow it, is per step:

1. ``guider.set_state(step, num_inference_steps, timestep)``;
2. ``batches = guider.prepare_inputs({name: (cond, uncond), ...})``: one batch per model pass;
3. for each batch: ``prepare_models(model)``, ``batch.noise_pred = model(...)``, ``cleanup_models(model)``;
4. ``guider(batches)`` combines the passes into ``GuiderOutput(pred, pred_cond, pred_uncond)``.

:func:`guided_prediction` does exactly that and returns the number of model passes (NFE) it took;
:func:`guided_sample` runs it inside a diffusers scheduler loop.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from gradwise._validate import check_int

__all__ = ["guided_prediction", "guided_sample"]


def _check_inputs(inputs: Any) -> dict[str, tuple[Any, Any]]:
    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError(f"Invalid inputs: {type(inputs).__name__} (accepted: a non-empty dict "
                         "{model keyword: (conditional value, unconditional value)})")
    for key, value in inputs.items():
        if not (isinstance(key, str) and isinstance(value, tuple) and len(value) == 2):
            raise ValueError(f"Invalid inputs[{key!r}]: {type(value).__name__} (accepted: a pair "
                             "(conditional value, unconditional value) under a string key)")
    return dict(inputs)


def guided_prediction(guider: Any, model: Callable[..., torch.Tensor], sample: torch.Tensor,
                      timestep: torch.Tensor | float | int, *, step: int, num_inference_steps: int,
                      inputs: Mapping[str, tuple[Any, Any]]) -> tuple[Any, int]:
    """One guided model prediction at denoising step ``step`` (0-based) of ``num_inference_steps``.

    ``model(sample, timestep, **{name: value})`` is called once per pass the guider asks for, with the
    conditional (first) or unconditional (second) element of each ``inputs`` pair. Returns
    ``(guider_output, nfe)``: diffusers' ``GuiderOutput`` (``.pred`` is the guided prediction) and the
    number of model passes this step took (2 for CFG-like guidance, 1 when the guider is off or, for
    Adaptive Guidance, once it has switched to the conditional pass). Step 0 starts a new trajectory
    (APG's momentum buffer and AG's switch are reset there).
    """
    num_inference_steps = check_int("num_inference_steps", num_inference_steps, 1)
    step = check_int("step", step, 0, num_inference_steps - 1)
    inputs = _check_inputs(inputs)
    if not isinstance(sample, torch.Tensor):
        raise ValueError(f"Invalid sample: {type(sample).__name__} (accepted: a tensor)")
    guider.set_state(step=step, num_inference_steps=num_inference_steps, timestep=timestep)
    batches = guider.prepare_inputs(inputs)
    for batch in batches:
        guider.prepare_models(model)
        batch.noise_pred = model(sample, timestep, **{name: getattr(batch, name) for name in inputs})
        guider.cleanup_models(model)
    return guider(batches), len(batches)


def guided_sample(guider: Any, model: Callable[..., torch.Tensor], scheduler: Any, noise: torch.Tensor, *,
                  num_inference_steps: int, inputs: Mapping[str, tuple[Any, Any]],
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """Sample with a diffusers scheduler, each model prediction guided by ``guider``.

    ``noise`` is the initial sample (scaled by ``scheduler.init_noise_sigma`` here); the scheduler's
    timesteps are set to ``num_inference_steps``. Returns ``(sample, nfe)``, ``nfe`` the total number of
    model passes. ``generator`` goes to ``scheduler.step`` for stochastic schedulers.
    """
    num_inference_steps = check_int("num_inference_steps", num_inference_steps, 1)
    scheduler.set_timesteps(num_inference_steps)
    x = noise * scheduler.init_noise_sigma
    nfe = 0
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(x, t)
        out, n = guided_prediction(guider, model, x_in, t, step=i, num_inference_steps=len(timesteps),
                                   inputs=inputs)
        nfe += n
        kwargs = {"generator": generator} if generator is not None else {}
        x = scheduler.step(out.pred, t, x, return_dict=False, **kwargs)[0]
    return x, nfe
