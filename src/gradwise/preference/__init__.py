"""Preference optimization: objectives on log-probabilities, log-prob helpers, a trainer and online loops.

Layout (see docs/architecture.md):

* ``objectives/`` -- one method per module, pure functions of sequence (or token) log-probabilities
  returning per-pair losses; ``_common`` holds their shared validation;
* ``logprobs`` -- token and sequence log-probabilities, collation of preference examples;
* ``trainer/`` -- :class:`PreferenceTrainer` and its pieces (objective binding, frozen-model caches,
  input validation, checkpoints);
* ``online/`` -- sampling, the oracle, the online methods (objects with hooks) and the loop that
  calls them;
* ``trl_adapter`` -- gradwise objectives inside TRL's ``DPOTrainer``.

Every module lists its public names in ``__all__`` and this package re-exports them all, so
``from gradwise.preference import dpo_loss, PreferenceTrainer`` is the usual import. Old module
paths (``gradwise.preference.dpo``, ``gradwise.preference.curry_dpo``) keep working with a
``DeprecationWarning`` naming the new one (``_moved``).
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules
from gradwise._deprecation import redirect

__all__: list[str] = export_submodules(__name__, __path__, globals())

_OBJECTIVE_MODULES = ("accel_apo", "cpl", "degree_sspo", "dpo", "fdpo", "hybrid_hypo", "ipo", "nash_dno",
                      "nash_egpo", "nash_inpo", "reward_ensemble", "robust_srpo", "rpo", "selfplay_spo", "simpo",
                      "superhf_sft", "token_credit")


def _online_methods():
    from gradwise.preference.online.methods import online_method_names
    return online_method_names()


# Where the modules of version 0.1 went: a record of the move (not a list of methods: new objectives are
# found by the auto-export above and by the registry), kept until the old paths are removed.
__getattr__ = redirect(
    __name__,
    modules={**{m: f"{__name__}.objectives.{m}" for m in _OBJECTIVE_MODULES},
             "curry_dpo": "gradwise.schedules.curry_dpo"},
    names={n: "gradwise.schedules" for n in ("curry_dpo_pairs", "curry_dpo_schedule", "curry_dpo_next_reference")},
    lazy={"ONLINE_METHODS": _online_methods},
)
