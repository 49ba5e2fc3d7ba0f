"""Continual learning: a model trained on a sequence of tasks or shifting domains, evaluated as it goes.

* Streams (``streams``): ``split_stream`` cuts a labelled set into class-incremental tasks;
  ``corruption_stream`` makes a domain-shift stream of generated image corruptions (noise, 3x3 smoothing,
  contrast, rotation at severities 1-3) in i.i.d., continual or label-shifted order. Both are seeded and
  deterministic, torch only.
* Evaluation (``evaluation``): ``ContinualEvaluator(model, eval_sets, every=...)`` with ``.track(step,
  current_task)``, a front on :class:`gradwise.metrics.ContinualEvaluator` (De Lange et al., 2023: the
  per-iteration record and its min-ACC, WC-ACC, windowed forgetting and plasticity, which this package
  re-exports from ``gradwise.metrics``), and ``lca``, the learning curve area of A-GEM (Chaudhry et al., 2019).

One method per module; each lists its public names in ``__all__`` and this package re-exports them.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
