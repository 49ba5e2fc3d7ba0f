"""The Cooldown temperature schedule of temperature sampling (Li et al., NAACL 2025).

Paper: Tianjian Li, Haoran Xu, Weiting Tan, Kenton Murray, Daniel Khashabi,
"Upsample or Upweight? Balanced Training on Heavily Imbalanced Datasets",
NAACL 2025, arXiv 2410.04579. The sampler it drives is
:class:`gradwise.data_weighting.TemperatureSampler`.
"""
from __future__ import annotations

import math
from typing import Any

from gradwise._validate import check_choice, check_int, check_real, check_unit
from gradwise.registry import register

__all__ = ["cooldown_temperature"]

PAPER = "Upsample or Upweight? Balanced Training on Heavily Imbalanced Datasets"


def check_temperature(name: str, value: Any) -> float:
    """A sampling temperature: a number > 0, ``math.inf`` allowed (uniform sampling)."""
    return check_real(name, value, 0.0, lo_open=True, finite=False)


@register(kind="schedule", paper=PAPER, year=2025, arxiv="2410.04579", code=None,
          summary="Cooldown: a high sampling temperature first, then proportional sampling (T = 1) from a "
                  "fixed step")
def cooldown_temperature(step: int, total_steps: int, *, t_start: float = 5.0, t_end: float = 1.0,
                         cooldown_start: float = 0.5, schedule: str = "step") -> float:
    r"""The Cooldown schedule: a high temperature first, then ``t_end`` (proportional sampling at 1).

    Li et al. (arXiv 2410.04579, §4) start training with heavy upsampling (a
    high temperature: fast convergence on the small groups) and lower the
    temperature "to tau = 1 (proportional sampling) at a fixed iteration" to
    stop overfitting them: tau = 5 for the first 30k of 60k iterations, then
    tau = 1 (machine translation); 5 for the first 50k of 100k, then 1
    (language modelling). Their §4.3 compares this sparse, one-step update
    with dense decreasing schedules and finds the step better ("curse of
    granularity"). Here the temperature is ``t_start`` while
    ``step < cooldown_start * total_steps`` and ``t_end`` from then on
    (``schedule="step"``, default; the defaults 5 -> 1 at the half are the
    paper's). ``schedule="linear"`` (this library's earlier default, not the
    paper's method; a dense schedule of the kind §4.3 finds worse) goes
    linearly from ``t_start`` at ``cooldown_start * total_steps`` to
    ``t_end`` at the last step.

    Checked against (session 3): the paper's text (NAACL 2025 version: §2.1
    temperature sampling ``p(i; tau) = |D_i|^(1/tau) / sum_j |D_j|^(1/tau)``,
    Theorem 1's weights ``w_i = p(i; tau) / p(i; 1)``, §4 and §4.3 for
    Cooldown), read from a Markdown conversion of the paper stored in the
    search tool's code index (file id 62161032961; the abstract's "gradually
    reduces the upsampling" is the body's step at a fixed iteration). No code
    by the authors was found (tianjianl/*, fe1ixxu/* and the code index have
    no Cooldown schedule).
    """
    check_int("total_steps", total_steps, lo=1)
    check_unit("cooldown_start", cooldown_start)
    check_temperature("t_start", t_start)
    check_temperature("t_end", t_end)
    check_choice("schedule", schedule, ("linear", "step"))
    begin = cooldown_start * total_steps
    if step < begin:
        return float(t_start)
    if schedule == "step" or math.isinf(t_start):
        return float(t_end)
    frac = min(1.0, (step - begin) / max(total_steps - 1 - begin, 1e-12))
    return float(t_start + (t_end - t_start) * frac)
