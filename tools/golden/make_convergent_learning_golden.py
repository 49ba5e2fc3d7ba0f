"""Golden data for the one-to-one unit matching of "Convergent Learning", made by running the authors' code.

Repository: github.com/yixuanli/convergent_learning (YixuanLi/convergent_learning), commit
2ab72f873c47b37c06f286f97ea47d4bd806eb6a ("upload pycache"). Their files are not part of this repository:
point REPO at a git directory of theirs (a clone, or the mirror the search tool's ``fetch`` brings) and run
from the repository root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_convergent_learning_golden.py

It reads ``experiments/match_unit.py`` at that commit with ``git show`` into a temporary folder and imports
it, with three shims for its Python 2 / 2015 environment that do not touch the arithmetic: ``xrange`` is
``range``; ``pycache`` (their memoizing decorator, which pickles with ``cPickle``) is a stub whose
``memoize_no_func_body`` returns the function; and ``networkx.max_weight_matching``, which returned a
dict ``{node: mate}`` in the networkx of the time and returns a set of pairs in networkx 3, is wrapped to
return that dict. It then runs their ``_max_match_order`` (max-weight, max-cardinality bipartite matching
of the correlation matrix) on the correlation matrices of seeded activations of two random ReLU layers (one case with two
near-duplicate units, where the one-to-one constraint binds)
(``numpy.corrcoef``; their correlations came from Caffe, which we cannot run), and stores the activations,
the correlations and their matching order. Writes tests/data/convergent_learning_golden.pt.
"""
import builtins
import os
import subprocess
import sys
import tempfile
import types

import networkx
import numpy as np
import torch

COMMIT = "2ab72f873c47b37c06f286f97ea47d4bd806eb6a"
here = os.path.dirname(os.path.abspath(__file__))
repo = os.environ["REPO"]
tmp = tempfile.mkdtemp()
src = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:experiments/match_unit.py"], check=True,
                     capture_output=True, text=True).stdout
with open(os.path.join(tmp, "match_unit.py"), "w") as f:
    f.write(src)
builtins.xrange = range
sys.modules["pycache"] = types.SimpleNamespace(memoize_no_func_body=lambda f: f)
nx_shim = types.ModuleType("networkx")
nx_shim.Graph = networkx.Graph


def max_weight_matching(graph, maxcardinality=False):
    mate = {}
    for u, v in networkx.max_weight_matching(graph, maxcardinality=maxcardinality):
        mate[u], mate[v] = v, u
    return mate


nx_shim.max_weight_matching = max_weight_matching
sys.modules["networkx"] = nx_shim
sys.path.insert(0, tmp)
import match_unit as their  # noqa: E402

gen = torch.Generator().manual_seed(0)
cases = []
for n, units, noise in ((200, 6, 0.5), (300, 12, 1.0), (150, 9, 2.0)):
    # net b's units: a shuffled, noisy copy of net a's pre-activations, so the best matching is non-trivial
    x = torch.randn(n, units, generator=gen, dtype=torch.float64)
    a = torch.relu(x + 0.3)
    perm = torch.randperm(units, generator=gen)
    b = torch.relu(x[:, perm] + noise * torch.randn(n, units, generator=gen, dtype=torch.float64))
    if units == 9:  # two near-duplicate units in a: semi-matching sends both to one unit of b, bipartite cannot
        a[:, 1] = a[:, 0] + 0.05 * torch.rand(n, generator=gen, dtype=torch.float64)
    corr = np.corrcoef(a.numpy().T, b.numpy().T)[:units, units:]
    order = their._max_match_order(corr)
    cases.append(dict(acts_a=a, acts_b=b, corr=torch.from_numpy(corr.copy()), order=torch.as_tensor(order)))
out = dict(reference=f"yixuanli/convergent_learning@{COMMIT} experiments/match_unit.py "
                     f"(networkx {networkx.__version__})", cases=cases)
path = os.path.join(here, "..", "..", "tests", "data", "convergent_learning_golden.pt")
torch.save(out, path)
print([c["order"].tolist() for c in cases])
