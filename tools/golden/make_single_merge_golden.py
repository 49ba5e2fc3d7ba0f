"""Golden data for "A Single Merging Suffices": the authors' communication schedule and mixing matrices.

Repository: github.com/Raiden-Zhu/ICLR-2026-Grokking-in-Decentralized-Learning, commit printed into the
file (6a5c139 when made). Their files are not part of this repository: point REPO at a git directory of
theirs and run from the root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_single_merge_golden.py

Reads ``core/communication.py`` and ``core/gossip_matrix.py`` at HEAD with ``git show`` and runs, unchanged,
their ``compute_r`` (taken out with ``ast``) on a grid of steps for every schedule, and their
``_build_gossip_rows`` (the whole module executed, its imports of numpy only) for the deterministic
topologies (ring, left, complete, exponential, localtraining) at 1 to 8 nodes, densified by summing repeated
indices (their sparse operator sums ``index_select`` rows, so a repeated neighbour counts twice). Writes
tests/data/single_merge_golden.pt.
"""
import ast
import os
import subprocess

import numpy as np
import torch

here = os.path.dirname(os.path.abspath(__file__))


def show(path):
    return subprocess.run(["git", "-C", os.environ["REPO"], "show", f"HEAD:{path}"], check=True,
                          capture_output=True, text=True).stdout


commit = subprocess.run(["git", "-C", os.environ["REPO"], "rev-parse", "HEAD"], check=True, capture_output=True,
                        text=True).stdout.strip()
comm = ast.parse(show("core/communication.py"))
ns = {"np": np}
fn = next(n for n in comm.body if isinstance(n, ast.FunctionDef) and n.name == "compute_r")
exec(compile(ast.Module(body=[fn], type_ignores=[]), "communication.py", "exec"), ns)
gm_ns = {"__name__": "gossip_matrix"}
exec(compile(show("core/gossip_matrix.py"), "gossip_matrix.py", "exec"), gm_ns)

schedules = []
for sched in ("fixed", "linear", "cosine", "slow_decrease", "slow_grow", "truncate", "truncate_v2"):
    for kw in (dict(r_start=0.2, r_end=31, point1=0.997, window_size=0.05),
               dict(r_start=4, r_end=0.5, point1=0.9, window_size=0.05),
               dict(r_start=0.2, r_end=3, point1=0.5, window_size=0.2)):
        steps = list(range(0, 1001, 10)) + [995, 996, 997, 998, 999, 1000, 1100]
        r = [float(ns["compute_r"](s, 0, 1000, kw["r_start"], kw["r_end"], kw["point1"], kw["window_size"],
                                   schedule=sched)) for s in steps]
        schedules.append(dict(schedule=sched, max_steps=1000, steps=steps, r=r, **kw))
matrices = []
for topo in ("ring", "left", "complete", "exponential", "localtraining"):
    for n in range(1, 9):
        rows, weights = gm_ns["_build_gossip_rows"](n, topology=topo)
        w = np.zeros((n, n))
        for i, (idx, wt) in enumerate(zip(rows, weights)):
            for j, v in zip(idx, wt):
                w[i, j] += float(v)
        matrices.append(dict(topology=topo, n=n, weights=torch.tensor(w)))
torch.save(dict(commit=commit, schedules=schedules, matrices=matrices),
           os.path.join(here, "..", "..", "tests", "data", "single_merge_golden.pt"))
print("wrote", len(schedules), "schedules and", len(matrices), "matrices from", commit)
