"""APO: Accelerated Preference Optimization (He, Yuan, Gu, 2024)."""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise.registry import register

from gradwise.preference._common import check_logps, check_nonneg, check_positive

__all__ = ["apo_extrapolated_logps", "apo_extrapolated_parameters", "apo_dpo_loss"]

_PAPER = "Accelerated Preference Optimization for Large Language Model Alignment"


def apo_extrapolated_logps(curr_logps: Tensor, prev_logps: Tensor, *, alpha: float) -> Tensor:
    r"""Log-probs of APO's momentum-extrapolated reference (unnormalized): Eq. (3.6)/(3.7) of arXiv 2410.06293.

    After iteration t has trained the iterate ``pi_{t+1}`` (the paper's ``hat pi_{t+1}``), APO extrapolates::

        log hat pi_{t+1}(y|x) = log pi_{t+1}(y|x) + alpha * (log pi_{t+1}(y|x) - log pi_t(y|x)) - log Z(x)

    i.e. ``hat pi_{t+1} ∝ pi_{t+1} * (pi_{t+1} / pi_t) ** alpha``. This returns the first two terms; ``log Z(x)``
    depends only on the prompt and cancels in every pairwise loss (DPO, IPO, SPPO's squared loss on
    differences), so it is left out. ``curr_logps`` is ``log pi_{t+1}`` (the iterate just trained),
    ``prev_logps`` is ``log pi_t`` (the *trained* iterate before it, not the previous extrapolated reference;
    ``pi_0 = pi_ref``); both without gradient. ``alpha = 0`` gives plain iterative DPO (reference = last
    iterate). Notation: the paper writes ``hat pi`` for the trained iterates and ``pi`` for the extrapolated
    ones; this module uses the opposite (``pi`` trained, ``hat pi`` extrapolated).

    Example::

        >>> apo_extrapolated_logps(torch.tensor([-2.0]), torch.tensor([-3.0]), alpha=0.5)
        tensor([-1.5000])
    """
    check_logps(curr_logps=curr_logps, prev_logps=prev_logps)
    alpha = check_nonneg("alpha", alpha)
    return curr_logps + alpha * (curr_logps - prev_logps)


def apo_extrapolated_parameters(curr: Mapping[str, Tensor], prev: Mapping[str, Tensor], *,
                                alpha: float) -> dict[str, Tensor]:
    r"""APO's extrapolation in parameter space, as in the paper's experiments (arXiv 2410.06293, Sec. 5.2).

    ``theta_hat = theta_{t+1} + alpha * (theta_{t+1} - theta_t)`` for every floating-point entry of two state
    dicts (``curr`` = the iterate just trained, ``prev`` = the trained iterate before it; ``pi_ref``'s weights at
    the first extrapolation); other entries (integer buffers) are copied from ``curr``. The paper notes that
    for a softmax-linear policy this is exactly the log-probability extrapolation of
    :func:`apo_extrapolated_logps` (the logits are linear in the parameters and the normalizer is absorbed by
    the softmax), and uses it for LLMs as an approximation of that step. Load the result into a model
    (``model.load_state_dict(...)``) to get the next iteration's reference and sampling policy.

    Example::

        >>> a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([0.0, 2.0])}
        >>> apo_extrapolated_parameters(a, b, alpha=0.3)["w"]
        tensor([1.3000, 2.0000])
    """
    alpha = check_nonneg("alpha", alpha)
    if not isinstance(curr, Mapping) or not isinstance(prev, Mapping):
        raise ValueError("Invalid curr/prev: expected two state dicts (mappings of names to tensors)")
    if set(curr) != set(prev):
        missing = sorted(set(curr) ^ set(prev))
        raise ValueError(f"Invalid prev: its keys differ from curr's (e.g. {missing[0]!r}); pass two state "
                         "dicts of the same model")
    out: dict[str, Tensor] = {}
    for k, c in curr.items():
        q = prev[k]
        if not torch.is_tensor(c) or not torch.is_tensor(q) or c.shape != q.shape:
            raise ValueError(f"Invalid prev[{k!r}]: expected a tensor of shape {tuple(getattr(c, 'shape', ()))}")
        with torch.no_grad():
            out[k] = c + alpha * (c - q.to(c.dtype)) if c.is_floating_point() else c.clone()
    return out


