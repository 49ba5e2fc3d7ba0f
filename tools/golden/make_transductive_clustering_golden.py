"""Golden query labels of transductive clustering, made by running the authors' own functions.

Source: github.com/imtiazziko/SLK-few-shot at commit c2071eb98c860417c55abb60e49e01732be95cec (the code of
"Transductive Few-Shot Learning: Clustering is All You Need?", arXiv:2106.09516). Their ``src/SLK.py`` (``SLK``)
and ``src/bound_update.py`` are imported unchanged; ``create_affinity`` is taken from ``src/train_SLK.py`` by
parsing that file and executing only that function (the module imports their models and data loaders). Two
shims, neither touching their logic: ``numexpr`` (imported by ``bound_update.py``, used only by a function the
path below never calls) is stubbed when missing, and ``np.float`` (removed in numpy 1.24, used by
``create_affinity`` as the dtype of ``W``) is set to ``float``.

Each case follows their ``metric_class_type`` with ``--slk --mode kmeans``: support features ordered class by
class with ``shot`` each, prototypes their per-class means, the query shifted by ``eta = support mean - query
mean``, ``X = [support; query]``, ``W = create_affinity(X, knn)``, ``SLK(X, W, prototypes, shot_size, lmd,
method="kmeans", lap_bound=lmd > 0)`` (their run script's K-means row is ``--lap-bound False``). Also stored:
one call of their ``bound_update`` (unary, initial Y, W, lambda, 600 steps) and its ``Y``.

Run from the repository root with their ``src`` folder (e.g. ``git archive c2071eb src``) at SLK_REF:

    SLK_REF=/path/to/SLK-few-shot/src PYTHONPATH=src .venv/bin/python tools/golden/make_transductive_clustering_golden.py

Needs numpy, scipy and scikit-learn (their imports). Writes tests/data/transductive_clustering_golden.pt.
"""
import ast
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch
from scipy import sparse
from sklearn.neighbors import NearestNeighbors

REF = Path(os.environ["SLK_REF"])
sys.path.insert(0, str(REF))
if "numexpr" not in sys.modules:
    try:
        import numexpr  # noqa: F401
    except ImportError:
        sys.modules["numexpr"] = types.ModuleType("numexpr")
np.float = float  # their create_affinity passes dtype=np.float
import bound_update as their_bound  # noqa: E402
from SLK import SLK as their_slk  # noqa: E402

tree = ast.parse((REF / "train_SLK.py").read_text())
body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "create_affinity"]
assert len(body) == 1, "their train_SLK.py changed"
theirs = dict(np=np, sparse=sparse, NearestNeighbors=NearestNeighbors)
exec(compile(ast.Module(body=body, type_ignores=[]), str(REF / "train_SLK.py"), "exec"), theirs)
create_affinity = theirs["create_affinity"]


def episode(seed, way, shot, n_query, dim, spread):
    gen = np.random.default_rng(seed)
    centres = gen.normal(size=(way, dim)) * spread
    support = np.repeat(centres, shot, 0) + gen.normal(size=(way * shot, dim))
    q_labels = np.repeat(np.arange(way), n_query)
    query = centres[q_labels] + gen.normal(size=(way * n_query, dim)) + 0.5 * gen.normal(size=dim)
    return support, query, q_labels


SPECS = [  # seed, way, shot, n_query, dim, spread, lmd, knn
    (0, 5, 1, 15, 8, 1.2, 0.5, 3),
    (1, 5, 5, 15, 8, 1.2, 0.5, 3),
    (2, 5, 1, 15, 8, 1.2, 0.0, 3),
    (3, 5, 5, 15, 8, 1.2, 0.0, 3),
    (4, 3, 1, 10, 4, 1.0, 1.0, 5),
    (5, 4, 5, 12, 16, 1.5, 0.7, 3),
    (6, 5, 1, 15, 8, 1.0, 0.3, 4),
]

if __name__ == "__main__":
    cases = []
    for seed, way, shot, n_query, dim, spread, lmd, knn in SPECS:
        support, query, q_labels = episode(seed, way, shot, n_query, dim, spread)
        protos = support.reshape(way, shot, dim).mean(1)
        eta = support.mean(0) - query.mean(0)
        x = np.concatenate([support, query + eta[None]], 0)
        w = create_affinity(x, knn)
        _, labels = their_slk(x, w, protos.copy(), [shot] * way, lmd, method="kmeans", lap_bound=lmd > 0)
        cases.append(dict(support=torch.from_numpy(support), support_labels=torch.arange(way).repeat_interleave(shot),
                          query=torch.from_numpy(query), query_true=torch.from_numpy(q_labels), lam=lmd, knn=knn,
                          labels=torch.from_numpy(np.asarray(labels)).long()))
        print(seed, way, shot, lmd, knn, "their accuracy", (labels == q_labels).mean())
    # one bound update on its own
    support, query, _ = episode(7, 4, 2, 8, 6, 1.0)
    x = np.concatenate([support, query], 0)
    w = create_affinity(x, 3)
    c = support.reshape(4, 2, 6).mean(1)
    unary = ((x[:, None] - c[None]) ** 2).sum(-1)
    y0 = their_bound.normalize(-unary)
    y0[:8] = 0
    y0[np.arange(8), np.repeat(np.arange(4), 2)] = 1
    _, _, y = their_bound.bound_update(unary, y0.copy(), x, w, 0.8, 600, False)
    bound = dict(x=torch.from_numpy(x), unary=torch.from_numpy(unary), y0=torch.from_numpy(y0), w=torch.from_numpy(w.toarray()),
                 lam=0.8, y=torch.from_numpy(y))
    out = Path(__file__).parents[2] / "tests" / "data" / "transductive_clustering_golden.pt"
    torch.save(dict(cases=cases, bound=bound), out)
    print("wrote", out, out.stat().st_size, "bytes")
