"""Golden data for the causal PINN weights and loss, made by running the authors' JAX code.

Repository: github.com/PredictiveIntelligenceLab/CausalPINNs. Files: ``Allen_Cahn/AC.ipynb`` at commit
9c13a4c7 (its code cells 0-2: the periodic MLP, the ``PINN`` class with ``residuals_and_weights``, ``loss`` and
the Adam ``step``) and ``KS/Causal_PINNs_KS.py`` at commit 2df3bf6b (its ``PINN.residuals_and_weights``, the
variant with the initial-condition loss L_0 inside the weights). Point REPO at a git directory of theirs (a
clone, or the mirror the search tool's ``fetch`` brings) and JAX_PYTHON at a Python with CPU jax, scipy, tqdm
and torch (their notebook imports ``torch.utils.data``); made with ``python3 -m venv /tmp/jaxvenv;
/tmp/jaxvenv/bin/pip install "jax[cpu]==0.10.2" scipy tqdm matplotlib torch==2.13.0``. Then, from the repository root:

    REPO=/path/to/CausalPINNs JAX_PYTHON=/tmp/jaxvenv/bin/python .venv/bin/python tools/golden/make_causal_pinn_golden.py

Allen-Cahn: the notebook's cells 1-2 are executed verbatim (float64, ``jax_enable_x64``) after cell 0's imports,
with the notebook's globals ``nu`` (1e-4) and ``x_star`` set to a small grid (16 points of [-1, 1)) and the
initial state u0 = x^2 cos(pi x) on it; the model is small (M = 2 Fourier modes, layers [6, 16, 16, 1],
n_t = 8, n_x = 16, t in [0, 1], key 1234). For each eps (their ``tol``) in 100, 1, 0 and 1e4 it records at
initialisation and after 20 of their Adam steps (``model.step``): the parameters, L_t, the weights W, the loss
and its gradient for every parameter; for eps = 100 also the parameters after each of the first 5 steps.
KS: ``PINN.residuals_and_weights`` of their KS script is taken from the file (the class only; the script's top
level trains for hours) and called on a stand-in ``self`` whose ``r_pred_fn`` returns fixed residuals and whose
``loss_ics`` returns a fixed number, for 3 settings; it records L_0, L_t and W.
"""
import ast
import json
import os
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_code import run_json  # noqa: E402

AC_COMMIT = "9c13a4c7c040bc2c0e32c39ec6b1f953f932268f"
KS_COMMIT = "2df3bf6b4f3a8a87dffd4f9144b92a9ac4977ebc"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "causal_pinn_golden.pt")

RUNNER = r'''
import json, sys
import numpy as onp
import jax
jax.config.update("jax_enable_x64", True)
src = json.load(open(sys.argv[1]))
cases = json.load(open(sys.argv[2]))
ns = {}
exec(src["cell0"], ns)
ns["nu"] = cases["nu"]
ns["x_star"] = onp.asarray(cases["x_star"], dtype=onp.float64)
exec(src["cell1"], ns)
exec(src["cell2"], ns)
np = ns["np"]
PINN = ns["PINN"]

def tolist(tree):
    return [[onp.asarray(W).tolist(), onp.asarray(b).tolist()] for W, b in tree]

def point(model, tol):
    params = model.get_params(model.opt_state)
    L_t, W = model.residuals_and_weights(params, tol)
    model.tol = tol
    loss = model.loss(params)
    g = jax.grad(model.loss)(params)
    return {"params": tolist(params), "L_t": onp.asarray(L_t).tolist(), "W": onp.asarray(W).tolist(),
            "loss": float(loss), "grads": tolist(g)}

out = {"ac": []}
state0 = onp.asarray(cases["state0"], dtype=onp.float64).reshape(-1, 1)
for tol in cases["tols"]:
    model = PINN(jax.random.PRNGKey(1234), cases["layers"], cases["M"], state0, 0.0, 1.0, cases["n_t"],
                 cases["n_x"], tol)
    rec = {"tol": tol, "init": point(model, tol), "traj": []}
    for it in range(cases["steps"]):
        model.opt_state = model.step(it, model.opt_state)
        if tol == cases["traj_tol"] and it < 5:
            rec["traj"].append(tolist(model.get_params(model.opt_state)))
    rec["after"] = point(model, tol)
    out["ac"].append(rec)

ks_ns = {}
exec(src["ks_imports"], ks_ns)
exec(src["ks_class"], ks_ns)
KSPINN = ks_ns["PINN"]
out["ks"] = []
for c in cases["ks"]:
    class Stand:
        pass
    s = Stand()
    n_t = len(c["r"])
    s.M = np.triu(np.ones((n_t, n_t)), k=1).T
    r = np.asarray(c["r"])
    s.r_pred_fn = lambda params, t, x, r=r: r
    s.loss_ics = lambda params, v=c["loss_ics"]: np.asarray(v)
    L_0, L_t, W = KSPINN.residuals_and_weights(s, None, (None, None), c["tol"])
    out["ks"].append({"L_0": float(L_0), "L_t": onp.asarray(L_t).tolist(), "W": onp.asarray(W).tolist()})
json.dump(out, open(sys.argv[3], "w"))
'''

