"""Run any gradwise pairwise objective inside TRL's ``DPOTrainer`` (optional extra).

TRL (``pip install 'gradwise[trl]'``, TRL 1.16) is imported only when one of
these functions is called, so ``gradwise.preference`` imports without it.

The extension point is ``DPOTrainer._compute_loss(model, inputs,
return_outputs)``, the method TRL's ``compute_loss`` delegates to. The adapter
replaces it with one that

* runs the policy exactly as TRL does (``model(..., labels=labels,
  fused_lm_head=True)``: TRL's fused LM head returns per-token log-probs of
  the completion tokens, rows ``[chosen_1..B, rejected_1..B]``);
* gets the reference log-probs as TRL does: the precomputed
  ``ref_chosen_logps``/``ref_rejected_logps`` columns when
  ``precompute_ref_log_probs=True``, else ``DPOTrainer.compute_ref_log_probs``
  (which also covers PEFT, where the reference is the model with its adapter
  off; untested, see below); objectives that take no reference quantity
  (SimPO, ...) never run the reference model;
* maps TRL's tensors to gradwise's named quantities (see
  :data:`gradwise.preference.trainer.QUANTITIES`): TRL's sequence log-probs
  are **sums** over completion tokens (``*_logps``); ``*_avg_logps`` divide
  them by the number of scored completion tokens (``*_lengths``), for the
  reference too; the token-level ``policy_*_token_logps`` are the completion
  tokens moved to the left with ``*_mask``;
* calls the objective through :class:`~gradwise.preference.trainer.PreferenceObjective`
  (the same input matching as :class:`~gradwise.preference.trainer.PreferenceTrainer`)
  and returns the mean per-pair loss of the micro-batch (TRL's convention),
  logging TRL's ``rewards/*`` and ``logps/*`` metrics.

Objectives that take more than TRL provides (log-probs of extra frozen models
such as INPO's ``pi_t``, SRPO's revision log-probs, per-example fields) are
rejected with ``ValueError``: use :class:`~gradwise.preference.trainer.PreferenceTrainer`.

``precompute_ref_log_probs=True`` is supported: TRL scores the reference once
when the trainer is built and stores ``ref_chosen_logps``/``ref_rejected_logps``
columns, which the adapter reads instead of running the reference; the loss
equals the non-precomputed run's (tested). PEFT models are **untested** (PEFT is
not installed in our test environment): the reference then comes from TRL's
``compute_ref_log_probs`` on the model with its adapter disabled, exactly as
TRL's own loss gets it, but no test covers that path.

``beta``: an objective that takes ``beta`` and has none set (set it with
``functools.partial`` or ``PreferenceObjective(fn, beta=...)``) receives
``DPOConfig.beta``, as TRL's own losses do; note that TRL's default ``beta=0.1``
is not SimPO's 2.0. TRL options that change its own loss
(``loss_type`` other than ``["sigmoid"]``, ``loss_weights``, ``ld_alpha``,
``use_weighting``, ``f_divergence_type``) are rejected with ``ValueError``
rather than silently ignored: with the adapter, the gradwise objective *is*
the loss (f-DPO, IPO, ... are gradwise objectives).

With ``objective=dpo_loss`` the loss equals TRL's ``loss_type="sigmoid"`` on
the same batch (tests/preference/test_trl_adapter.py).

Example::

    from functools import partial
    from trl import DPOConfig
    from gradwise.preference import simpo_loss, trl_dpo_trainer

    trainer = trl_dpo_trainer(model, ref_model=ref, args=DPOConfig("out", beta=2.0),
                              train_dataset=ds, processing_class=tok,
                              objective=partial(simpo_loss, gamma=0.5))
    trainer.train()
"""
from __future__ import annotations

import copy
import types
from typing import Any

import torch

from gradwise.preference.logprobs import left_pack
from gradwise.preference.trainer import QUANTITIES, PreferenceObjective

__all__ = ["trl_dpo_trainer_class", "trl_dpo_trainer", "use_gradwise_objective"]

_TOKEN_LEVEL = frozenset(QUANTITIES[-4:])
_INSTALL_HINT = "pip install 'gradwise[trl]'"
_CLASS: type | None = None


