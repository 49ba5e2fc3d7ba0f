"""A small, explicit trainer for offline preference objectives (DPO family,
SimPO, ...) on any model that maps token ids to logits.

The objective is a pure function of sequence log-probabilities (see
``gradwise.preference``); the trainer only produces those log-probabilities:

* every prompt+completion of a micro-batch goes through the policy in **one**
  forward pass (:func:`~gradwise.preference.logprobs.collate_preferences`:
  rows ``[chosen_1..B, rejected_1..B]`` for pairs; ranked lists add rows and
  pairs);
* reference log-probabilities are computed **once per sequence** (frozen
  reference model, eval mode, ``no_grad``) and cached, keyed by a digest of
  the sequence's tokens (never by ``example["id"]``: ids may repeat within a
  dataset or across the train and eval sets); objectives that take no reference quantity never
  trigger a reference forward, and no reference model is built for them;
* log-probs of further frozen models (``extra_models={"prev": pi_t}``, for
  INPO, DNO, APO, ...) are computed and cached the same way, and handed to
  objectives as ``prev_chosen_logps``, ``prev_rejected_logps``, ...; numbers
  stored on each example (win rates, preference probabilities) reach an
  objective through ``PreferenceObjective(example_inputs=...)``;
* revision log-probs ``log pi(y'|x, y)`` for self-improvement objectives
  (SRPO) are scored in the same forward pass as the pair, on revision prompts
  built by ``revision_prompt`` (default: prompt + draft + separator tokens,
  :func:`build_revision_prompt`); none of this runs unless the objective
  asks for it;
* losses of a step are ``sum(per-pair losses) / pairs in the step``, so
  gradient accumulation over micro-batches gives the gradient of the full
  batch;
* ``save_checkpoint``/``load_checkpoint`` carry the model, optimizer,
  scheduler, step counter, torch RNG state, reference cache (and the
  reference weights when the trainer made the reference itself), so a
  resumed run continues exactly as an uninterrupted one. The data order is a
  function of ``(seed, epoch)``, so it needs no saved state.

Modules: :mod:`.binding` (objective binding, :class:`PreferenceObjective`), :mod:`.inputs` (input
validation, collation, revision prompts), :mod:`.frozen` (frozen-model caches), :mod:`.checkpoint`
(versioned, transactional checkpoints) and :mod:`.training` (:class:`PreferenceTrainer`: step, train,
evaluate). Each lists its public names in ``__all__`` and this package re-exports them, so
``from gradwise.preference.trainer import PreferenceTrainer`` works as before the split.

See docs/preference_trainer.md for a walk-through.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
