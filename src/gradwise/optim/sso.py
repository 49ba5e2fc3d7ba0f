"""SSO: stochastic surrogate optimization in target space, from "Target-based Surrogates for Stochastic Optimization"."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from gradwise._validate import check_bool, check_int, check_real
from gradwise.registry import register

__all__ = ["SSO"]

_PAPER = "Target-based Surrogates for Stochastic Optimization"
_CODE = "https://github.com/WilderLavington/Target-Based-Surrogates-For-Stochastic-Optimization"
# the hyperparameters every parameter group must share: the surrogate is one scalar objective of all parameters
_SHARED = ("lr", "inner_steps", "inner_lr", "line_search", "c", "beta", "expand_coeff", "n_batches_per_epoch")


def _check(hp: dict[str, Any]) -> None:
    check_real("lr", hp["lr"], 0.0, lo_open=True)
    check_int("inner_steps", hp["inner_steps"], 1)
    check_real("inner_lr", hp["inner_lr"], 0.0, lo_open=True)
    check_bool("line_search", hp["line_search"])
    check_real("c", hp["c"], 0.0, lo_open=True)
    check_real("beta", hp["beta"], 0.0, 1.0, lo_open=True, hi_open=True)
    check_real("expand_coeff", hp["expand_coeff"], 1.0)
    check_real("n_batches_per_epoch", hp["n_batches_per_epoch"], 0.0, lo_open=True)


@register(kind="training-helper", paper=_PAPER, year=2023, arxiv="2302.02607", code=_CODE,
          summary="SSO: an SGD step on the model's outputs (target space), then m inner steps on the surrogate")
class SSO(Optimizer):
    r"""SSO, stochastic surrogate optimization (Lavington et al., ICML 2023, arXiv 2302.02607).

    One outer step on a batch: compute the outputs ``z_t = f(theta_t, X)`` and the gradient of the loss
    with respect to the outputs, ``g_t = d loss(z)/dz`` at ``z_t`` (one backward through the loss only,
    not the model), then take ``inner_steps`` (``m``) gradient steps in parameter space on the surrogate::

        s_t(theta) = mean( lr * g_t * f(theta, X) + (f(theta, X) - z_t)**2 )

    (the mean is over every entry of the outputs). Up to a constant and the factor ``2 lr / numel(z)``
    this is ``<g_t, f - z_t> + ||f - z_t||^2 / (2 (lr/2))``: its minimiser in target space is the SGD
    step ``z_t - (lr/2) g_t``, and minimising it over ``theta`` projects that step onto what the model
    can output: SSO is projected SGD in target space. The surrogate's gradient at ``theta_t`` is the
    loss gradient scaled by ``lr/numel(z)``, so one inner step of size ``a`` without line search is SGD
    with step ``a * lr / numel(z)``.

    Each inner step is SGD with the authors' Armijo line search (their ``LSOpt``): the step size, reset
    to ``inner_lr`` at every outer step, is first multiplied by ``expand_coeff ** (1/n_batches_per_epoch)``,
    then by ``beta`` until ``s(theta - a grad) <= s(theta) - a c ||grad||^2`` (at most 100 tries, and
    not below 1e-6); the step taken is ``theta - a grad`` with the accepted (or last) ``a``. The inner
    loop stops early once ``||grad|| <= 1e-6``. With ``line_search=False`` each inner step is
    ``theta - inner_lr * grad``.

    Use: the step takes the forward pass and the loss instead of a closure::

        opt = SSO(model.parameters(), lr=0.25, inner_steps=5)
        for x, y in loader:
            loss = opt.step(lambda: model(x), lambda out: F.mse_loss(out, y, reduction="sum"))

    ``forward()`` returns the model's outputs on the batch (any tensor; it runs once for ``z_t`` and
    then once per surrogate evaluation, so ``1 + m (1 + tries)`` times; a model with dropout should be
    in eval mode or will see a new mask each time); ``loss_fn(outputs)`` returns the scalar loss. The
    step returns the loss at ``z_t`` (detached). It never reads or writes ``.grad``: gradients are taken
    with ``torch.autograd.grad`` for the parameters that require them (frozen ones, e.g. under
    :class:`~gradwise.optim.LISA`, are left alone). LR schedulers act on ``lr``, the target-space step:
    the authors' ``stochastic`` and ``exponential`` eta schedules are ``LambdaLR`` schedules of it.

    Args:
        params: parameters or parameter groups; every group must share the hyperparameters below
            (the surrogate is one objective of all the parameters).
        lr: the target-space step size, the authors' ``stepsize`` (their ``SGD_FMDOpt(eta=1/stepsize)``).
            Default 1e-3, their optimizer's default ``eta=1e3``; their experiments use 1/4 for a summed
            squared loss, 2 for a summed logistic loss and ``K/(K-1)`` for a summed K-class cross-entropy.
        inner_steps: ``m``, surrogate steps per outer step (default 5, their parser's default).
        inner_lr: the inner step size each outer step starts from (default 10: their ``SGD_FMDOpt``
            resets its inner line search to 10 at every step under their default ``reset_lr_on_step``).
        line_search: Armijo backtracking in the inner loop (default True, their ``LSOpt``).
        c, beta: the Armijo constant and the backtracking factor (defaults 0.1 and 0.9, their parser's).
        expand_coeff, n_batches_per_epoch: each inner step first grows the step size by
            ``expand_coeff ** (1/n_batches_per_epoch)`` (defaults 2 and 1; their runs pass the number
            of batches in an epoch, ``N / batch_size``).

    State (``state["sso"]``): ``outer_steps``, ``inner_steps`` (total taken), and for the last inner
    step ``step_size`` (the accepted inner step size), ``grad_norm`` and ``surrogate`` (the surrogate at
    its start: what the authors' ``step`` returns).

    Checked against the authors' ``SGD_FMDOpt`` with their ``LSOpt`` (commit 205dde6, run unchanged by
    ``tools/golden/make_sso_golden.py``): parameters after every outer step, the returned surrogate and
    the inner step sizes, in float64, on a linear model and MLPs with summed squared and cross-entropy
    losses.

    Departures: the step returns the loss at ``z_t`` (theirs returns the surrogate value at the start
    of the last inner step, kept in the state); their schedules of ``eta`` are left to LR schedulers;
    the paper's text past its introduction could not be read here, so the surrogate's scaling (the mean
    over output entries, and the target step ``lr/2``) follows the authors' code.
    """

    def __init__(self, params, lr: float = 1e-3, inner_steps: int = 5, inner_lr: float = 10.0, *,
                 line_search: bool = True, c: float = 0.1, beta: float = 0.9, expand_coeff: float = 2.0,
                 n_batches_per_epoch: float = 1.0) -> None:
        defaults = dict(lr=lr, inner_steps=inner_steps, inner_lr=inner_lr, line_search=line_search, c=c, beta=beta,
                        expand_coeff=expand_coeff, n_batches_per_epoch=n_batches_per_epoch)
        _check(defaults)
        super().__init__(params, defaults)
        self.state["sso"] = {"outer_steps": 0, "inner_steps": 0}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        _check(self.param_groups[-1])

    def _hyperparameters(self) -> dict[str, Any]:
        first = self.param_groups[0]
        for i, group in enumerate(self.param_groups[1:], 1):
            for k in _SHARED:
                if group[k] != first[k]:
                    raise ValueError(f"Invalid {k}: parameter group {i} has {group[k]!r}, group 0 {first[k]!r} "
                                     "(accepted: the same value in every group; SSO's surrogate is one objective)")
        _check(first)
        return {k: first[k] for k in _SHARED}

    @staticmethod
    def _outputs(forward: Callable[[], torch.Tensor]) -> torch.Tensor:
        out = forward()
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"Invalid forward: it returned {type(out).__name__} (accepted: a callable with no "
                            "arguments returning the model's outputs as a tensor)")
        return out

    def step(self, forward: Callable[[], torch.Tensor], loss_fn: Callable[[torch.Tensor], torch.Tensor]):
        """One outer step on the batch ``forward`` evaluates; returns the loss at its start (detached)."""
        if not callable(forward):
            raise TypeError(f"Invalid forward: {forward!r} (accepted: a callable with no arguments returning "
                            "the model's outputs)")
        if not callable(loss_fn):
            raise TypeError(f"Invalid loss_fn: {loss_fn!r} (accepted: a callable mapping outputs to a scalar loss)")
        hp = self._hyperparameters()
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        with torch.no_grad():
            z_t = self._outputs(forward).detach()
        with torch.enable_grad():
            z = z_t.clone().requires_grad_(True)
            loss = loss_fn(z)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"Invalid loss_fn: it returned {type(loss).__name__}"
                                 f"{'' if not isinstance(loss, torch.Tensor) else f' of shape {tuple(loss.shape)}'}"
                                 " (accepted: a scalar tensor)")
            (g_t,) = torch.autograd.grad(loss.reshape(()), z)
        lin = hp["lr"] * g_t

        def surrogate() -> torch.Tensor:
            f = self._outputs(forward)
            return (lin * f + (f - z_t).pow(2)).mean()

        st = self.state["sso"]
        st["outer_steps"] += 1
        step_size = hp["inner_lr"]
        grow = hp["expand_coeff"] ** (1.0 / hp["n_batches_per_epoch"])
        for _ in range(hp["inner_steps"]):
            if hp["line_search"]:
                step_size *= grow
            with torch.enable_grad():
                value = surrogate()
                grads = torch.autograd.grad(value, params, allow_unused=True)
            pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
            ps, gs = [p for p, _ in pairs], [g for _, g in pairs]
            if not ps:  # nothing to train (every parameter frozen or unused)
                break
            norm2 = sum(float(g.double().pow(2).sum()) for g in gs)
            value_f = float(value)
            with torch.no_grad():
                if hp["line_search"]:
                    start = [p.detach().clone() for p in ps]  # their LSOpt steps from a saved copy
                    for _ in range(100):
                        torch._foreach_copy_(ps, torch._foreach_add(start, gs, alpha=-step_size))
                        trial = float(surrogate())
                        if trial - (value_f - step_size * hp["c"] * norm2) <= 0:
                            break
                        step_size *= hp["beta"]
                        if step_size < 1e-6:
                            break
                    torch._foreach_copy_(ps, torch._foreach_add(start, gs, alpha=-step_size))
                else:
                    torch._foreach_add_(ps, gs, alpha=-step_size)
            st["inner_steps"] += 1
            st.update(step_size=step_size, grad_norm=math.sqrt(norm2), surrogate=value_f)
            if math.sqrt(norm2) <= 1e-6:
                break
        return loss.detach()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.state["sso"] = dict(self.state.get("sso", {"outer_steps": 0, "inner_steps": 0}))
