"""Golden values for EnsLoss, made by running the authors' own loss class.

The authors' file is not part of this repository. Point ENSLOSS_REF at their
``losses.py`` (github.com/statmlben/ensLoss; file at commit 051d87d, repository
HEAD fd37682), then run from the repository root:

    ENSLOSS_REF=/path/to/losses.py .venv/bin/python tools/golden/make_ensloss_golden.py

Their module imports pandas (unused by ``ensLoss``); if it is missing a stub
module stands in. Their ``forward`` moves the derivatives to ``"cuda"``; on a
CPU-only machine this script makes ``Tensor.to("cuda")`` the identity while
their class runs. Each case seeds the global generator with
``torch.manual_seed(seed)`` right before their ``forward`` (whose first random
operation is ``torch.randn((N,))``), and records the inputs, the normal draws
(re-drawn from the same seed), the loss and the gradient w.r.t. the scores.
Writes tests/data/ensloss_golden.pt.
"""
import importlib.util
import os
import sys
import types

import torch

here = os.path.dirname(os.path.abspath(__file__))
try:
    import pandas  # noqa: F401
except ImportError:
    sys.modules["pandas"] = types.ModuleType("pandas")
spec = importlib.util.spec_from_file_location("ensloss_ref", os.environ["ENSLOSS_REF"])
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

_to = torch.Tensor.to


def _to_cpu(self, *args, **kwargs):  # CPU stand-in for their .to("cuda")
    if args and isinstance(args[0], str) and args[0].startswith("cuda"):
        return self
    return _to(self, *args, **kwargs)


torch.Tensor.to = _to_cpu

gen = torch.Generator().manual_seed(2024)
cases = []
for i, (n, scale, dtype, lam) in enumerate([(16, 1.0, torch.float32, 0.0), (64, 3.0, torch.float32, 0.0),
                                            (128, 0.5, torch.float32, 0.0), (33, 4.0, torch.float32, 0.5),
                                            (40, 2.0, torch.float32, -0.7), (50, 2.5, torch.float64, 0.0)]):
    scores = (torch.randn(n, 1, generator=gen, dtype=torch.float64) * scale).to(dtype)
    target = (torch.rand(n, 1, generator=gen) > 0.4).float()
    seed = 100 + i
    x = scores.clone().requires_grad_(True)
    crit = ref.ensLoss()
    crit.lam = lam
    torch.manual_seed(seed)
    loss = crit(x, target)
    loss.backward()
    torch.manual_seed(seed)
    noise = torch.randn((n,))
    cases.append(dict(seed=seed, lam=lam, scores=scores, target=target, noise=noise, loss=loss.detach(),
                      grad=x.grad.detach()))
torch.Tensor.to = _to
meta = dict(reference="statmlben/ensLoss losses.py (commit 051d87d; repo HEAD fd37682): class ensLoss, "
                      "lam set on the instance as their train.py does", torch=str(torch.__version__))
torch.save(dict(meta=meta, cases=cases), os.path.join(here, "..", "..", "tests", "data", "ensloss_golden.pt"))
print(len(cases), "cases")
