"""Golden data for PMOE's mixture head (per-expert tanh-Gaussian draws and log-densities) and policy loss, made
by running the co-author's code.

Repository: github.com/quantumiracle/Popular-RL-Algorithms, commit 56f0160 ("fix pmoe_ppo", the last change to
``pmoe_sac.py``). Their file is not part of this repository: point REPO at a git directory of theirs (a clone,
or the mirror the search tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/Popular-RL-Algorithms .venv/bin/python tools/golden/make_pmoe_golden.py

The file imports gym, IPython, matplotlib and a ``reacher`` module at the top, so instead of importing it this
script cuts two pieces out of its source and runs them as written: ``PolicyNetwork.evaluate`` (on a namespace
whose ``forward`` returns fixed float64 mixing weights, means and log-standard deviations; it draws its own
standard normal noise, which it returns and which is stored) and the policy-loss lines of
``PMOE_Trainer.update`` (``predicted_new_q_value, best_index = ...`` to ``policy_loss = ...``) on fixed Q values
and the evaluate output. Writes tests/data/pmoe_golden.pt.
"""
import os
import subprocess
import textwrap
import types

import numpy as np
import torch
import torch.nn.functional as F
from torch.distributions import Normal

COMMIT = "56f0160"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "pmoe_golden.pt")


def block(lines: list[str], start: str, end: str) -> str:
    i = next(k for k, l in enumerate(lines) if start in l)
    j = next(k for k, l in enumerate(lines) if k >= i and end in l)
    depth = sum(lines[k].count("(") - lines[k].count(")") for k in range(i, j + 1))
    while depth > 0:
        j += 1
        depth += lines[j].count("(") - lines[j].count(")")
    return textwrap.dedent("\n".join(lines[i:j + 1]))


def main() -> None:
    src = subprocess.run(["git", "-C", os.environ["REPO"], "show", f"{COMMIT}:pmoe_sac.py"], check=True,
                         capture_output=True, text=True).stdout
    lines = src.splitlines()
    i = next(k for k, l in enumerate(lines) if l.strip().startswith("def evaluate("))
    j = next(k for k in range(i + 1, len(lines)) if lines[k].strip().startswith("def "))
    ns = {"torch": torch, "np": np, "Normal": Normal, "device": torch.device("cpu")}
    exec(textwrap.dedent("\n".join(lines[i:j])), ns)
    evaluate = ns["evaluate"]
    loss_src = block(lines, "predicted_new_q_value, best_index = predicted_new_q_value.max(1)", "policy_loss = (")
    g = torch.Generator().manual_seed(66)
    golden = {}
    for case, (b, k, a, action_range, alpha) in enumerate([(16, 2, 2, 1.0, 0.2), (24, 4, 3, 2.0, 0.05),
                                                           (8, 3, 1, 1.0, 1.0)]):
        mixing = torch.softmax(torch.randn(b, k, generator=g, dtype=torch.float64), -1)
        mean = torch.randn(b, k, a, generator=g, dtype=torch.float64)
        log_std = torch.clamp(torch.randn(b, k, a, generator=g, dtype=torch.float64), -20, 2)
        me = types.SimpleNamespace(forward=lambda s, m=(mixing, mean, log_std): m, action_range=action_range)
        torch.manual_seed(case)
        _, action, log_prob, z, _, _ = evaluate(me, torch.zeros(b, 1))
        q = torch.randn(b, k, generator=g, dtype=torch.float64) * 3
        if case == 2:
            q[:, 1] = q[:, 0]  # ties: their max(1) takes the first index
        loss_ns = {"torch": torch, "F": F, "predicted_new_q_value": q.clone(), "new_mixing_coefficient": mixing,
                   "log_prob": log_prob, "self": types.SimpleNamespace(alpha=alpha,
                                                                       policy_net=types.SimpleNamespace(K=k))}
        exec(loss_src, loss_ns)
        golden[f"case{case}"] = {"mixing": mixing, "mean": mean, "log_std": log_std, "noise": z.double(),
                                 "noise_raw": z, "action": action, "log_prob": log_prob.squeeze(-1),
                                 "action_range": action_range, "alpha": alpha, "q": q,
                                 "best_index": loss_ns["best_index"], "policy_loss": loss_ns["policy_loss"]}
    torch.save(golden, OUT)
    print(f"wrote {len(golden)} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
