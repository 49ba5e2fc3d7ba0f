"""Golden data for the NTK diagnostics (seed 143), made by running neural-tangents (CPU jax, float64).

The paper (Jacot et al., arXiv:1806.07572) has no code of its authors; the reference is Google's
neural-tangents (github.com/google/neural-tangents), the library PyTorch's NTK tutorial points to, release
neural-tangents==0.6.5 from PyPI. It does not import under jax 0.10.2 (``jax.core.Jaxpr`` is gone), so it ran
under jax[cpu]==0.4.30, and its unused TF bridge's ``tf2jax`` is stood in for by an empty module. Its ``stax.Dense(..., W_std=1, b_std=beta,
parameterization="ntk")`` is the paper's layer (N(0, 1) parameters, weights over sqrt(fan_in), bias times beta)
and ``stax.Relu()`` its activation. Made with ``python3 -m venv /tmp/ntk-venv; /tmp/ntk-venv/bin/pip install
"jax[cpu]==0.10.2" neural-tangents; /tmp/ntk-venv/bin/pip install "jax[cpu]==0.4.30"``; then, from the repository root:

    JAX_PYTHON=/tmp/ntk-venv/bin/python .venv/bin/python tools/golden/make_ntk_golden.py

Writes tests/data/ntk_golden.pt:
- ``limit``: for 8 points on the unit circle (the paper's Fig. 1 setting) and for two random batches in R^3
  (5 and 4 points), the infinite-width ``kernel_fn(x1, x2, ("ntk", "nngp"))`` of a ReLU network of depth L
  (L Dense layers, ReLU between) for (L, beta) in (1, 0.1), (2, 0.1), (3, 0.1), (4, 0.1), (3, 0.0), (3, 1.0);
- ``empirical``: a width-[3, 8, 8, 2] ReLU network with parameters drawn here (numpy, seed 0), and its
  finite-width NTK from ``nt.empirical_ntk_fn(apply_fn, trace_axes=())`` [N, M, O, O] on the random batches
  (both of its implementations, Jacobian contraction and NTK-vector products).
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_code import run_json  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "ntk_golden.pt")
CONFIGS = [(1, 0.1), (2, 0.1), (3, 0.1), (4, 0.1), (3, 0.0), (3, 1.0)]
WIDTHS = [3, 8, 8, 2]

RUNNER = r'''
import json, sys, types
import numpy as onp
# neural-tangents' experimental TF bridge imports tf2jax, whose releases that install beside neural-tangents 0.6.5
# need a newer jax; it is not used here, so it is stood in for by an empty module
sys.modules.setdefault("tf2jax", types.ModuleType("tf2jax"))
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import neural_tangents as nt
from neural_tangents import stax
cases = json.load(open(sys.argv[2]))

def net(depth, beta, width=512, out=1):
    layers = []
    for _ in range(depth - 1):
        layers += [stax.Dense(width, W_std=1.0, b_std=beta, parameterization="ntk"), stax.Relu()]
    layers += [stax.Dense(out, W_std=1.0, b_std=beta, parameterization="ntk")]
    return stax.serial(*layers)

res = {"limit": [], "versions": {"jax": jax.__version__, "neural_tangents": getattr(nt, "__version__", "?")}}
for name, (a, b) in cases["inputs"].items():
    x1, x2 = jnp.asarray(a, dtype=jnp.float64), jnp.asarray(b, dtype=jnp.float64)
    for depth, beta in cases["configs"]:
        _, _, kernel_fn = net(depth, beta)
        k = kernel_fn(x1, x2, ("ntk", "nngp"))
        res["limit"].append({"inputs": name, "depth": depth, "beta": beta,
                             "ntk": onp.asarray(k.ntk).tolist(), "nngp": onp.asarray(k.nngp).tolist()})

# the finite network: their apply_fn with our parameters ((W [in, out], b [out]) per Dense, as stax stores them)
widths, beta = cases["widths"], cases["beta"]
layers = []
for i, w in enumerate(widths[1:]):
    layers.append(stax.Dense(w, W_std=1.0, b_std=beta, parameterization="ntk"))
    if i < len(widths) - 2:
        layers.append(stax.Relu())
_, apply_fn, _ = stax.serial(*layers)
params = []
for W, b in cases["params"]:
    params += [(jnp.asarray(W, dtype=jnp.float64), jnp.asarray(b, dtype=jnp.float64))]
    params += [()]
params = params[:-1]
a, b = cases["inputs"]["random"]
x1, x2 = jnp.asarray(a, dtype=jnp.float64), jnp.asarray(b, dtype=jnp.float64)
emp = {}
for impl in ("JACOBIAN_CONTRACTION", "NTK_VECTOR_PRODUCTS"):
    fn = nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0, implementation=getattr(nt.NtkImplementation, impl))
    emp[impl] = onp.asarray(fn(x1, x2, params)).tolist()
res["empirical"] = {"out": onp.asarray(apply_fn(params, x1)).tolist(), **emp}
json.dump(res, open(sys.argv[3], "w"))
'''


def main() -> int:
    python = os.environ.get("JAX_PYTHON")
    if not python:
        print("set JAX_PYTHON to a Python with jax[cpu]==0.10.2 and neural-tangents (see the docstring)")
        return 2
    rng = np.random.default_rng(0)
    angles = np.linspace(0.0, 2 * np.pi, 9)[:-1]
    circle = np.stack([np.cos(angles), np.sin(angles)], 1)
    rand1, rand2 = rng.standard_normal((5, 3)), rng.standard_normal((4, 3))
    params = [(rng.standard_normal((a, b)), rng.standard_normal(b)) for a, b in zip(WIDTHS[:-1], WIDTHS[1:])]
    cases = {"inputs": {"circle": [circle.tolist(), circle.tolist()], "random": [rand1.tolist(), rand2.tolist()]},
             "configs": CONFIGS, "widths": WIDTHS, "beta": 0.1,
             "params": [[W.tolist(), b.tolist()] for W, b in params]}
    out = run_json(python, RUNNER, "", cases)
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    data = {
        "inputs": {k: (t(a), t(b)) for k, (a, b) in cases["inputs"].items()},
        "limit": [{"inputs": r["inputs"], "depth": r["depth"], "beta": r["beta"], "ntk": t(r["ntk"]),
                   "nngp": t(r["nngp"])} for r in out["limit"]],
        "empirical": {"widths": WIDTHS, "beta": 0.1,
                      "params": [(t(W).T.contiguous(), t(b)) for W, b in cases["params"]],  # ours: weight [out, in]
                      "out": t(out["empirical"]["out"]),
                      "jacobian": t(out["empirical"]["JACOBIAN_CONTRACTION"]),
                      "ntk_vp": t(out["empirical"]["NTK_VECTOR_PRODUCTS"])},
        "versions": out["versions"],
    }
    torch.save(data, OUT)
    print("wrote", os.path.normpath(OUT), "with", len(data["limit"]), "limit kernels;", out["versions"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
