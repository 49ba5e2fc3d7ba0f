"""Deprecated: the optimizer step-time benchmark moved out of the package, to ``benchmarks/``.

``benchmarks/optim_step.py`` (the optimizer rows and their table) and ``benchmarks/harness.py``
(the timing machinery every benchmark script shares) in a source checkout; ``gradwise bench``
runs it. From a checkout this module still gives the old names, with a ``DeprecationWarning``;
from an installed wheel, which has no ``benchmarks/`` folder, importing it is an ``ImportError``
that says where the benchmark is. Removal planned after version 0.2.
"""
from __future__ import annotations

import warnings

from gradwise._benchmarks import load

warnings.warn("gradwise.bench is deprecated; import from benchmarks/optim_step.py (benchmarks/ of a source "
              "checkout; `gradwise bench` runs it); removal planned after version 0.2",
              DeprecationWarning, stacklevel=2)

_impl = load("optim_step")

METHODS = _impl.METHODS
REFERENCES = _impl.REFERENCES
Method = _impl.Method
run = _impl.run
main = _impl.main
targets = _impl.targets
to_markdown = _impl.to_markdown
tensor_specs = _impl.harness.tensor_specs
make_tensors = _impl.harness.make_tensors
GRADWISE_NAMES = tuple(m.name for m in METHODS)

__all__ = ["METHODS", "REFERENCES", "Method", "tensor_specs", "run", "main"]
