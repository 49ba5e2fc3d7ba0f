"""Golden values for SimPO, made by running the authors' own loss method.

The authors' trainer (``scripts/simpo_trainer.py`` of github.com/princeton-nlp/SimPO, checked out
at commit 1b3e8f3) imports TRL, transformers, accelerate and datasets at module level. Only its
``SimPOTrainer.simpo_loss`` method matters here, so this script lifts that one method out of the
file with ``ast`` (no other code of theirs runs) and calls it, unmodified, with a stand-in ``self``
holding ``beta``, ``gamma_beta_ratio``, ``label_smoothing``, ``loss_type`` and an accelerator on
the CPU. Their file is not part of this repository; point SIMPO_REF at it and run from the
repository root (any Python with torch, e.g. the project's .venv):

    SIMPO_REF=/path/to/SimPO/scripts/simpo_trainer.py .venv/bin/python tools/golden/make_simpo_golden.py

Saves tests/data/simpo_golden.pt: a dict with ``cases``, each holding the trainer settings
(``beta``, ``gamma_beta_ratio`` as in their config, ``label_smoothing``, ``loss_type``), the
average log-probs ``policy_chosen``/``policy_rejected`` (float64, shape [B]), their per-pair
``loss`` and the gradients of ``loss.sum()`` w.r.t. both inputs.
"""
from __future__ import annotations

import ast
import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F

here = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(here, "..", "..", "tests", "data", "simpo_golden.pt")


def load_simpo_loss(path):
    src = open(path).read()
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "SimPOTrainer":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "simpo_loss":
                    mod = ast.Module(body=[item], type_ignores=[])
                    ns = {"torch": torch, "F": F, "Tuple": tuple}
                    exec(compile(mod, path, "exec"), ns)
                    return ns["simpo_loss"]
    raise RuntimeError("SimPOTrainer.simpo_loss not found in " + path)


def main():
    simpo_loss = load_simpo_loss(os.environ["SIMPO_REF"])
    gen = torch.Generator().manual_seed(26)
    cases = []
    settings = [(2.0, 0.25, 0.0, "sigmoid"), (2.5, 0.55, 0.0, "sigmoid"), (10.0, 0.3, 0.0, "sigmoid"),
                (2.0, 0.5, 0.1, "sigmoid"), (2.0, 0.25, 0.0, "hinge"), (8.0, 0.1, 0.0, "hinge")]
    for beta, ratio, ls, loss_type in settings:
        for scale in (0.3, 2.0):
            b = 16
            pc = -(torch.rand(b, generator=gen, dtype=torch.float64) * scale * 2)
            pr = -(torch.rand(b, generator=gen, dtype=torch.float64) * scale * 2)
            pc_, pr_ = pc.clone().requires_grad_(True), pr.clone().requires_grad_(True)
            stand_in = SimpleNamespace(beta=beta, gamma_beta_ratio=ratio, label_smoothing=ls, loss_type=loss_type,
                                       accelerator=SimpleNamespace(device=torch.device("cpu")))
            losses, _, _ = simpo_loss(stand_in, pc_, pr_)
            losses.sum().backward()
            cases.append(dict(beta=beta, gamma_beta_ratio=ratio, label_smoothing=ls, loss_type=loss_type,
                              policy_chosen=pc, policy_rejected=pr, loss=losses.detach(),
                              grad_chosen=pc_.grad, grad_rejected=pr_.grad))
    torch.save({"simpo_commit": "1b3e8f3", "torch_version": str(torch.__version__), "cases": cases}, OUT)
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