def _dpo_trainer_base() -> type:
    try:
        from trl import DPOTrainer
    except ImportError as e:  # TRL, or one of its dependencies, is missing
        raise ImportError(f"gradwise.preference.trl_adapter needs TRL (and transformers): {_INSTALL_HINT} "
                          f"({e})") from e
    return DPOTrainer


def _as_objective(objective, beta: float) -> PreferenceObjective:
    """A private PreferenceObjective for the trainer, with TRL's beta filled in where the objective takes one."""
    if isinstance(objective, PreferenceObjective):
        obj = copy.copy(objective)
        obj.hyperparameters = dict(objective.hyperparameters)
    else:
        obj = PreferenceObjective(objective)
    needs = ([f"log-probs of extra model {m!r}" for m in obj.extra_models]
             + [f"revision log-probs ({n})" for n in obj.revision_inputs[:1]]
             + [f"example field {k!r}" for k in obj.example_inputs.values()])
    if needs:
        raise ValueError(f"Invalid objective: {obj.name} takes {needs[0]}, which TRL's DPOTrainer does not "
                         "provide (it scores policy and reference only); train it with "
                         "gradwise.preference.PreferenceTrainer (extra_models=, revision_prompt=, example_inputs=)")
    if "beta" not in obj.hyperparameters and obj.accepts("beta"):
        obj.hyperparameters["beta"] = float(beta)
    return obj


def _check_trl_args(args) -> None:
    """Reject TRL options that only change TRL's own loss (the gradwise objective replaces it)."""
    loss_type = getattr(args, "loss_type", ["sigmoid"])
    if isinstance(loss_type, str):
        loss_type = [loss_type]
    if list(loss_type) != ["sigmoid"]:
        raise ValueError(f"Invalid loss_type: {loss_type!r} (accepted with a gradwise objective: the default "
                         "['sigmoid']; the objective replaces TRL's loss)")
    if getattr(args, "loss_weights", None) not in (None, [1.0]):
        raise ValueError(f"Invalid loss_weights: {args.loss_weights!r} (accepted with a gradwise objective: None)")
    if getattr(args, "ld_alpha", None) is not None:
        raise ValueError(f"Invalid ld_alpha: {args.ld_alpha!r} (accepted with a gradwise objective: None)")
    if getattr(args, "use_weighting", False):
        raise ValueError("Invalid use_weighting: True (accepted with a gradwise objective: False)")
    if getattr(args, "f_divergence_type", "reverse_kl") not in ("reverse_kl", None):
        raise ValueError(f"Invalid f_divergence_type: {args.f_divergence_type!r} (accepted with a gradwise "
                         "objective: 'reverse_kl'; use gradwise.preference.fdpo_loss for f-DPO)")


