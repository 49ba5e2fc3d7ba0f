"""Golden data for CO2's outer update, made by running the authors' method on generated tensors.

Repository: github.com/weigao266/fairscale-CO2 (linked from OpenNLPLab/CO2), commit
55aaca56ee57302a4d96fc730a5596fa562dac0f ("update README.md").
Their files are not part of this repository: point REPO at a git directory of theirs and run from the root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_co2_golden.py

The script reads ``fairscale/experimental/nn/data_parallel/gossip/co2.py`` at HEAD with ``git show``, takes
the methods ``_perform_local_optimization`` and ``_co2_clip`` of ``CO2DistributedDataParallel`` out with
``ast`` and runs them unchanged on a stand-in ``self`` (one shard holding every element, their non-sharded
layout) whose ``old_params`` and ``global_momentum_buffer`` are seeded flat tensors, with a stand-in
optimizer whose parameters hold the averaged parameters. Each case runs three outer steps in float64 with
new averaged parameters each time. Writes tests/data/co2_golden.pt: a list of dicts with the settings, the
initial anchor and momentum, the averages fed at each step, and the anchor, momentum and parameters after
each step.
"""
import ast
import os
import subprocess
import types

import torch

PATH = "fairscale/experimental/nn/data_parallel/gossip/co2.py"
here = os.path.dirname(os.path.abspath(__file__))
src = subprocess.run(["git", "-C", os.environ["REPO"], "show", f"HEAD:{PATH}"], check=True, capture_output=True,
                     text=True).stdout
commit = subprocess.run(["git", "-C", os.environ["REPO"], "rev-parse", "HEAD"], check=True, capture_output=True,
                        text=True).stdout.strip()
cls = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef) and n.name == "CO2DistributedDataParallel")
ns = {"torch": torch}
for fn in cls.body:
    if isinstance(fn, ast.FunctionDef) and fn.name in ("_perform_local_optimization", "_co2_clip"):
        fn.returns = None
        for a in fn.args.args:
            a.annotation = None
        exec(compile(ast.Module(body=[fn], type_ignores=[]), PATH, "exec"), ns)

CASES = [dict(outer_lr=1.0, outer_momentum=0.5, gap_penalty=1.0, clip=False),
         dict(outer_lr=0.7, outer_momentum=0.9, gap_penalty=2.0, clip=False),
         dict(outer_lr=1.2, outer_momentum=0.0, gap_penalty=1.5, clip=False),
         dict(outer_lr=1.0, outer_momentum=0.5, gap_penalty=1.0, clip=True, clip_threshold=0.05)]
shapes = [(3, 4), (5,), (2, 2, 2)]
out = []
g = torch.Generator().manual_seed(0)
for case in CASES:
    total = sum(torch.Size(s).numel() for s in shapes)
    anchor0 = torch.randn(total, generator=g, dtype=torch.float64)
    mom0 = 0.1 * torch.randn(total, generator=g, dtype=torch.float64)
    params = [torch.zeros(s, dtype=torch.float64) for s in shapes]
    self = types.SimpleNamespace(portion_start=0, portion_end=total, old_params=anchor0.clone(),
                                 global_momentum_buffer=mom0.clone(), outer_momentum=case["outer_momentum"],
                                 co2_gap_penalty=case["gap_penalty"], co2_clip=case["clip"],
                                 co2_clip_threshold=case.get("clip_threshold", 1.0), outer_lr=case["outer_lr"])
    self._co2_clip = types.MethodType(ns["_co2_clip"], self)
    opt = types.SimpleNamespace(param_groups=[{"params": params}])
    averages, anchors, moms, news = [], [], [], []
    for _ in range(3):
        avg = self.old_params + 0.2 * torch.randn(total, generator=g, dtype=torch.float64)
        offset = 0
        for p in params:
            p.copy_(avg[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        ns["_perform_local_optimization"](self, opt)
        averages.append(avg)
        anchors.append(self.old_params.clone())
        moms.append(self.global_momentum_buffer.clone())
        news.append(torch.cat([p.reshape(-1) for p in params]))
    out.append(dict(case, commit=commit, anchor0=anchor0, momentum0=mom0, averages=averages, anchors=anchors,
                    momenta=moms, params=news))
torch.save(out, os.path.join(here, "..", "..", "tests", "data", "co2_golden.pt"))
print("wrote", len(out), "cases from", commit)