KS_IMPORTS = """
import jax.numpy as np
from jax import random, grad, vmap, jit, lax
from functools import partial
"""


def _show(repo: str, commit: str, path: str) -> str:
    return subprocess.run(["git", "-C", repo, "show", f"{commit}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def sources(repo: str) -> dict:
    nb = json.loads(_show(repo, AC_COMMIT, "Allen_Cahn/AC.ipynb"))
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    ks = _show(repo, KS_COMMIT, "KS/Causal_PINNs_KS.py")
    node = next(n for n in ast.parse(ks).body if isinstance(n, ast.ClassDef) and n.name == "PINN")
    return {"cell0": code[0], "cell1": code[1], "cell2": code[2], "ks_imports": KS_IMPORTS,
            "ks_class": ast.get_source_segment(ks, node)}


def cases() -> dict:
    x = np.linspace(-1.0, 1.0, 17)[:-1]
    g = np.random.default_rng(120)
    ks = [{"r": (g.standard_normal((6, 5)) * s).tolist(), "loss_ics": li, "tol": tol}
          for s, li, tol in ((0.1, 1e-4, 1.0), (1.0, 2e-3, 0.1), (0.05, 0.0, 100.0))]
    return {"nu": 1e-4, "x_star": x.tolist(), "state0": (x ** 2 * np.cos(np.pi * x)).tolist(), "M": 2,
            "layers": [6, 16, 16, 1], "n_t": 8, "n_x": 16, "tols": [100.0, 1.0, 0.0, 1e4], "steps": 20,
            "traj_tol": 100.0, "ks": ks}


def _tensors(tree):
    return [[torch.tensor(W, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)] for W, b in tree]


def main() -> None:
    repo, python = os.environ["REPO"], os.environ["JAX_PYTHON"]
    src, cs = sources(repo), cases()
    import tempfile
    tmp = tempfile.mkdtemp()
    src_path = os.path.join(tmp, "sources.json")
    with open(src_path, "w") as f:
        json.dump(src, f)
    out = run_json(python, RUNNER, src_path, cs)

    def point(p):
        return {"params": _tensors(p["params"]), "L_t": torch.tensor(p["L_t"], dtype=torch.float64),
                "W": torch.tensor(p["W"], dtype=torch.float64), "loss": p["loss"], "grads": _tensors(p["grads"])}

    golden = {
        "config": {k: cs[k] for k in ("nu", "M", "layers", "n_t", "n_x", "steps")},
        "x_star": torch.tensor(cs["x_star"], dtype=torch.float64),
        "state0": torch.tensor(cs["state0"], dtype=torch.float64),
        "ac": [{"tol": r["tol"], "init": point(r["init"]), "after": point(r["after"]),
                "traj": [_tensors(t) for t in r["traj"]]} for r in out["ac"]],
        "ks": [{"r": torch.tensor(c["r"], dtype=torch.float64), "loss_ics": c["loss_ics"], "tol": c["tol"],
                "L_0": o["L_0"], "L_t": torch.tensor(o["L_t"], dtype=torch.float64),
                "W": torch.tensor(o["W"], dtype=torch.float64)} for c, o in zip(cs["ks"], out["ks"])],
    }
    torch.save(golden, OUT)
    print("wrote", os.path.normpath(OUT), os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
