"""Golden values for iSogCLR, made by running LibAUC's ``GCLoss_v1(enable_isogclr=True)``.

The authors' file is not part of this repository. Point REFS at a folder
holding LibAUC's ``libauc/losses/contrastive.py`` (github.com/Optimization-AI/LibAUC,
commit 812f98f7bf020894f370ed48da2a23cd4e995235) saved as ``libauc_contrastive.py``
(the single file is imported, not the package, which pulls torchvision), then run
from the repository root:

    REFS=/path/to/refs .venv/bin/python tools/golden/make_isogclr_golden.py

Writes tests/data/isogclr_golden.pt: a list of cases, each with the
constructor arguments, and per step the inputs (z1, z2, index), the loss,
its gradients and the state after the step (u, tau, grad_tau), all float64.
The index pattern is two epochs of disjoint batches, so LibAUC's
"gamma = 1 while the batch's u is zero" rule is the per-sample first-visit rule.
"""
import importlib.util
import os

import torch

torch.set_default_dtype(torch.float64)  # LibAUC allocates its state with torch.zeros: make it float64
here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("libauc_contrastive",
                                              os.path.join(os.environ["REFS"], "libauc_contrastive.py"))
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

cases = [
    dict(N=12, B=4, D=5, kw=dict(tau=0.1, gamma=0.9, tau_min=0.05, tau_max=0.7, rho=0.3, eta=0.01, beta=0.9)),
    dict(N=12, B=4, D=5, kw=dict(tau=0.2, gamma=0.5, tau_min=0.05, tau_max=0.7, rho=1.0, eta=0.5, beta=0.6)),
    dict(N=9, B=3, D=3, kw=dict(tau=0.3, gamma=0.8, tau_min=0.1, tau_max=0.35, rho=0.1, eta=2.0, beta=0.9)),
]
out = []
g = torch.Generator().manual_seed(0)
for case in cases:
    N, B, D = case["N"], case["B"], case["D"]
    loss_fn = ref.GCLoss_v1(N=N, device=torch.device("cpu"), enable_isogclr=True, **case["kw"])
    steps = []
    for epoch in range(3):
        perm = torch.randperm(N, generator=g) if epoch else torch.arange(N)
        for k in range(N // B):
            index = perm[k * B:(k + 1) * B]
            z1 = torch.randn(B, D, generator=g, requires_grad=True)
            z2 = torch.randn(B, D, generator=g, requires_grad=True)
            loss = loss_fn(z1, z2, index)
            loss.backward()
            steps.append(dict(z1=z1.detach().clone(), z2=z2.detach().clone(), index=index.clone(),
                              loss=loss.detach().clone(), grad_z1=z1.grad.clone(), grad_z2=z2.grad.clone(),
                              u=loss_fn.u.reshape(-1).clone(), tau=loss_fn.learnable_tau.reshape(-1).clone(),
                              grad_tau=loss_fn.grad_tau.reshape(-1).clone()))
    out.append(dict(reference="LibAUC libauc/losses/contrastive.py GCLoss_v1(enable_isogclr=True) @ 812f98f7 "
                    f"(torch {torch.__version__})", N=N, kwargs=case["kw"], steps=steps))
torch.save(out, os.path.join(here, "..", "..", "tests", "data", "isogclr_golden.pt"))
print(len(out), "cases", sum(len(c["steps"]) for c in out), "steps")
