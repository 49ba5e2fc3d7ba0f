"""Golden FedLD values made by the authors' own code: the principal-gradient aggregation and the margin loss.

Source: github.com/Zeng-Shuang/FedLD at commit 9440494361105c3592b3352c423372829055ee5c. Their
``svd_tools.py`` (``pcgrad_svd``, ``initialize_grad_len``) and ``methods/fedld.py`` (``MarginalLogLoss``)
are imported from a checkout at FEDLD_REF; both read ``options.args_parser()`` at import, so ``sys.argv``
is set to their defaults (``--k_proportion 0.8``, other values for the extra cases).

Run from the repository root:

    FEDLD_REF=/path/to/FedLD PYTHONPATH=src .venv/bin/python tools/golden/make_fedld_golden.py

Writes tests/data/fedld_golden.pt with
- ``aggregation``: per case (k_proportion, clients m), a toy model's layer shapes (a 1-element layer
  included), three rounds of client updates (m x d, float64) and the global update ``pcgrad_svd`` returns
  each round, its ``grad_history`` carried between rounds as in their ``federated_main.py``;
- ``loss``: logits, targets, lambda and their ``MarginalLogLoss`` value and gradient (float64).
"""
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import torch

REF = os.environ["FEDLD_REF"]
sys.path.insert(0, REF)
gen = torch.Generator().manual_seed(2408)


def load(k_proportion, lam=0.03):
    sys.argv = ["x", "--k_proportion", str(k_proportion), "--margin_loss_penalty", str(lam)]
    for name in ("options", "svd_tools"):
        sys.modules.pop(name, None)
    # their methods/__init__.py imports every method (and cvxpy): load the one file alone
    spec = importlib.util.spec_from_file_location("fedld_methods_fedld", Path(REF) / "methods" / "fedld.py")
    fedld = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fedld)
    return importlib.import_module("svd_tools"), fedld


model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 3))
model.register_buffer("scale", torch.ones(1))  # a 1-element entry, which their code averages plainly
shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
aggregation = []
for k_proportion, m in [(0.8, 5), (0.8, 2), (0.5, 4), (1.0, 3)]:
    svd_tools, _ = load(k_proportion)
    history = {k: None for k in model.state_dict()}
    history["grad_len"] = svd_tools.initialize_grad_len(model, history)
    rounds = []
    for r in range(3):
        grads = [torch.randn(sum(v.numel() for v in model.state_dict().values()), generator=gen,
                             dtype=torch.float64) * (1 + i) for i in range(m)]
        grads[0] = grads[0] + 0.5 * grads[-1]  # correlated clients
        new, history = svd_tools.pcgrad_svd(m, [g.clone() for g in grads], history)
        rounds.append(dict(updates=torch.stack(grads), step=new.clone()))
    aggregation.append(dict(k_proportion=k_proportion, clients=m, shapes=shapes, rounds=rounds))

loss = []
for n, c, scale, lam in [(8, 10, 1.0, 0.03), (32, 10, 4.0, 0.03), (5, 3, 0.5, 0.3)]:
    _, fedld = load(0.8, lam)
    logits = (torch.randn(n, c, generator=gen, dtype=torch.float64) * scale).requires_grad_(True)
    target = torch.randint(0, c, (n,), generator=gen)
    value = fedld.MarginalLogLoss(lam)(logits, target)
    value.backward()
    loss.append(dict(logits=logits.detach(), target=target, lam=lam, value=value.detach(), grad=logits.grad))

out = Path(__file__).resolve().parents[2] / "tests" / "data" / "fedld_golden.pt"
torch.save({"aggregation": aggregation, "loss": loss}, out)
print("wrote", out)
