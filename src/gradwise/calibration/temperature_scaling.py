"""Temperature scaling (Guo et al., ICML 2017): one temperature fitted by NLL on held-out logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_int, check_positive
from gradwise.losses._common import check_logits_target
from gradwise.metrics.calibration_error import GUO_CODE, GUO_PAPER
from gradwise.registry import register

__all__ = ["TemperatureScaler"]


@register(kind="calibration", paper=GUO_PAPER, year=2017, arxiv="1706.04599", code=GUO_CODE, seed=False,
          summary="temperature scaling: one temperature fitted by NLL on held-out logits (LBFGS)")
class TemperatureScaler(nn.Module):
    r"""Temperature scaling: calibrated logits :math:`z / T` with one scalar :math:`T > 0`.

    Paper: Guo et al., "On Calibration of Modern Neural Networks", ICML 2017,
    arXiv 1706.04599. Code: https://github.com/gpleiss/temperature_scaling.

    :meth:`fit` minimizes the negative log-likelihood
    :math:`\frac1N\sum_i -\log \mathrm{softmax}(z_i / T)_{y_i}` on held-out
    logits over :math:`\log T` with LBFGS. Departures from the reference code
    (which optimizes :math:`T` itself from 1.5 with ``lr=0.01, max_iter=50``):
    the parameter is :math:`\log T` (keeps :math:`T>0`, better conditioned),
    it starts at :math:`T=1`, and LBFGS uses a strong-Wolfe line search so it
    reaches the optimum rather than stopping after 50 small steps. Argmax, and
    so accuracy, is unchanged.

    Example::

        >>> ts = TemperatureScaler().fit(val_logits, val_labels)
        >>> probs = ts(test_logits).softmax(-1); ts.temperature
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        temperature = check_positive("temperature", temperature)
        self.log_temperature = nn.Parameter(torch.tensor(temperature).log())

    @property
    def temperature(self) -> float:
        return float(self.log_temperature.detach().exp())

    def forward(self, logits: Tensor) -> Tensor:
        return logits / self.log_temperature.exp().to(logits.dtype)

    def fit(self, logits: Tensor, target: Tensor, *, max_iter: int = 100, lr: float = 1.0) -> TemperatureScaler:
        """Fit the temperature by NLL on (detached) ``logits`` and labels ``target``; returns self."""
        check_logits_target(logits, target)
        check_int("max_iter", max_iter, lo=1)
        logits = logits.detach()
        opt = torch.optim.LBFGS([self.log_temperature], lr=lr, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(self(logits).float(), target)
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        return self

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:.4g}"