@register(kind="preference", paper=_PAPER, year=2024, arxiv="2410.06293", code=None,
          summary="APO: iterative DPO whose reference is the Nesterov-extrapolated previous iterate",
          info={"online": "gradwise.preference.online.iterative:APO"})
def apo_dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                 acc_ref_chosen_logps: Tensor, acc_ref_rejected_logps: Tensor, *, beta: float = 0.1) -> Tensor:
    r"""APO's per-iteration loss: DPO against the momentum-extrapolated reference.

    Paper: He, Yuan, Gu, "Accelerated Preference Optimization for Large Language Model Alignment", 2024,
    arXiv 2410.06293. Authors' code: none found.

    APO (Algorithm 1) reads iterative preference optimization as a proximal point method and adds Nesterov
    momentum. Iteration t solves ``pi_{t+1} = argmin_pi L(pi; hat pi_t)`` with the DPO loss::

        loss = -log sigmoid(beta * [(log pi(y_w) - log hat pi_t(y_w)) - (log pi(y_l) - log hat pi_t(y_l))])

    and then extrapolates ``hat pi_{t+1} ∝ pi_{t+1} (pi_{t+1}/pi_t)^alpha`` (see
    :func:`apo_extrapolated_logps`), with ``hat pi_0 = pi_0 = pi_ref``. Inputs are sequence log-probs ``[B]``
    of the policy and of ``hat pi_t`` (``acc_ref_*``, from ``apo_extrapolated_logps(log pi_t,
    log pi_{t-1}, alpha=alpha)``). The trainer keeps the last two iterates ``pi_t`` and ``pi_{t-1}`` (or their
    log-probs on the iteration's data, which is all the loss needs). Notation: here ``pi`` are the trained
    iterates and ``hat pi`` the extrapolated references; the paper uses the opposite hats.

    Choices: the DPO instance of the framework (the paper's experiments, Example 3.1); SPPO's and IPO's
    instances (Examples 3.2, 3.3) are the same reference with another pairwise loss. ``beta`` default 0.1
    (DPO's common value; the paper uses ``beta`` = 0.01, 0.1, 1.0 in iterations 1, 2, 3 and a constant
    ``alpha = 0.3``, App. F.1). Returns ``[B]``.

    Checked against (session 3): the paper's text, in the ICLR 2025 submission of arXiv 2410.06293
    (OpenReview TROUDY6Wg4), ``papers/13320_Accelerated_Preference_O.pdf`` of
    ChangshuoShen/ICLR_2025_4_DPO@881419584526c805a8801a39f623f0e4fac588b7 (read as text): Algorithm 1
    (lines 2, 4-7), Eq. (3.5)-(3.7), Sec. 5.2 and App. F.1. They confirm: ``pi_0 = hat pi_0 = pi_ref``;
    iteration t minimizes the loss with reward ``beta log pi / pi_t`` where ``pi_t`` is the *extrapolated*
    policy; the extrapolation ``pi_{t+1} ∝ hat pi_{t+1} (hat pi_{t+1} / hat pi_t)^alpha`` uses the two last
    *trained* iterates (``alpha > 0`` fixed; ``alpha = 0`` is iterative DPO), which is what
    :func:`apo_extrapolated_logps` computes (same convention for ``alpha``); the output after the last
    iteration is the trained iterate, before extrapolation. Where a trainer departs from the paper, it is
    the trainer's choice, not this loss's: Algorithm 1 (line 4) collects iteration t's pairs from the
    extrapolated policy ``pi_t``, and the experiments carry out the extrapolation in parameter space
    (:func:`apo_extrapolated_parameters`; exact for softmax-linear policies, an approximation for LLMs)
    rather than on log-probabilities. No authors' code was found.

    Example::

        >>> z = torch.zeros(1)
        >>> apo_dpo_loss(z, z, z, z)     # log 2
        tensor([0.6931])
    """
    check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                acc_ref_chosen_logps=acc_ref_chosen_logps, acc_ref_rejected_logps=acc_ref_rejected_logps)
    beta = check_positive("beta", beta)
    logits = (policy_chosen_logps - acc_ref_chosen_logps) - (policy_rejected_logps - acc_ref_rejected_logps)
    return -F.logsigmoid(beta * logits)
