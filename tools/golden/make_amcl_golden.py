"""Golden values for AMCL (SimCLR form, Top-k negatives), made by running the authors' v2.0 release.

The authors' code is ``amcl/losses.py`` of github.com/LeiWangR/cl at commit
755799dbee4260d2d2efc891e9e4d2c13ea2cfe4 (the v2.0 release: ``AMCLNTXentLoss``
with its shared ``TemperatureHead``); it imports only torch. Point ``AMCL_REF``
at that file and run from the repository root:

    AMCL_REF=/path/to/cl/amcl/losses.py .venv/bin/python tools/golden/make_amcl_golden.py

Writes tests/data/amcl_golden.pt: per case the settings (heads, dim, hidden
width, beta, topk, temperature range), the inputs ``z1, z2`` in the code's
``[batch, heads, dim]`` layout, the temperature map's ``phi`` weights, the loss,
and the gradients w.r.t. ``z1``, ``z2`` and the ``phi`` weights. The code
computes in float32 whatever the input dtype, so the data are float32.
"""
import importlib.util
import os

import torch

ref = os.environ.get("AMCL_REF")
if not ref:
    raise SystemExit("set AMCL_REF to the authors' amcl/losses.py (LeiWangR/cl @ 755799db)")
spec = importlib.util.spec_from_file_location("amcl_v2_losses", ref)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)

here = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(0)
out = []
for b, c, d, hidden, beta, topk, tau_min, tau_max in [
    (4, 1, 5, 6, 1e-4, 100, 1e-5, 2.0),  # all 2B-2 negatives, the reference beta
    (6, 3, 8, 16, 0.05, 3, 1e-5, 2.0),  # three heads, top-3 of 10 negatives
    (5, 2, 6, 4, 0.5, 1, 1e-5, 2.0),  # top-1 (the hardest negative)
    (7, 2, 4, 8, 0.1, 5, 0.05, 1.0),  # another temperature range
]:
    loss_fn = mod.AMCLNTXentLoss(d, num_heads=c, beta=beta, tau_min=tau_min, tau_max=tau_max, topk=topk,
                                 temperature_hidden_dim=hidden)
    with torch.no_grad():  # larger weights than the default init, so the temperatures spread over the range
        for p in loss_fn.temperature.parameters():
            p.mul_(1.5)
    z1 = torch.randn(b, c, d, requires_grad=True)
    z2 = torch.randn(b, c, d, requires_grad=True)
    loss = loss_fn(z1, z2)
    loss.backward()
    phi = loss_fn.temperature.phi
    out.append(dict(batch=b, heads=c, dim=d, hidden=hidden, beta=beta, topk=topk, tau_min=tau_min,
                    tau_max=tau_max, z1=z1.detach().clone(), z2=z2.detach().clone(),
                    phi={k: v.detach().clone() for k, v in phi.state_dict().items()},
                    loss=loss.detach().clone(), grad_z1=z1.grad.clone(), grad_z2=z2.grad.clone(),
                    grad_phi={k: p.grad.clone() for k, p in phi.named_parameters()},
                    reference="LeiWangR/cl @ 755799db amcl/losses.py AMCLNTXentLoss"))
torch.save(out, os.path.join(here, "..", "..", "tests", "data", "amcl_golden.pt"))
print(len(out), "cases", [float(c["loss"]) for c in out])
