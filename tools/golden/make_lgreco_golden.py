"""Golden data for L-GreCo's rank search, made by running the authors' dynamic program.

Repository: github.com/LGrCo/L-GreCo, commit 13942f0d2c2465a48628a33634931cb907c79d66 ("MlSys'24 version").
Their files are not part of this repository: point REPO at a git directory of theirs (a clone, or the mirror
the search tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_lgreco_golden.py

The search lives inside their hook function (``ResNet18/hooks/lgreco_hook.py``, in ``powerSGD_hook``), so
this script reads that file at the commit with ``git show`` and executes, verbatim, two slices of it in a
namespace holding a stand-in ``state``: the loop that builds ``compressed_sizes`` (from "# Build the Error
Table" to "## Discretize the Error Table", with ``error_method`` set to neither 'SVD' nor 'Power' so no
CUDA error measurement runs), then, with ``compression_errors`` set to a seeded table, the discretization,
the DP and the traceback (from "## Discretize the Error Table" to the ``print`` of the result). Cases:
random tables for several layer shapes, default ranks, alphas and error scales, including tables where some
layers are smaller than the largest candidate rank. Writes tests/data/lgreco_golden.pt (a list of dicts:
shapes, matrix_approximation_rank, alpha, beta, gamma, errors, sizes, ranks).
"""
import os
import subprocess
import types

import numpy as np
import torch

COMMIT = "13942f0d2c2465a48628a33634931cb907c79d66"
here = os.path.dirname(os.path.abspath(__file__))
src = subprocess.run(["git", "-C", os.environ["REPO"], "show", f"{COMMIT}:ResNet18/hooks/lgreco_hook.py"],
                     check=True, capture_output=True, text=True).stdout
lines = src.splitlines()


def _slice(start_marker, end_marker):
    i = next(k for k, ln in enumerate(lines) if start_marker in ln)
    j = next(k for k, ln in enumerate(lines) if k > i and end_marker in ln)
    block = lines[i:j]
    indent = min(len(ln) - len(ln.lstrip()) for ln in block if ln.strip())
    return "\n".join(ln[indent:] for ln in block)


SIZES_CODE = _slice("# Build the Error Table", "## Discretize the Error Table")
DP_CODE = _slice("## Discretize the Error Table", 'print("optimal compression parameters')


def their_ranks(shapes, rank, errors_fn, alpha=1.0, beta=2.0, gamma=0.5):
    state = types.SimpleNamespace(matrix_approximation_rank=rank, alpha=alpha, error_method="none",
                                  max_rank=int(np.ceil(rank * beta)), min_rank=int(np.floor(rank * gamma)))
    state.rank_range = state.max_rank - state.min_rank + 1
    state.opt_compress_param = [[rank] * len(shapes)]
    ns = {"np": np, "torch": torch, "state": state, "DPBUCKETS": 10000,
          "tensors_to_adjust": [torch.zeros(n, m) for n, m in shapes]}
    exec(SIZES_CODE, ns)
    ns["compression_errors"] = errors_fn(ns["compression_errors"].shape)
    errors = ns["compression_errors"].copy()
    exec(DP_CODE, ns)
    return dict(shapes=shapes, matrix_approximation_rank=rank, alpha=alpha, beta=beta, gamma=gamma,
                errors=errors, sizes=ns["compressed_sizes"].copy(), ranks=list(map(int, state.opt_compress_param[0])))


rng = np.random.RandomState(0)


def decreasing(scale):
    def make(shape):  # errors fall with the rank, as a real table's do
        steps = rng.uniform(0.05, 1.0, size=shape) * scale
        return np.flip(np.cumsum(steps[:, ::-1], axis=1), axis=1).copy()
    return make


cases = []
for shapes, rank, alpha, scale in [
    ([(64, 32), (32, 16), (128, 64)], 4, 1.0, 1.0),
    ([(64, 32), (32, 16), (128, 64), (16, 144), (256, 8)], 4, 1.0, 3.0),
    ([(20, 30), (40, 10), (12, 12), (50, 50)], 2, 1.0, 0.01),
    ([(20, 30), (40, 10), (12, 12), (50, 50)], 2, 1.5, 0.01),
    ([(100, 90), (6, 300), (33, 17), (64, 64), (10, 500), (80, 3)], 4, 0.8, 10.0),
    ([(9, 9)] * 8, 2, 1.0, 1.0),
    ([(300, 200), (5, 7), (60, 70)], 8, 1.0, 0.5),
]:
    cases.append(their_ranks(shapes, rank, decreasing(scale), alpha=alpha))
torch.save(cases, os.path.join(here, "..", "..", "tests", "data", "lgreco_golden.pt"))
for c in cases:
    print(c["shapes"], c["matrix_approximation_rank"], c["alpha"], "->", c["ranks"])
