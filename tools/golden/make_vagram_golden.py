"""Golden data for VaGraM's model loss, made by running the authors' code.

Repository: github.com/pairlab/vagram, commit caf9b92248c56550ad01ce43abf1f50a61a7cbbf ("Changes for rebuttal",
the last change to the file before the paper's arXiv version), file ``mbrl/models/vaml_mlp.py``. Their file is
not part of this repository: point REPO at a git directory of theirs (a clone, or the mirror the search tool's
``fetch`` brings) and run from the repository root:

    REPO=/path/to/vagram .venv/bin/python tools/golden/make_vagram_golden.py

It reads the file at that commit with ``git show``, takes the source of ``VAMLMLP._vaml_loss`` out of it (the
class needs their ``mbrl`` package and hydra configs; the method only needs ``torch`` and ``numpy``), and calls it
on a namespace holding: ``forward`` returning a fixed seeded prediction (one ensemble member), ``values`` returning
K small seeded float64 value networks at the target's state columns (so their backward gives the value
gradients), the gradient caches empty, ``use_scaling=True``, ``use_vaml=False`` and ``bound_clipping`` True
(quantiles 0.95 and 0.5) or False. Stored: inputs, the value gradients their backward produced, and their loss
tensor (state error terms plus the reward's squared error broadcast over the state columns).
Writes tests/data/vagram_golden.pt.
"""
import os
import subprocess
import textwrap
import types

import numpy as np
import torch
from torch import nn

COMMIT = "caf9b92248c56550ad01ce43abf1f50a61a7cbbf"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "vagram_golden.pt")


def their_vaml_loss():
    src = subprocess.run(["git", "-C", os.environ["REPO"], "show", f"{COMMIT}:mbrl/models/vaml_mlp.py"],
                         check=True, capture_output=True, text=True).stdout
    lines = src.splitlines()
    i = next(k for k, l in enumerate(lines) if l.strip().startswith("def _vaml_loss("))
    j = next(k for k in range(i + 1, len(lines)) if lines[k].strip().startswith("def "))
    body = textwrap.dedent("\n".join(lines[i:j]))
    ns = {"torch": torch, "np": np}
    exec(body, ns)
    return ns["_vaml_loss"]


def main() -> None:
    vaml_loss = their_vaml_loss()
    g = torch.Generator().manual_seed(202)
    torch.manual_seed(202)
    golden = {}
    for name, (b, d, k, clip, quant) in {
        "clip95_k4": (40, 3, 4, True, 0.95), "clip50_k2": (25, 5, 2, True, 0.5), "noclip_k4": (30, 3, 4, False, 0.95),
        "clip95_k1": (64, 2, 1, True, 0.95),
    }.items():
        nets = [nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 1)).double() for _ in range(k)]
        for net in nets:
            for p in net.parameters():
                p.data.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 2)
        target = torch.randn(b, d + 1, generator=g, dtype=torch.float64)
        pred = target + 0.3 * torch.randn(b, d + 1, generator=g, dtype=torch.float64)
        grads = []

        def values(x, nets=nets):
            return torch.stack([net(x) for net in nets], 0).squeeze(1)   # [K, B, 1] as theirs (critics at [1, B, D])

        me = types.SimpleNamespace(
            forward=lambda model_in, use_propagation=False, pred=pred: (pred.unsqueeze(0), None),
            num_members=1, _agent=types.SimpleNamespace(critic=nn.Module(), critic_target=nn.Module()),
            values=values, known_gradients=torch.zeros(b, 1, dtype=torch.bool),
            known_eval_gradients=torch.zeros(b, 1, dtype=torch.bool),
            gradients=torch.zeros(b, k, d, dtype=torch.float64), eval_gradients=torch.zeros(b, k, d, dtype=torch.float64),
            bound_clipping=clip, bound_clipping_quantile=quant, use_vaml=False, use_scaling=True)
        tgt = target.clone()
        loss = vaml_loss(me, torch.zeros(b, 2, dtype=torch.float64), tgt, torch.arange(b))
        # the value gradients their backward computed, recomputed the same way for the test's input
        for net in nets:
            x = target[:, :-1].clone().requires_grad_(True)
            net(x).sum().backward()
            grads.append(x.grad.detach())
        golden[name] = {"pred": pred, "target": target, "value_grad": torch.stack(grads), "clip": clip,
                        "quantile": quant, "loss": loss.detach().squeeze(0)}
    torch.save(golden, OUT)
    print(f"wrote {len(golden)} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
