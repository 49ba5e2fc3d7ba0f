"""Golden data for FamO2O's balance embedding and losses, made by running the authors' JAX code.

Repository: github.com/LeapLabTHU/FamO2O, commit ea9cb01c86ca7d8cbd782b21cab5d7e1614bc6d7, files
``jax_iql/family_utils.py`` (``sin_cos_skill_func``, imported as is) and ``jax_iql/family_actor.py`` (the balance
rescaling, the ``exp_a`` weight, ``actor_loss`` and ``hierarchical_loss`` lines, cut from the source and run as
written; the updates themselves need their flax models). Point REPO at a git directory of theirs and JAX_PYTHON
at a Python with CPU ``jax`` (``python3 -m venv /tmp/rlmisc-venv; /tmp/rlmisc-venv/bin/pip install jax jaxlib``;
jax 0.10.2 was used), then run from the repository root:

    REPO=/path/to/FamO2O JAX_PYTHON=/tmp/rlmisc-venv/bin/python .venv/bin/python tools/golden/make_famo2o_golden.py

Everything runs with ``jax_enable_x64`` on seeded float64 inputs shaped as in their updates: Q and V [B] (their
critics squeeze the last axis), the balances [B, 1] (a 1-dimensional balance policy, or their uniform draw of
shape (B, 1)), so their ``exp_a`` broadcasts to [B, B]. Writes tests/data/famo2o_golden.pt.
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_code import extract, run_json  # noqa: E402

COMMIT = "ea9cb01c86ca7d8cbd782b21cab5d7e1614bc6d7"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "famo2o_golden.pt")

RUNNER = r'''
import json, sys, textwrap, types
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
sys.path.insert(0, sys.argv[1])
from family_utils import sin_cos_skill_func
src = open(sys.argv[1] + "/family_actor.py").read().splitlines()

def cut(start, end):
    i = next(k for k, l in enumerate(src) if start in l)
    j = next(k for k, l in enumerate(src) if k >= i and end in l)
    depth = sum(src[k].count("(") - src[k].count(")") for k in range(i, j + 1))
    while depth > 0 or src[j].rstrip().endswith("\\"):  # brackets open or a line continuation
        j += 1
        depth += src[j].count("(") - src[j].count(")")
    return textwrap.dedent("\n".join(src[i:j + 1]))

rescale = cut("hierarchical_coefficients = (hierarchical_coefficients + 1.0) / 2.0 * (", "family_coefficient_range[0]")
weight = cut("exp_a = jnp.exp((q - v) * hierarchical_coefficients)", "exp_a = jnp.minimum(exp_a, 100.0)")
actor = cut("actor_loss = -(exp_a * log_probs).mean()", "actor_loss = -(exp_a * log_probs).mean()")
hier = cut("hierarchical_loss = (hierarchical_log_probs * temp() - q_hierarchical).mean()", "hierarchical_loss = (")
cases = json.load(open(sys.argv[2]))
out = {}
for c in cases:
    a = {k: jnp.asarray(np.asarray(v, dtype=np.float64)) for k, v in c["arrays"].items()}
    ns = {"jnp": jnp, "hierarchical_coefficients": a["u"], "family_coefficient_range": c["range"]}
    exec(rescale, ns)
    beta = ns["hierarchical_coefficients"]
    emb = sin_cos_skill_func(beta, n=c["n"], d=c["d"])
    ns.update(q=a["q"], v=a["v"], log_probs=a["log_prob"])
    exec(weight, ns)
    exec(actor, ns)
    ns.update(hierarchical_log_probs=a["balance_log_prob"], temp=lambda: c["temperature"], q_hierarchical=a["q_policy"])
    exec(hier, ns)
    out[c["name"]] = {"beta": np.asarray(beta).tolist(), "embedding": np.asarray(emb).tolist(),
                      "weight": np.asarray(ns["exp_a"]).tolist(), "actor_loss": float(ns["actor_loss"]),
                      "hierarchical_loss": float(ns["hierarchical_loss"])}
json.dump(out, open(sys.argv[3], "w"))
'''


def main() -> None:
    src = extract(os.environ["REPO"], COMMIT, ["jax_iql/family_utils.py", "jax_iql/family_actor.py"], on_path=())
    g = torch.Generator().manual_seed(98)
    cases = []
    for name, (b, rng, n, d, temp, adv_scale) in {"default": (32, (8.0, 14.0), 10000.0, 6, 1.0, 0.3),
                                                 "wide": (20, (0.5, 3.0), 100.0, 8, 0.2, 2.0)}.items():
        arrays = {"u": torch.rand(b, 1, generator=g, dtype=torch.float64) * 2 - 1,
                  "q": torch.randn(b, generator=g, dtype=torch.float64) * adv_scale,  # [B], as their critics
                  "v": torch.randn(b, generator=g, dtype=torch.float64) * adv_scale,
                  "log_prob": torch.randn(b, generator=g, dtype=torch.float64),
                  "balance_log_prob": torch.randn(b, generator=g, dtype=torch.float64),
                  "q_policy": torch.randn(b, generator=g, dtype=torch.float64) * 3}
        cases.append({"name": name, "range": list(rng), "n": n, "d": d, "temperature": temp,
                      "arrays": {k: v.tolist() for k, v in arrays.items()}})
    res = run_json(os.environ["JAX_PYTHON"], RUNNER, os.path.join(src, "jax_iql"), cases,
                   env={"JAX_PLATFORMS": "cpu"})
    golden = {}
    for c in cases:
        r = res[c["name"]]
        golden[c["name"]] = {**{k: torch.tensor(v, dtype=torch.float64) for k, v in c["arrays"].items()},
                             "range": tuple(c["range"]), "n": c["n"], "d": c["d"], "temperature": c["temperature"],
                             **{k: torch.tensor(np.asarray(v), dtype=torch.float64) for k, v in r.items()}}
    torch.save(golden, OUT)
    print(f"wrote {len(golden)} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
