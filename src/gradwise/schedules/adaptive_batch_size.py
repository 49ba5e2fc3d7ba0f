r"""AdAdaGrad's adaptive batch-size tests (Lau, Liu and Kolar, 2024).

Paper: Tim Tsz-Kit Lau, Han Liu, Mladen Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient
Methods", arXiv 2402.11215 (2024). Authors' code: github.com/timlautk/AdAdaGrad (``tests.py``, commit
cc126fba4b57c8ea1ffcd5ff5d30dc8891bf9f17). Each test looks at the per-sample gradients of the current mini-batch
and says how large the next batch should be so that the mini-batch gradient is a good enough estimate of the true
gradient; AdAdaGrad (AdaGrad-Norm) then takes its next step with that many samples.

Notation: a mini-batch of ``B`` samples with per-sample gradients ``g_i`` (``i = 1..B``) and mean
``g = (1/B) sum_i g_i`` (the mini-batch gradient); ``Var`` is the sample variance over ``i`` (Bessel-corrected,
divisor ``B - 1``). The tests, from the paper's §3 (the norm test of Byrd et al. 2012; the inner product and
orthogonality tests, together the augmented inner product test of Bollapragada et al. 2018) and the authors'
``tests.py``:

* norm test (``eta``): ``E||g_B - grad F||^2 <= eta^2 ||grad F||^2``; next batch
  ``b = ||Var_i(g_i)||_1 / (eta^2 ||g||^2)`` (the coordinate-wise variances summed);
* inner product test (``theta``): ``Var(<g_i, grad F>) / B <= theta^2 ||grad F||^4``; next batch
  ``b = Var_i(<g_i, g>) / (theta^2 ||g||^4)``;
* orthogonality test (``nu``): ``E||g_i - (<g_i, grad F>/||grad F||^2) grad F||^2 / B <= nu^2 ||grad F||^2``;
  next batch ``b = sum_coords Var_i(g_i - (<g_i, g>/||g||^2) g) / (nu^2 ||g||^2)``.

Each function returns ``max(B, b)`` as a float, before the ceiling: the authors' functions take the max inside
(``if new_batch_size > batch_size: batch_size = new_batch_size``) and return ``math.ceil`` of it together with
the two statistics; here the ceiling is left to the caller (``math.ceil(norm_test(...))`` is their first return
value), so the batch size never shrinks below the current one, as in theirs.

Computed as the authors compute it: parameter tensor by parameter tensor (``inputs`` is a list of
``[B, *param_shape]`` tensors, or a mapping of them, as the dict ``torch.func`` gives and theirs takes). The
squared norm ``||g||^2`` is summed over tensors, but the inner products ``<g_i, g>`` and the projections of the
inner product and orthogonality tests are taken **within each tensor** against that tensor's block of ``g``, and
their variances summed over tensors: a block-diagonal reading of the paper's whole-vector statistics (the
covariances between blocks are left out). Each tensor's statistics are computed in its own dtype and summed as
Python floats (their ``.item()`` accumulation).

Departures from their code: (1) the max is taken but not the ceiling (see above), and only the batch size is
returned, not the statistics; (2) a zero mini-batch gradient raises ``ValueError`` (theirs raises
``ZeroDivisionError`` in the norm and inner product tests and returns ``B`` through a NaN in the orthogonality
test); (3) in the orthogonality test a tensor whose own block of ``g`` is zero (a parameter with no gradient, for
instance) contributes the variance of its per-sample gradients, the limit of the projection onto a zero
direction, where theirs divides 0 by 0 and the whole test's NaN makes it return ``B``; (4) the distributed and
gradient-accumulation variants of their ``tests.py`` are not here.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gradwise._validate import check_positive
from gradwise.registry import register

__all__ = ["norm_test", "inner_product_test", "orthogonality_test", "per_sample_grads"]

PAPER = "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods"
_REF = dict(paper=PAPER, year=2024, arxiv="2402.11215", code="https://github.com/timlautk/AdAdaGrad")


def _blocks(per_sample_grads: Any) -> tuple[list[Tensor], int]:
    """The per-parameter ``[B, *shape]`` tensors, flattened to ``[B, n]``, and ``B``; raises ``ValueError``."""
    if isinstance(per_sample_grads, Mapping):
        items = list(per_sample_grads.values())
    elif isinstance(per_sample_grads, Sequence) and not isinstance(per_sample_grads, (str, bytes)):
        items = list(per_sample_grads)
    else:
        raise ValueError(f"Invalid per_sample_grads: {type(per_sample_grads).__name__} (accepted: a non-empty "
                         "list or mapping of [B, *param_shape] floating-point tensors)")
    if not items:
        raise ValueError("Invalid per_sample_grads: empty (accepted: a non-empty list or mapping of "
                         "[B, *param_shape] floating-point tensors)")
    batch = None
    out = []
    for k, t in enumerate(items):
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.dim() < 1:
            what = f"a {t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"Invalid per_sample_grads[{k}]: {what} (accepted: a floating-point tensor of shape "
                             "[B, *param_shape])")
        if batch is None:
            batch = t.shape[0]
        elif t.shape[0] != batch:
            raise ValueError(f"Invalid per_sample_grads[{k}]: batch dimension {t.shape[0]} != {batch} of "
                             "per_sample_grads[0] (every tensor's first dimension is the same batch)")
        t = t.detach()
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"Invalid per_sample_grads[{k}]: non-finite values")
        out.append(t.reshape(t.shape[0], -1))
    if batch < 2:
        raise ValueError(f"Invalid per_sample_grads: batch size {batch} (accepted: B >= 2; the tests use the "
                         "sample variance over the batch)")
    return out, batch


def _zero_gradient(test: str) -> ValueError:
    return ValueError(f"{test}: the mini-batch gradient is zero, so the test (a ratio to its norm) is undefined")


@register(kind="schedule", **_REF,
          summary="AdAdaGrad norm test: next batch size from the per-sample gradient variance over eta^2 ||g||^2")
def norm_test(per_sample_grads: Sequence[Tensor] | Mapping[str, Tensor], eta: float) -> float:
    r"""The norm test: ``max(B, ||Var_i(g_i)||_1 / (eta^2 ||g||^2))``, before the ceiling.

    ``per_sample_grads``: a list (or mapping) of per-parameter tensors shaped ``[B, *param_shape]``;
    ``eta > 0``. AdAdaGrad (Lau et al., arXiv 2402.11215, §3; the norm test of Byrd et al. 2012). See the
    module docstring for the math and the departures from the authors' code.
    """
    eta = check_positive("eta", eta)
    blocks, batch = _blocks(per_sample_grads)
    var_l1 = 0.0
    sq_norm = 0.0
    for g_i in blocks:
        var_l1 += torch.linalg.vector_norm(torch.var(g_i, dim=0, correction=1), ord=1).item()
        sq_norm += (torch.linalg.vector_norm(g_i.mean(0)) ** 2).item()
    if sq_norm == 0.0:
        raise _zero_gradient("norm_test")
    return max(float(batch), var_l1 / (eta ** 2 * sq_norm))


@register(kind="schedule", **_REF,
          summary="AdAdaGrad inner product test: next batch size from Var(<g_i, g>) over theta^2 ||g||^4")
def inner_product_test(per_sample_grads: Sequence[Tensor] | Mapping[str, Tensor], theta: float) -> float:
    r"""The inner product test: ``max(B, sum_blocks Var_i(<g_i, g>) / (theta^2 ||g||^4))``, before the ceiling.

    ``per_sample_grads``: a list (or mapping) of per-parameter tensors shaped ``[B, *param_shape]``;
    ``theta > 0``. AdAdaGrad (Lau et al., arXiv 2402.11215, §3; half of the augmented inner product test of
    Bollapragada et al. 2018). The inner products are taken per tensor (the authors' block-wise reading); see
    the module docstring.
    """
    theta = check_positive("theta", theta)
    blocks, batch = _blocks(per_sample_grads)
    var = 0.0
    sq_norm = 0.0
    for g_i in blocks:
        g = g_i.mean(0)
        var += torch.var(g_i @ g, dim=0, correction=1).item()
        sq_norm += (torch.linalg.vector_norm(g) ** 2).item()
    if sq_norm == 0.0:
        raise _zero_gradient("inner_product_test")
    return max(float(batch), var / (theta ** 2 * sq_norm ** 2))


@register(kind="schedule", **_REF,
          summary="AdAdaGrad orthogonality test: next batch size from the variance of the per-sample gradients' "
                  "parts orthogonal to g, over nu^2 ||g||^2")
def orthogonality_test(per_sample_grads: Sequence[Tensor] | Mapping[str, Tensor], nu: float) -> float:
    r"""The orthogonality test: ``max(B, sum Var_i(g_i - <g_i, g> g / ||g||^2) / (nu^2 ||g||^2))``, before the ceiling.

    ``per_sample_grads``: a list (or mapping) of per-parameter tensors shaped ``[B, *param_shape]``; ``nu > 0``.
    AdAdaGrad (Lau et al., arXiv 2402.11215, §3; the other half of the augmented inner product test). The
    projections are per tensor (the authors' block-wise reading); a tensor whose block of ``g`` is zero
    contributes its plain variance. See the module docstring.
    """
    nu = check_positive("nu", nu)
    blocks, batch = _blocks(per_sample_grads)
    var = 0.0
    sq_norm = 0.0
    for g_i in blocks:
        g = g_i.mean(0)
        g_sq = torch.linalg.vector_norm(g) ** 2
        if g_sq.item() == 0.0:
            ortho = g_i
        else:
            ortho = g_i - torch.outer(g_i @ g, g) / g_sq
        var += torch.var(ortho, dim=0, correction=1).sum().item()
        sq_norm += g_sq.item()
    if sq_norm == 0.0:
        raise _zero_gradient("orthogonality_test")
    return max(float(batch), var / (nu ** 2 * sq_norm))


def per_sample_grads(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor,
                     targets: Tensor, *, randomness: str = "error") -> dict[str, Tensor]:
    r"""Per-sample gradients ``{name: [B, *param.shape]}`` of ``loss_fn(model(x[None]), y[None])``.

    ``torch.func.vmap`` of ``torch.func.grad`` over ``torch.func.functional_call``, as the authors'
    ``compute_per_sample_gradients``: each sample goes through the model as a batch of one (so a BatchNorm in
    training mode cannot be used; put it in eval mode), with the module's buffers as they are. Only parameters
    with ``requires_grad`` get a gradient. ``randomness`` is ``vmap``'s (``"error"``, ``"same"``,
    ``"different"``; the authors use ``"same"`` for their dropout transformer). ``loss_fn`` must return a scalar.
    The result is detached and can be passed to the tests as it is.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"Invalid model: {type(model).__name__} (accepted: a torch.nn.Module)")
    if not callable(loss_fn):
        raise ValueError(f"Invalid loss_fn: {loss_fn!r} (accepted: a callable (outputs, targets) -> scalar)")
    for name, t in (("inputs", inputs), ("targets", targets)):
        if not isinstance(t, Tensor) or t.dim() < 1:
            raise ValueError(f"Invalid {name}: expected a tensor with a batch dimension")
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"Invalid targets: batch dimension {targets.shape[0]} != {inputs.shape[0]} of inputs")
    if inputs.shape[0] < 1:
        raise ValueError("Invalid inputs: empty batch")
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    if not params:
        raise ValueError("Invalid model: it has no parameters that require grad")
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_one(p, x, y):
        out = torch.func.functional_call(model, (p, buffers), (x.unsqueeze(0),))
        loss = loss_fn(out, y.unsqueeze(0))
        if loss.dim() != 0:
            raise ValueError(f"Invalid loss_fn: returned shape {tuple(loss.shape)} (accepted: a scalar)")
        return loss

    grads = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0), randomness=randomness)(
        params, inputs, targets)
    return {k: v.detach() for k, v in grads.items()}
