"""DC-Solver: UniPC whose newest model output is replaced by a Lagrange extrapolation at a fitted time."""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from gradwise._validate import check_int, check_positive
from gradwise.diffusion._diffusers import subclass_with_config
from gradwise.registry import register

__all__ = ["dc_solver_scheduler", "dc_solver_class", "reference_trajectory"]

DC_PAPER = "DC-Solver: Improving Predictor-Corrector Diffusion Sampler via Dynamic Compensation"
DC_CODE = "https://github.com/wl-zhao/DC-Solver"


def reference_trajectory(denoiser: Callable[[torch.Tensor, Any], torch.Tensor], scheduler: Any,
                         x_T: torch.Tensor, *, num_inference_steps: int = 200) -> dict[str, torch.Tensor]:
    """The reference (``ground truth``) trajectory DC-Solver's search fits to, made as the authors'
    ``generate_gt`` makes it: ``scheduler`` (their choice: DDIM, 200 steps) run from ``x_T``, recording after
    each step the timestep the step started from and the sample it produced. Returns
    ``{"ts": [N], "intermediates": [B, N, ...]}``."""
    num_inference_steps = check_int("num_inference_steps", num_inference_steps, 1)
    scheduler.set_timesteps(num_inference_steps)
    x = x_T * scheduler.init_noise_sigma
    ts, xs = [], []
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(denoiser(scheduler.scale_model_input(x, t), t), t, x, return_dict=False)[0]
            ts.append(t)
            xs.append(x)
    return {"ts": torch.stack([torch.as_tensor(t) for t in ts]), "intermediates": torch.stack(xs, dim=1)}


