"""Golden values for LDR-KL and ALDR-KL, made by running the authors' own loss file.

The authors' file is not part of this repository. Point LDR_REF at their
``loss.py`` (github.com/Optimization-AI/ICML2023_LDR, commit 732fc85), then run
from the repository root:

    LDR_REF=/path/to/loss.py .venv/bin/python tools/golden/make_ldr_golden.py

Their ALDR class calls ``.cuda()``; on a CPU-only machine this script makes
``Tensor.cuda`` the identity while their module is used. Inputs are float64.
Writes tests/data/ldr_golden.pt: a list of cases, each with the inputs, the
reference loss, the reference gradient w.r.t. the logits and (ALDR) the
per-instance temperatures after each of two consecutive calls.
"""
import importlib.util
import os

import torch
import torch.nn.functional as F

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("ldr_ref", os.environ["LDR_REF"])
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)
torch.Tensor.cuda = lambda self, *a, **k: self  # CPU stand-in for their .cuda() calls

torch.set_default_dtype(torch.float64)  # their tensors built from Python floats follow the default dtype
gen = torch.Generator().manual_seed(1234)
out = []
for n, k, scale in [(16, 10, 1.0), (8, 3, 5.0), (32, 26, 0.3)]:
    logits = torch.randn(n, k, generator=gen, dtype=torch.float64) * scale
    target = torch.randint(0, k, (n,), generator=gen)
    onehot = F.one_hot(target, k).double()
    for lam, margin in [(10.0, 0.1), (1.0, 2.0), (0.5, 1.0)]:
        x = logits.clone().requires_grad_(True)
        loss = ref.LDRLoss_V1(threshold=margin, Lambda=lam)(x, onehot)
        loss.backward()
        out.append(dict(kind="ldr", logits=logits, target=target, lam=lam, margin=margin,
                        loss=loss.detach(), grad=x.grad.detach()))
    for lam, alpha, margin, softplus in [(10.0, 2.0, 0.1, False), (1.0, 1.5, 1.0, True), (2.0, 3.0, 0.1, False)]:
        crit = ref.ALDRLoss_V1(N=n + 4, threshold=margin, Lambda=lam, alpha=alpha, softplus=softplus)
        crit.Lambda = crit.Lambda.double()
        ids = torch.arange(2, n + 2)
        steps = []
        for step in range(2):
            x = (logits * (1 + 0.5 * step)).clone().requires_grad_(True)
            loss = crit(x, onehot, ids)
            loss.backward()
            steps.append(dict(logits=x.detach(), loss=loss.detach(), grad=x.grad.detach(),
                              lambdas=crit.Lambda[ids].view(-1).clone()))
        out.append(dict(kind="aldr", target=target, lam=lam, alpha=alpha, margin=margin, softplus=softplus,
                        steps=steps))
meta = dict(reference="Optimization-AI/ICML2023_LDR loss.py (commit 732fc85): LDRLoss_V1, ALDRLoss_V1",
            torch=str(torch.__version__))
torch.save(dict(meta=meta, cases=out), os.path.join(here, "..", "..", "tests", "data", "ldr_golden.pt"))
print(len(out), "cases")
