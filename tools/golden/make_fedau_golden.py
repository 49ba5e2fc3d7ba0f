"""Golden FedAU aggregation weights and global updates, made by running the authors' own round loop.

Source: github.com/IBM/fedau at commit 6e9cce9b2e568666b5c3e0fab8f092a539884d7b (``main.py``,
``-weighting adaptive``). Their weight estimation is not a function: it is the body of the training loop
in ``main.py``. This script parses their ``main.py``, takes from its ``while True:`` loop the per-client
``for n in range(n_nodes):`` statement and the aggregation statements after it (``if weighting_method
!= 'mifa': ...`` and ``w_global += ...``), and executes them unchanged each round, with stand-ins for what
they touch outside the estimation: ``worker_samplers[n].sample()`` replays a generated Bernoulli
participation sequence, ``model.get_weight()`` returns ``w_global`` plus a generated update for that
client and round, and ``iters_per_round = 0`` skips their local SGD. ``save_agg_weight`` is on, so their
``agg_weight_each_node`` gives each participant's weight (their CSV file goes to a temporary directory).

Run from the repository root with their checkout (e.g. ``git archive`` of that commit) at FEDAU_REF:

    FEDAU_REF=/path/to/fedau PYTHONPATH=src .venv/bin/python tools/golden/make_fedau_golden.py

Writes tests/data/fedau_golden.pt: cases (cutoff K in 100000, 3, 1), each with the participation matrix
(rounds x clients), the client updates (rounds x clients x d, float64), their weights (NaN when absent),
and the global model after every round (step_size_global 1.0 and 0.5).
"""
import ast
import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

REF = Path(os.environ["FEDAU_REF"])
tree = ast.parse((REF / "main.py").read_text())
loop = next(n for n in ast.walk(tree) if isinstance(n, ast.While))
start = next(i for i, s in enumerate(loop.body) if isinstance(s, ast.For))
body = [s for s in loop.body[start:] if not (isinstance(s, ast.Assign) and
        any(isinstance(t, ast.Name) and t.id == "num_iter" for t in s.targets))]
body = [s for s in body if not isinstance(s, ast.If) or "save_checkpoint" not in ast.unparse(s.test)
        and "last_output" not in ast.unparse(s.test) and "max_iter" not in ast.unparse(s.test)]
ROUND = compile(ast.Module(body=body, type_ignores=[]), str(REF / "main.py"), "exec")
print(ast.unparse(ast.Module(body=body, type_ignores=[]))[:400], "...")


class Sampler:  # replays participation[t, n]
    def __init__(self, column, prob):
        self.column, self.t, self.participation_prob = column, -1, prob

    def sample(self):
        return bool(self.column[self.t])


class Model:  # their model.get_weight() returns the client's weights after local training
    def __init__(self):
        self.w = None
        self.model = type("M", (), {"train": lambda self: None})()

    def assign_weight(self, w):
        self.w = w.clone()

    def get_weight(self):
        return self.w + ns["_update"][ns["n"]]


def run(participation, updates, k_value, step_size_global):
    global ns
    rounds, n_nodes = participation.shape
    tmp = tempfile.mkdtemp()
    ns = dict(np=np, torch=torch, copy=copy, n_nodes=n_nodes, k_value=k_value, weighting_method="adaptive",
              iters_per_round=0, device=torch.device("cpu"), step_size_global=step_size_global,
              save_agg_weight=True, agg_weight_filename=f"{tmp}/w.csv", participation_count_filename=f"{tmp}/c.csv",
              not_participate_count_at_node=[0] * n_nodes, participate_intervals_at_node=[[] for _ in range(n_nodes)],
              worker_samplers=[Sampler(participation[:, n], 0.5) for n in range(n_nodes)],
              agg_weight_each_node=[None] * n_nodes, participation_count_each_node=[0] * n_nodes,
              model=Model(), w_global=torch.zeros(updates.shape[2], dtype=torch.float64), transform_train=None)
    weights, globals_ = np.full(participation.shape, np.nan), []
    for t in range(rounds):
        for s in ns["worker_samplers"]:
            s.t = t
        ns["_update"] = torch.as_tensor(updates[t])
        ns["agg_weight_each_node"] = [None] * n_nodes
        ns["accumulated"] = 0
        exec(ROUND, ns)
        for n in range(n_nodes):
            if participation[t, n]:
                w = ns["agg_weight_each_node"][n]
                weights[t, n] = 1.0 if w is None else w
        globals_.append(ns["w_global"].clone())
    return weights, torch.stack(globals_)


rng = np.random.default_rng(2306)
cases = []
for k_value, step in [(100000, 1.0), (3, 1.0), (1, 0.5)]:
    probs = np.array([0.9, 0.5, 0.3, 0.15, 0.05, 0.7])
    participation = rng.random((40, probs.size)) < probs
    participation[3] = False  # a round nobody joins
    updates = rng.standard_normal((40, probs.size, 5))
    weights, w_global = run(participation, updates, k_value, step)
    cases.append(dict(cutoff=k_value, server_lr=step, participation=torch.as_tensor(participation),
                      updates=torch.as_tensor(updates), weights=torch.as_tensor(weights), w_global=w_global))
out = Path(__file__).resolve().parents[2] / "tests" / "data" / "fedau_golden.pt"
torch.save(cases, out)
print("wrote", out, [(c["cutoff"], float(np.nanmax(c["weights"].numpy()))) for c in cases])
