"""Golden KLoM values and margins, made by running the authors' own functions.

Source: github.com/RoyRin/data-unlearning-bench at commit eb261f9c652aa1daae62c7f23f4e56286edf745c
(2025-06-11), ``unlearning_bench/eval.py``: ``get_margin`` (margins from logits), ``compute_binned_KL_div``
and ``kl_from_margins`` (KLoM). The file runs unchanged; stubbed are only ``unlearning_bench.paths`` (data
folders and a model-download helper that it imports but these functions do not use) and ``tqdm`` (progress
bars). numpy and scipy are those of the project's venv (numpy 2.4, scipy 1.17).

Run from the repository root with their ``eval.py`` extracted to a folder (``git -C <their git dir> show
eb261f9:unlearning_bench/eval.py > /tmp/dub/eval.py``)::

    DUB_EVAL=/tmp/dub/eval.py PYTHONPATH=src .venv/bin/python tools/golden/make_klom_golden.py

Writes tests/data/klom_golden.pt: ``cases``, a list of dicts with the float64 ``unlearned`` and ``oracle``
margins (models x points), the keyword arguments and their ``kl_from_margins`` result (float64, one per
point; NaN where they give NaN); and ``logits``/``labels``/``margins``: float64 logits of 3 models on 7
points and their ``get_margin`` margins.
"""
import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch

paths = types.ModuleType("unlearning_bench.paths")
paths.EVAL_DIR = paths.DATA_DIR = Path("/nonexistent")
pkg = types.ModuleType("unlearning_bench")
pkg.paths = paths
sys.modules.update({"unlearning_bench": pkg, "unlearning_bench.paths": paths})
tq = types.ModuleType("tqdm")
tq.tqdm = lambda it, **kw: it
sys.modules["tqdm"] = tq
spec = importlib.util.spec_from_file_location("dub_eval", os.environ["DUB_EVAL"])
ev = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ev)

g = torch.Generator().manual_seed(155)
cases = []


def case(u, o, **kw):
    res = ev.kl_from_margins(u, o, **kw)
    cases.append(dict(unlearned=u.clone(), oracle=o.clone(), kwargs=kw, result=torch.from_numpy(np.asarray(res,
                                                                                                          dtype=np.float64))))


# 1. typical: 40 models, 12 points, shifted and scaled normal margins
u = torch.randn(40, 12, generator=g, dtype=torch.float64) * 2 + 3
o = torch.randn(40, 12, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, 12, dtype=torch.float64) + \
    torch.linspace(-2, 4, 12, dtype=torch.float64)
case(u, o)
# 2. same distribution (small KL), few models, other bins / eps
u = torch.randn(8, 9, generator=g, dtype=torch.float64)
o = torch.randn(8, 9, generator=g, dtype=torch.float64)
case(u, o, clip_min=-100, clip_max=100)
# 3. margins past the clip, ties, integer values on bin edges, a constant column, an all-max column (NaN)
u = torch.randint(-3, 4, (10, 6), generator=g).double()
o = torch.randint(-3, 4, (10, 6), generator=g).double()
u[:, 0] = 250.0
o[:3, 0] = -300.0
u[:, 1] = 1.5
o[:, 1] = 1.5       # every margin equal: one bin, range [1.5, 2.5]
u[:, 2] = 5.0       # every unlearned margin is the largest: none counted
u[:, 3] = torch.linspace(-10, 10, 10, dtype=torch.float64)
case(u, o)
# 4. a narrower clip
u = torch.randn(30, 10, generator=g, dtype=torch.float64) * 8
o = torch.randn(30, 10, generator=g, dtype=torch.float64) * 3 + 1
case(u, o, clip_min=-5.0, clip_max=6.0)

logits = torch.randn(3, 7, 5, generator=g, dtype=torch.float64) * 3
labels = torch.randint(0, 5, (7,), generator=g)
marg = torch.stack([ev.get_margin(torch.nn.Identity(), logits[m], labels) for m in range(3)])

out = Path(__file__).resolve().parents[2] / "tests" / "data" / "klom_golden.pt"
torch.save(dict(cases=cases, logits=logits, labels=labels, margins=marg), out)
print("wrote", out, [c["result"] for c in cases])