class _DCSolverRule:
    """DC-Solver (Zhao, Wang, Rao, Zhou, Lu, ECCV 2024, arXiv 2409.03755): diffusers'
    ``UniPCMultistepScheduler`` (predictor-corrector, used as is) with dynamic compensation.

    At step ``i`` (after the corrector, before the predictor), with the converted model outputs
    ``m_{i-k}`` at timesteps ``t_{i-k}``, ``k = 0..K`` (``K = dc_order``, at most 3), the newest output is
    replaced by the Lagrange polynomial through them evaluated at ``τ_i = t_{i-1} + ρ_i (t_i - t_{i-1})``:

        m_i ← Σ_k m_{i-k} Π_{j≠k} (τ_i - t_{i-j}) / (t_{i-k} - t_{i-j}),

    and the replaced value stays in the history (the next corrector and compensation use it). ``ρ = 1``
    leaves UniPC unchanged; the first ``K`` steps always use ``ρ = 1``.

    The ratios ``dc_ratios`` (one per step) are searched by :meth:`fit_compensation`: at each step, AdamW
    (lr 0.1, torch's default weight decay, ``num_iters`` iterations from ``ρ = 1``) minimises the MSE
    between the sample after the predictor and the next step's corrector (one more model call) and the
    reference trajectory's sample at the first reference timestep at or below the next timestep (from
    :func:`reference_trajectory`). Sampling then needs no extra model calls.

    Matches the authors' ``DCSolverMultistepScheduler`` (wl-zhao/DC-Solver@95125cc,
    ``diffusers/src/diffusers/schedulers/scheduling_dcsolver_multistep.py``: ``dynamic_compensation``,
    ``find_optim_ratio``, ``_step_search``, ``_step``): same ratios and samples on a toy denoiser
    (tests/data/dc_solver_golden.pt). Their fork's UniPC ends at ``σ`` of ``alphas_cumprod[0]``: the
    default ``final_sigmas_type`` here is ``"sigma_min"``, which is that (diffusers' UniPC default is
    ``"zero"``). Departures: the search starts once ``dc_order + 1`` outputs exist (theirs: from step 2,
    the same for their ``dc_order = 2``); ratios other than 1 where too few outputs exist are refused
    (theirs crash); the cascade polynomial regression of ratios over NFE and CFG (their ``--use_cpr``,
    coefficients fitted on Stable Diffusion 2.1) is not included.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: Any = None, solver_order: int = 2,
                 prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0, predict_x0: bool = True,
                 solver_type: str = "bh2", lower_order_final: bool = True, disable_corrector: Sequence[int] = (),
                 solver_p: Any = None, use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False,
                 use_beta_sigmas: bool = False, use_flow_sigmas: bool = False, flow_shift: float = 1.0,
                 timestep_spacing: str = "linspace", steps_offset: int = 0, final_sigmas_type: str = "sigma_min",
                 rescale_betas_zero_snr: bool = False, use_dynamic_shifting: bool = False,
                 time_shift_type: str = "exponential", sigma_min: float | None = None, sigma_max: float | None = None,
                 shift_terminal: float | None = None, dc_order: int = 2):
        check_int("dc_order", dc_order, 1, 3)
        super().__init__(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas, solver_order=solver_order,
            prediction_type=prediction_type, thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio, sample_max_value=sample_max_value,
            predict_x0=predict_x0, solver_type=solver_type, lower_order_final=lower_order_final,
            disable_corrector=list(disable_corrector), solver_p=solver_p, use_karras_sigmas=use_karras_sigmas,
            use_exponential_sigmas=use_exponential_sigmas, use_beta_sigmas=use_beta_sigmas,
            use_flow_sigmas=use_flow_sigmas, flow_shift=flow_shift, timestep_spacing=timestep_spacing,
            steps_offset=steps_offset, final_sigmas_type=final_sigmas_type,
            rescale_betas_zero_snr=rescale_betas_zero_snr, use_dynamic_shifting=use_dynamic_shifting,
            time_shift_type=time_shift_type, sigma_min=sigma_min, sigma_max=sigma_max, shift_terminal=shift_terminal)
        self.dc_ratios: list[float] | None = None
        self._dc_outputs: list[Any] = []
        self._dc_times: list[Any] = []
        self._fit: dict[str, Any] | None = None

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        self._dc_outputs, self._dc_times = [], []

    def compensate(self, ratio: Any) -> torch.Tensor:
        """The newest converted model output extrapolated at ``t_{i-1} + ratio (t_i - t_{i-1})`` (see the
        class docstring); ``ratio`` a float or a tensor (differentiable)."""
        k = self.config.dc_order + 1
        ms, ts = self._dc_outputs[-k:], self._dc_times[-k:]
        if len(ms) < k:
            raise ValueError(f"Invalid dc_ratios: a ratio other than 1 at step {self.step_index} (accepted: 1.0 "
                             f"until dc_order + 1 = {k} model outputs exist)")
        tau = ratio * (ts[-1] - ts[-2]) + ts[-2]
        out = torch.zeros_like(ms[-1])
        for i in range(k):
            term = ms[-(i + 1)]
            for j in range(k):
                if i != j:
                    term = term * ((tau - ts[-(j + 1)]) / (ts[-(i + 1)] - ts[-(j + 1)]))
            out = out + term
        return out

    def multistep_uni_p_bh_update(self, model_output: torch.Tensor, *args: Any, sample: torch.Tensor = None,
                                  order: int = None, **kwargs: Any) -> torch.Tensor:
        # step() calls this once per step, right after the history took this step's converted output: the
        # place to record it and to compensate it before the predictor runs
        self._dc_outputs = (self._dc_outputs + [self.model_outputs[-1]])[-(self.config.dc_order + 1):]
        self._dc_times = (self._dc_times + [self.timestep_list[-1]])[-(self.config.dc_order + 1):]
        ratio = self._search_ratio(sample, order) if self._fit is not None else self._given_ratio()
        if ratio != 1.0:
            compensated = self.compensate(ratio)
            self.model_outputs[-1] = compensated
            self._dc_outputs[-1] = compensated
        return super().multistep_uni_p_bh_update(model_output, sample=sample, order=order)

    def _given_ratio(self) -> float:
        if self.dc_ratios is None:
            return 1.0
        if len(self.dc_ratios) < len(self.timesteps):
            raise ValueError(f"Invalid dc_ratios: {len(self.dc_ratios)} ratios (accepted: one per step, "
                             f"{len(self.timesteps)})")
        return float(self.dc_ratios[self.step_index])

    def _search_ratio(self, sample: torch.Tensor, order: int) -> float:
        fit = self._fit
        if len(self._dc_outputs) < self.config.dc_order + 1:
            fit["ratios"].append(1.0)
            return 1.0
        target_t = self.timesteps[self.step_index + 1].item() if self.step_index < len(self.timesteps) - 2 else 0
        index = np.where(fit["ts"] >= target_t)[0].max()
        target = fit["intermediates"][:sample.shape[0], index].to(sample.device)
        param = torch.nn.Parameter(torch.tensor([1.0], device=sample.device))
        opt = torch.optim.AdamW([param], lr=fit["lr"])
        saved, start = self.model_outputs[-1], sample.clone()
        with torch.enable_grad():
            for _ in range(fit["num_iters"]):
                opt.zero_grad()
                self.model_outputs[-1] = self.compensate(param)
                x = super().multistep_uni_p_bh_update(None, sample=start.clone(), order=order)
                self._step_index += 1
                if (self.step_index - 1 not in self.disable_corrector and self.step_index < len(self.timesteps)):
                    t = self.timesteps[self.step_index]
                    out = self.convert_model_output(fit["denoiser"](x, t), sample=x)
                    x = self.multistep_uni_c_bh_update(this_model_output=out, last_sample=start.clone(), this_sample=x,
                                                       order=order)
                self._step_index -= 1
                self.model_outputs[-1] = saved
                torch.nn.functional.mse_loss(x, target).backward()
                opt.step()
        ratio = param.detach().item()
        fit["ratios"].append(ratio)
        return ratio

    @torch.no_grad()
    def fit_compensation(self, denoiser: Callable[[torch.Tensor, Any], torch.Tensor], x_T: torch.Tensor,
                         reference_trajectories: Mapping[str, torch.Tensor], *, num_inference_steps: int,
                         num_iters: int = 20, lr: float = 0.1) -> list[float]:
        """Search the compensation ratios for ``num_inference_steps`` steps by sampling from ``x_T`` with
        ``denoiser(x, t)`` (the model output the scheduler expects, guided if sampling will be) against
        ``reference_trajectories`` (:func:`reference_trajectory` of the same ``x_T``, or more samples: the
        first ``B`` are used). Sets and returns ``dc_ratios``; ``denoiser`` must be differentiable in ``x``
        (the search backpropagates through one corrector call per iteration)."""
        num_inference_steps = check_int("num_inference_steps", num_inference_steps, 1)
        num_iters = check_int("num_iters", num_iters, 1)
        lr = check_positive("lr", lr)
        if not (isinstance(reference_trajectories, Mapping) and {"ts", "intermediates"} <= set(reference_trajectories)):
            raise ValueError("Invalid reference_trajectories: (accepted: a dict with 'ts' [N] and 'intermediates' "
                             "[B, N, ...], as reference_trajectory returns)")
        ts = torch.as_tensor(reference_trajectories["ts"]).cpu().numpy()
        inter = torch.as_tensor(reference_trajectories["intermediates"])
        if inter.dim() < 2 or inter.shape[1] != len(ts) or inter.shape[0] < x_T.shape[0] \
                or inter.shape[2:] != x_T.shape[1:]:
            raise ValueError(f"Invalid reference_trajectories: intermediates {tuple(inter.shape)}, ts {ts.shape} "
                             f"(accepted: [B' >= {x_T.shape[0]}, len(ts), *{tuple(x_T.shape[1:])}])")
        self._fit = {"denoiser": denoiser, "ts": ts, "intermediates": inter, "ratios": [], "num_iters": num_iters,
                     "lr": lr}
        try:
            self.set_timesteps(num_inference_steps)
            x = x_T * self.init_noise_sigma
            for t in self.timesteps:
                x = self.step(denoiser(x, t), t, x, return_dict=False)[0]
            self.dc_ratios = list(self._fit["ratios"])
        finally:
            self._fit = None
        return self.dc_ratios


@functools.cache  # built once, on first use: diffusers is imported only then
def dc_solver_class() -> type:
    """The scheduler class ``DCSolverScheduler``, a subclass of ``diffusers.UniPCMultistepScheduler`` (also
    ``gradwise.diffusion.DCSolverScheduler``), built on first call; see :func:`dc_solver_scheduler`."""
    return subclass_with_config(_DCSolverRule, "DCSolverScheduler", "diffusers.schedulers.scheduling_unipc_multistep",
                                "UniPCMultistepScheduler", "gradwise.diffusion")


@register(kind="sampler", name="DC-Solver", paper=DC_PAPER, year=2024, arxiv="2409.03755", code=DC_CODE,
          summary="UniPC with dynamic compensation: the newest model output is replaced by a Lagrange "
                  "extrapolation of the last outputs at a per-step time ratio fitted to a reference trajectory")
def dc_solver_scheduler(**config: Any) -> Any:
    return dc_solver_class()(**config)


dc_solver_scheduler.__doc__ = ("A :class:`DCSolverScheduler` (keyword arguments: its configuration; built on first "
                               "use so that gradwise.diffusion imports without diffusers).\n" + _DCSolverRule.__doc__)
