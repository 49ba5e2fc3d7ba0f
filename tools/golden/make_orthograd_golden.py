"""Golden trajectories for ⊥Grad, made by running the authors' own wrapper.

The authors' file is not part of this repository. Point REFS at a folder
holding their ``orthograd.py`` (from
github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability; the
commit it ran was not recorded, neither here nor in tests/data/README.md)
saved as ``orthograd_ref.py``, then run from the repository root:

    REFS=/path/to/refs .venv/bin/python tools/golden/make_orthograd_golden.py

Writes tests/data/orthograd_golden.pt in the format of optim_golden.pt, on the
same conformance problem (tests/optim_problem.py).
"""
import importlib.util
import os
import sys

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "tests"))
import optim_problem as P  # noqa: E402

spec = importlib.util.spec_from_file_location("orthograd_ref", os.path.join(os.environ["REFS"], "orthograd_ref.py"))
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

cases = [
    ("OrthoAdamW", "AdamW", dict(lr=1e-2, weight_decay=0.0)),
    ("OrthoAdamW", "AdamW", dict(lr=1e-2, weight_decay=1e-2)),
    ("OrthoGrad+SGD", "SGD", dict(lr=1e-3, momentum=0.8)),
]
out = []
for name, base, kw in cases:
    cls = getattr(torch.optim, base)
    final = P.run(lambda ps: ref.OrthoGrad(ps, cls, **kw), steps=60)
    out.append(dict(name=name, reference="LucasPrietoAl/grokking-at-the-edge-of-numerical-stability orthograd.py "
                    f"wrapping torch.optim.{base} (torch {torch.__version__})", base=base,
                    ref_kwargs=kw, steps=60, final=final))
torch.save(out, os.path.join(here, "..", "..", "tests", "data", "orthograd_golden.pt"))
print(len(out), "cases")
