"""Golden data for the policy-smoothing certificate, made by running the ReCePS code's baseline computation.

Repository: github.com/mrh996/ReCePS, commit 282fd28de4316bb1949e82219527dc4056511435, file
``Cartpole/cartpole_multiframe_plot_certs.py`` (its ``get_exact_total`` and ``_lower_confidence_bound``, and the
``accum`` loop of its baseline: the policy-smoothing certificate of Kumar, Levine and Feizi). The file is a
plotting script that loads their trained policy's rewards at import, so this script cuts the two functions out
of its source and runs them, with the loop as written there (Bonferroni level 0.05 / 200, thresholds 0..199),
under a Python with scipy and statsmodels (JAX_PYTHON below; ``/tmp/rlmisc-venv/bin/pip install scipy
statsmodels`` gave scipy 1.17.1, statsmodels 0.15.0), on seeded integer rewards in [0, 200], with the counts
passed as integers. Point REPO at a git directory of theirs and run from the repository root:

    REPO=/path/to/ReCePS JAX_PYTHON=/tmp/rlmisc-venv/bin/python .venv/bin/python tools/golden/make_policy_smoothing_golden.py

Writes tests/data/policy_smoothing_golden.pt.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_code import extract, run_json  # noqa: E402

COMMIT = "282fd28de4316bb1949e82219527dc4056511435"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data",
                   "policy_smoothing_golden.pt")

RUNNER = r'''
import json, math, sys, textwrap
import numpy as np
import scipy.special
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint
src = open(sys.argv[1]).read().splitlines()

def function(name):
    i = next(k for k, l in enumerate(src) if l.startswith("def " + name + "("))
    j = next(k for k in range(i + 1, len(src)) if src[k] and not src[k][0].isspace())
    return "\n".join(src[i:j])

ns = {"norm": norm, "math": math, "proportion_confint": proportion_confint}
exec(function("get_exact_total"), ns)
exec(function("_lower_confidence_bound"), ns)
cases = json.load(open(sys.argv[2]))
out = {}
for c in cases:
    data = np.asarray(c["rewards"], dtype=np.float64)
    n = len(data)
    counts = [int((data > i).sum()) for i in range(200)]
    probs_lb = [ns["_lower_confidence_bound"](k, n, .05 / 200) for k in counts]
    accum = 0
    for i in range(200):  # their baseline loop
        accum += ns["get_exact_total"](probs_lb[(199 - i)], c["budget"], c["sigma"])
    out[c["name"]] = float(accum)
json.dump(out, open(sys.argv[3], "w"))
'''


def main() -> None:
    certs = os.path.join(extract(os.environ["REPO"], COMMIT, ["Cartpole/cartpole_multiframe_plot_certs.py"], on_path=()),
                         "Cartpole", "cartpole_multiframe_plot_certs.py")
    g = torch.Generator().manual_seed(256)
    cases = []
    for name, (n, sigma, budget, mean) in {"good": (2000, 0.4, 0.2, 170.0), "mixed": (1000, 0.6, 0.5, 100.0),
                                           "clean": (3000, 0.2, 0.0, 150.0), "large_budget": (500, 0.4, 1.0, 190.0)}.items():
        r = torch.clamp(torch.round(mean + 40 * torch.randn(n, generator=g, dtype=torch.float64)), 0, 200)
        cases.append({"name": name, "rewards": r.tolist(), "sigma": sigma, "budget": budget})
    res = run_json(os.environ["JAX_PYTHON"], RUNNER, certs, cases)
    golden = {c["name"]: {"rewards": torch.tensor(c["rewards"], dtype=torch.float64), "sigma": c["sigma"],
                          "budget": c["budget"], "bound": res[c["name"]]} for c in cases}
    torch.save(golden, OUT)
    print({k: round(v["bound"], 3) for k, v in golden.items()})


if __name__ == "__main__":
    main()
