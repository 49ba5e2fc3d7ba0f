"""Golden LAME affinities and adapted assignments, made by running the authors' own functions.

Source: github.com/fiveai/LAME at commit d2e5f63090bc1c8129bf7cbd781029a5955e1a67
(``src/adaptation/lame.py``). That module imports the rest of their package (``.non_adaptive``,
``.build``: a detectron-style registry, configs), so this script parses it and executes, unchanged,
only its classes ``AffinityMatrix``, ``kNN_affinity``, ``rbf_affinity``, ``linear_affinity`` and its
functions ``laplacian_optimization`` and ``entropy_energy``. Each case then follows their
``LAME.run_step`` statement by statement: unary ``-log(probas + 1e-10)``, ``F.normalize`` of the
features, the affinity, ``(W + W^T) / 2`` when ``force_symmetry``, ``laplacian_optimization(unary,
kernel, bound_lambda, max_steps)``. Their ``kNN`` affinity builds ``W`` with ``torch.zeros(N, N)``
(the default dtype), so the default dtype is float64. The step at which their loop converged is read
from their ``logger.info`` message (stored as -1 when it ran all ``max_steps``).

Run from the repository root with their checkout (e.g. ``git archive d2e5f63``) at LAME_REF:

    LAME_REF=/path/to/LAME PYTHONPATH=src .venv/bin/python tools/golden/make_lame_golden.py

Writes tests/data/lame_golden.pt: a list of cases (float64, seeded), each with its arguments
(affinity, knn, force_symmetry, bound_lambda, max_steps), ``probs`` [N, K], ``feats`` [N, d], their
kernel on the normalized features (before symmetrizing; omitted for N = 64 to keep the file small),
their ``Y`` and the convergence step.
"""
import ast
import logging
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
REF = Path(os.environ["LAME_REF"]) / "src" / "adaptation" / "lame.py"
tree = ast.parse(REF.read_text())
KEEP = {"AffinityMatrix", "kNN_affinity", "rbf_affinity", "linear_affinity", "laplacian_optimization",
        "entropy_energy"}
body = [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name in KEEP]
assert {n.name for n in body} == KEEP, "their lame.py changed"
theirs = dict(torch=torch, F=F, logger=logging.getLogger("lame_ref"))
exec(compile(ast.Module(body=body, type_ignores=[]), str(REF), "exec"), theirs)


class Steps(logging.Handler):  # their loop logs 'Converged in {i} iterations'
    def __init__(self):
        super().__init__()
        self.step = None

    def emit(self, record):
        self.step = int(re.search(r"\d+", record.getMessage()).group())


steps = Steps()
theirs["logger"].addHandler(steps)
theirs["logger"].setLevel(logging.INFO)
theirs["logger"].propagate = False


def run_step(probas, feats, affinity, knn, force_symmetry, bound_lambda, max_steps):
    aff = theirs[f"{'kNN' if affinity == 'knn' else affinity}_affinity"](sigma=1.0, knn=knn)
    unary = -torch.log(probas + 1e-10)
    kernel = aff(F.normalize(feats, p=2, dim=-1))
    sym = 1 / 2 * (kernel + kernel.t()) if force_symmetry else kernel
    steps.step = None
    y = theirs["laplacian_optimization"](unary, sym, bound_lambda=bound_lambda, max_steps=max_steps)
    return kernel, y, steps.step


def batch(gen, n, k, d, clusters, temp):
    """Features around a few centres; logits that mostly agree with the centres, some flipped."""
    centres = torch.randn(clusters, d, generator=gen) * 2
    lab = torch.randint(0, clusters, (n,), generator=gen)
    feats = centres[lab] + torch.randn(n, d, generator=gen)
    logits = torch.randn(n, k, generator=gen) * temp
    logits[torch.arange(n), lab % k] += 2.0
    return logits.softmax(-1), feats


SPECS = [  # n, k, d, affinity, knn, force_symmetry, bound_lambda, max_steps
    (16, 3, 4, "rbf", 5, False, 1.0, 100),
    (16, 3, 4, "knn", 5, False, 1.0, 100),
    (16, 3, 4, "linear", 5, False, 1.0, 100),
    (24, 10, 8, "rbf", 5, True, 1.0, 100),
    (24, 10, 8, "knn", 3, True, 1.0, 100),
    (24, 10, 8, "linear", 5, True, 0.5, 100),
    (32, 5, 16, "rbf", 2, False, 1.0, 100),
    (32, 5, 16, "knn", 1, False, 2.0, 100),
    (32, 5, 16, "rbf", 10, False, 1.0, 3),
    (32, 5, 16, "knn", 5, False, 1.0, 2),
    (6, 4, 3, "rbf", 10, False, 1.0, 100),     # knn > N: their min(knn, N)
    (6, 4, 3, "knn", 10, True, 1.0, 100),      # knn >= N: every other point
    (2, 3, 3, "rbf", 5, False, 1.0, 100),
    (1, 3, 3, "knn", 5, False, 1.0, 100),      # one point: no neighbour, W = 0
    (20, 4, 6, "rbf", 5, False, 0.0, 100),     # lambda 0: Y = probs
    (20, 4, 6, "rbf", 5, False, 1.0, 0),       # no step: Y = softmax(log(p + 1e-10))
    (64, 10, 16, "rbf", 5, False, 1.0, 100),
    (64, 10, 16, "knn", 5, True, 1.0, 100),
]

gen = torch.Generator().manual_seed(224)
cases = []
for n, k, d, affinity, knn, sym, lam, max_steps in SPECS:
    probs, feats = batch(gen, n, k, d, clusters=min(3, k), temp=1.5)
    kernel, y, conv = run_step(probs, feats, affinity, knn, sym, lam, max_steps)
    case = dict(affinity=affinity, knn=knn, force_symmetry=sym, bound_lambda=lam, max_steps=max_steps,
                probs=probs, feats=feats, Y=y, converged_at=-1 if conv is None else conv)
    if n < 64:
        case["kernel"] = kernel
    cases.append(case)
    print(f"N={n:3d} K={k:2d} {affinity:6s} knn={knn:2d} sym={sym!s:5s} lam={lam} steps={max_steps:3d} "
          f"converged_at={conv} changed={(y.argmax(-1) != probs.argmax(-1)).sum().item()}")
out = Path(__file__).resolve().parents[2] / "tests" / "data" / "lame_golden.pt"
torch.save(cases, out)
print("wrote", out, out.stat().st_size, "bytes")
