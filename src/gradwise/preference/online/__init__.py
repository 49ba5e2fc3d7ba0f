"""Online and iterative preference optimization: sample responses from the
current policy, label them with a preference oracle, build pairs, update, and
keep the previous iterates each method needs.

Pieces (each usable alone):

* :func:`generate` -- batched sampling from any causal LM that maps token ids
  ``[N, T]`` to logits ``[N, T, V]`` (temperature, top-k, ``max_new_tokens``,
  EOS; no KV cache, each new token re-runs the whole prefix, which is what a
  tiny model wants);
* :func:`response_logps` / :func:`sampled_kl` -- sequence log-probs of
  responses and the sequence KL between two models estimated on samples;
* :class:`PreferenceOracle` -- a pairwise preference function
  ``P(a > b | prompt)`` or a reward function ``r(prompt, response)``;
* :func:`build_pairs` -- pairs from K samples per prompt (best vs worst, or
  random pairs labelled by the oracle), with each response's win rate against
  the other samples (DNO's ``r_t``);
* :class:`OnlineMethod` -- an online method as an object with hooks the loop
  calls (``begin_iteration``, ``make_pairs``, ``prepare``, ``step``); the
  built-in ones (:func:`online_method`: iterative DPO, INPO, DNO, APO, EGPO and
  HyPO's online KL term) are found through the registry: an objective's record
  with ``info={"online": "module:Class"}`` names its online method;
* :class:`OnlinePreferenceLoop` -- the iteration manager that calls them.

Modules: ``sampling`` (generation, log-probs, KL), ``oracle`` (judge and
pairs), ``methods`` (the hooks, discovery), ``iterative``/``egpo``/``hypo`` (the
built-in methods), ``loop`` (the loop); RLHF pieces for a PPO loop of your own:
``constrained_rlhf`` (:class:`LagrangeMultipliers`, constrained RLHF's dynamic
weights of component rewards, and :func:`nelder_mead_thresholds`) and
``dataset_reset`` (DR-PO: :func:`dataset_reset_mask`, :func:`forced_prefixes`
for ``generate(forced_prefixes=...)``, :func:`ppo_clip_loss`).

Which iterates are kept (see docs/preference_iterative.md):

=========  ==============================================================
method     kept by the loop
=========  ==============================================================
``dpo``    ``pi_ref``; samples from ``pi_t`` (iterative/online DPO)
``inpo``   ``pi_ref`` and a frozen ``pi_t`` (start of the iteration; it also
           samples the pairs), replaced by the new policy after the iteration
``dno``    frozen ``pi_t`` (sampler and reference); win rates ``r_t`` among
           the K samples for Algorithm 1 (``soft=True``), hard labels
           (DNO-Prct) otherwise
``apo``    ``extrapolate="parameters"`` (default, the paper's experiments):
           the trained weights of the last two iterations; at the start
           of an iteration the policy jumps to ``theta + alpha (theta -
           theta_prev)``, which is frozen as ``pi_t`` (sampler and DPO
           reference; ``pi_ref`` at t = 0). ``extrapolate="logprobs"``:
           frozen ``pi_t`` and ``pi_{t-1}``; reference ``(1+alpha) log pi_t
           - alpha log pi_{t-1}``, samples from ``pi_t``
``egpo``   ``pi_ref``; at every step a copy of ``theta_t`` and the optimizer
           state while the half step is taken, then restored
``hypo``   ``pi_ref``; offline pairs plus ``samples`` (default 1) fresh samples
           per prompt from the *current* policy at every step
=========  ==============================================================

The iterative methods (DPO, INPO, DNO, APO and custom :class:`OnlineMethod`
specs) update through :meth:`PreferenceTrainer.train_step
<gradwise.preference.trainer.PreferenceTrainer.train_step>`: the kept
iterates are the trainer's ``ref_model`` and ``extra_models={"prev": pi_t,
"prev2": pi_{t-1}}``, whose log-probs it computes once per sequence without
gradient and caches (the reference's cache is kept across iterations, the
iterates' for one iteration); the oracle's numbers on each pair (``pref``,
``chosen_win_rate``, ``rejected_win_rate``) reach the objective through
``example_inputs``. EGPO and HyPO need fresh samples at every step and keep
their own steps.

SRPO is offline: train it with :class:`PreferenceTrainer` and
``srpo_loss`` (``revision_prompt=`` builds the revision prompts ``x + y +
separator``), and revise at inference time with :func:`generate_revisions`
(draft ``y_0 ~ pi(.|x)``, then ``y_{k+1} ~ pi(.|revision_prompt(x, y_k))``).
"""
from __future__ import annotations
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())


def __getattr__(name: str):
    if name == "ONLINE_METHODS":  # read from the registry on use: it cannot be read while packages import
        from gradwise.preference.online.methods import online_method_names
        return online_method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
