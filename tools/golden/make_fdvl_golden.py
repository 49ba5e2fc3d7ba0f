"""Golden data for f-DVL's value loss, made by running the authors' JAX code.

Repository: github.com/hari-sikchi/DVL, commit 918402875099b341d78a99241158913acd24452e ("DVL public release"),
file ``offline/critic.py``: ``chi_square_loss``, ``total_variation_loss``, ``reverse_kl_loss`` (their ``update_v``
takes ``loss(q - v, alpha=loss_temp, args).mean()``). Their file is not part of this repository: point REPO at
a git directory of theirs (a clone, or the mirror the search tool's ``fetch`` brings) and JAX_PYTHON at a Python
with CPU ``jax`` and ``jaxlib`` (made with ``python3 -m venv /tmp/rlmisc-venv; /tmp/rlmisc-venv/bin/pip install
jax jaxlib``; jax 0.10.2 was used), then run from the repository root:

    REPO=/path/to/DVL JAX_PYTHON=/tmp/rlmisc-venv/bin/python .venv/bin/python tools/golden/make_fdvl_golden.py

It writes ``offline/critic.py`` at that commit into a temporary folder, imports it under JAX_PYTHON with
``jax_enable_x64`` (float64) and a stub for their ``common`` module (flax model types the loss functions do
not use), and for each case evaluates the loss elementwise on ``diff = q - v``, its mean, and ``jax.grad`` of
the mean with respect to ``v``. This script then stores them with torch in tests/data/fdvl_golden.pt.
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_code import extract, run_json  # noqa: E402

COMMIT = "918402875099b341d78a99241158913acd24452e"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "fdvl_golden.pt")

RUNNER = r'''
import json, sys, types
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
stub = types.ModuleType("common")
for n in ("Batch", "InfoDict", "Model", "Params", "PRNGKey"):
    setattr(stub, n, object)
sys.modules["common"] = stub
sys.path.insert(0, sys.argv[1])
import critic
cases = json.load(open(sys.argv[2]))
out = {}
for c in cases:
    q = jnp.asarray(np.asarray(c["q"], dtype=np.float64))
    v = jnp.asarray(np.asarray(c["v"], dtype=np.float64))
    args = types.SimpleNamespace(max_clip=c["max_clip"])
    fn = {"chi2": critic.chi_square_loss, "tv": critic.total_variation_loss, "kl": critic.reverse_kl_loss}[c["f"]]
    loss = fn(q - v, alpha=c["temperature"], args=args)
    grad = jax.grad(lambda vv: fn(q - vv, alpha=c["temperature"], args=args).mean())(v)
    out[c["name"]] = {"loss": np.asarray(loss).tolist(), "mean": float(np.asarray(loss.mean())),
                      "grad_v": np.asarray(grad).tolist()}
json.dump(out, open(sys.argv[3], "w"))
'''


def make_cases() -> list[dict]:
    g = torch.Generator().manual_seed(40)
    cases = []

    def add(name, q, v, f, temperature, max_clip=7.0):
        cases.append({"name": name, "q": q.tolist(), "v": v.tolist(), "f": f, "temperature": temperature,
                      "max_clip": max_clip})

    q = torch.randn(64, generator=g, dtype=torch.float64) * 3
    v = torch.randn(64, generator=g, dtype=torch.float64) * 3
    for t in (1.0, 0.5, 2.0):
        add(f"chi2_t{t}", q, v, "chi2", t)
    for t in (1.0, 0.7):
        add(f"tv_t{t}", q, v, "tv", t)
    for t in (1.0, 0.5, 2.0):
        add(f"kl_t{t}", q, v, "kl", t)
    big = torch.randn(32, generator=g, dtype=torch.float64) * 20  # d/alpha above the clip of 7
    add("kl_clipped", big, torch.zeros(32, dtype=torch.float64), "kl", 1.0, 7.0)
    add("kl_noclip", big / 4, torch.zeros(32, dtype=torch.float64), "kl", 1.0, None)
    add("kl_clip1", q, v, "kl", 0.5, 1.0)
    neg = -torch.rand(16, generator=g, dtype=torch.float64) * 5 - 2  # every d < -1: max_z floored at -1
    add("kl_all_negative", neg, torch.zeros(16, dtype=torch.float64), "kl", 1.0, 7.0)
    q2 = torch.randn(24, 3, generator=g, dtype=torch.float64) * 2  # the max is per column (axis 0)
    v2 = torch.randn(24, 3, generator=g, dtype=torch.float64)
    add("kl_2d", q2, v2, "kl", 0.8, 7.0)
    add("chi2_2d", q2, v2, "chi2", 0.8)
    return cases


def main() -> None:
    repo, python = os.environ["REPO"], os.environ["JAX_PYTHON"]
    src = extract(repo, COMMIT, ["offline/critic.py"], on_path=())
    cases = make_cases()
    res = run_json(python, RUNNER, os.path.join(src, "offline"), cases, env={"JAX_PLATFORMS": "cpu"})
    golden = {}
    for c in cases:
        r = res[c["name"]]
        golden[c["name"]] = {
            "q": torch.tensor(c["q"], dtype=torch.float64), "v": torch.tensor(c["v"], dtype=torch.float64),
            "f": c["f"], "temperature": c["temperature"], "max_clip": c["max_clip"],
            "loss": torch.tensor(np.asarray(r["loss"]), dtype=torch.float64),
            "mean": torch.tensor(r["mean"], dtype=torch.float64),
            "grad_v": torch.tensor(np.asarray(r["grad_v"]), dtype=torch.float64),
        }
    torch.save(golden, OUT)
    print(f"wrote {len(golden)} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