def _compute_loss(self, model, inputs: dict[str, Any], return_outputs: bool = False):
    """``DPOTrainer._compute_loss`` with the gradwise objective ``self.gradwise_objective``."""
    obj: PreferenceObjective = self.gradwise_objective
    mode = "train" if self.model.training else "eval"
    non_model = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
    model_kwargs = {k: v for k, v in inputs.items() if k not in non_model}
    model_kwargs["use_cache"] = False
    if self.aux_loss_enabled:
        model_kwargs["output_router_logits"] = True
    completion_mask = inputs["completion_mask"]
    shift_mask = completion_mask[..., 1:]
    labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
    outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
    seq_len = shift_mask.size(1)
    per_token = outputs.log_probs[:, -seq_len:]  # 0 off the completion
    logps = per_token.sum(dim=1)
    lengths = shift_mask.sum(dim=1).to(logps.dtype)  # completion tokens that are scored
    avg = logps / lengths.clamp(min=1.0)
    chosen_logps, rejected_logps = logps.chunk(2, dim=0)
    chosen_avg, rejected_avg = avg.chunk(2, dim=0)
    chosen_len, rejected_len = lengths.chunk(2, dim=0)
    q = {"policy_chosen_logps": chosen_logps, "policy_rejected_logps": rejected_logps,
         "policy_chosen_avg_logps": chosen_avg, "policy_rejected_avg_logps": rejected_avg,
         "chosen_lengths": chosen_len, "rejected_lengths": rejected_len}
    used = set(obj.inputs) | set(obj.keyword_inputs)
    if used & _TOKEN_LEVEL:
        packed, pmask = left_pack(per_token, shift_mask)
        q["policy_chosen_token_logps"], q["policy_rejected_token_logps"] = packed.chunk(2, dim=0)
        q["chosen_mask"], q["rejected_mask"] = pmask.chunk(2, dim=0)
    if obj.needs_reference:
        if self.precompute_ref_logps:
            ref_c, ref_r = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_src = self.ref_model if self.ref_model is not None else self.model  # PEFT: adapter off
            ref_c, ref_r = self.compute_ref_log_probs(ref_src, inputs)
        ref_c, ref_r = ref_c.to(logps.dtype).detach(), ref_r.to(logps.dtype).detach()
        q.update(ref_chosen_logps=ref_c, ref_rejected_logps=ref_r,
                 ref_chosen_avg_logps=ref_c / chosen_len.clamp(min=1.0),
                 ref_rejected_avg_logps=ref_r / rejected_len.clamp(min=1.0))
    beta = float(obj.hyperparameters.get("beta", self.beta))
    losses, chosen_rewards, rejected_rewards = obj(q, beta=beta)
    loss = losses.mean()
    if self.aux_loss_enabled:
        aux_loss = outputs.aux_loss
        loss = loss + self.router_aux_loss_coef * aux_loss
        self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

    acc = self.accelerator
    if mode == "train":
        n_tok = acc.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
        self._total_train_tokens += n_tok // self._tp_size
    self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
    cr, rr = acc.gather(chosen_rewards), acc.gather(rejected_rewards)
    m = self._metrics[mode]
    m["rewards/chosen"].append(cr.mean().item())
    m["rewards/rejected"].append(rr.mean().item())
    m["rewards/accuracies"].append((cr > rr).float().mean().item())
    m["rewards/margins"].append((cr - rr).mean().item())
    m["logps/chosen"].append(acc.gather(chosen_logps.detach()).mean().item())
    m["logps/rejected"].append(acc.gather(rejected_logps.detach()).mean().item())
    if return_outputs:  # as TRL: the fused head builds no logits, so recompute them
        with torch.no_grad():
            outputs = model(**model_kwargs)
        return loss, outputs
    return loss


def trl_dpo_trainer_class() -> type:
    """TRL's ``DPOTrainer`` subclass ``GradwiseDPOTrainer`` whose loss is a gradwise objective.

    It takes every ``DPOTrainer`` argument plus a keyword ``objective`` (a
    pairwise objective function such as ``dpo_loss`` or ``simpo_loss``, a
    ``functools.partial`` of one, or a
    :class:`~gradwise.preference.trainer.PreferenceObjective`). The class is
    built on first call (this imports TRL) and cached.
    """
    global _CLASS
    if _CLASS is None:
        base = _dpo_trainer_base()

        class GradwiseDPOTrainer(base):
            """``trl.DPOTrainer`` whose loss is the gradwise objective ``objective`` (see
            :mod:`gradwise.preference.trl_adapter`)."""

            def __init__(self, *args, objective, **kwargs):
                _as_objective(objective, 1.0)  # a bad objective fails before TRL tokenizes and precomputes
                super().__init__(*args, **kwargs)
                _check_trl_args(self.args)
                self.gradwise_objective = _as_objective(objective, self.beta)

            _compute_loss = _compute_loss

        _CLASS = GradwiseDPOTrainer
    return _CLASS


def trl_dpo_trainer(*args, objective, **kwargs):
    """A TRL ``DPOTrainer`` (``GradwiseDPOTrainer``, see :func:`trl_dpo_trainer_class`)
    that trains with the gradwise ``objective``; other arguments go to ``DPOTrainer``.

    TRL needs an explicit ``ref_model`` when ``model`` was not loaded from a
    path (or ``precompute_ref_log_probs=True``, or a PEFT model), even for
    reference-free objectives, which never run it.
    """
    return trl_dpo_trainer_class()(*args, objective=objective, **kwargs)


def use_gradwise_objective(trainer, objective):
    """Make an existing TRL ``DPOTrainer`` train with the gradwise ``objective``
    (patches its ``_compute_loss`` on this instance only); returns the trainer."""
    base = _dpo_trainer_base()
    if not isinstance(trainer, base):
        raise ValueError(f"Invalid trainer: expected a trl.DPOTrainer, got {type(trainer).__name__}")
    _check_trl_args(trainer.args)
    trainer.gradwise_objective = _as_objective(objective, trainer.beta)
    trainer._compute_loss = types.MethodType(_compute_loss, trainer)
    return trainer
