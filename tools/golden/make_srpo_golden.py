"""Golden values for SRPO, made by running a third-party reimplementation's loss.

The SRPO authors released no code. The reference is the SRPO trainer of TRL pull request #1772
(closed, not merged), branch ``frasermince/srpo-take-2`` of github.com/frasermince/trl at commit
295b8e835db464828fd27093dac6d4f328b4c2d5, file ``trl/trainer/srpo_trainer.py``. That file is not part
of this repository. Point SRPO_REF at it, then run from the repository root:

    SRPO_REF=/path/to/srpo_trainer.py .venv/bin/python tools/golden/make_srpo_golden.py

The file imports trl internals, so it is not imported: the method ``SRPOTrainer.srpo_loss`` is lifted
out with ``ast`` and called with a stand-in ``self`` (attributes ``beta``, ``alpha`` and
``accelerator.device = "cpu"``; their trainer hard-codes ``alpha = 0.8``, the stand-in varies it).
Inputs are float64 sequence log-probs. Writes tests/data/srpo_golden.pt: a list of cases, each with the
twelve input tensors (their dict keys), beta, alpha and their per-pair losses.
"""
import ast
import os
import types
import typing

import torch

here = os.path.dirname(os.path.abspath(__file__))
src = open(os.environ["SRPO_REF"]).read()
tree = ast.parse(src)
fn = next(f for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "SRPOTrainer"
          for f in c.body if isinstance(f, ast.FunctionDef) and f.name == "srpo_loss")
ns = {"torch": torch, **{k: getattr(typing, k) for k in ("Tuple", "Dict", "List", "Optional", "Union")}}
exec(compile(ast.Module(body=[fn], type_ignores=[]), "srpo_trainer.py", "exec"), ns)
srpo_loss = ns["srpo_loss"]

KEYS = ["chosen", "rejected", "chosen_improved_to_given_rejected", "rejected_improved_to_given_rejected",
        "chosen_improved_to_given_chosen", "rejected_improved_to_given_chosen"]
gen = torch.Generator().manual_seed(2024)
out = []
for n, scale, beta, alpha in [(6, 3.0, 0.1, 0.8), (5, 30.0, 0.5, 0.3), (4, 0.5, 2.0, 0.0), (4, 10.0, 0.05, 1.0)]:
    pol = {k: -scale * torch.rand(n, generator=gen, dtype=torch.float64) for k in KEYS}
    ref = {k: -scale * torch.rand(n, generator=gen, dtype=torch.float64) for k in KEYS}
    me = types.SimpleNamespace(beta=beta, alpha=alpha, accelerator=types.SimpleNamespace(device="cpu"))
    losses, _ = srpo_loss(me, pol, ref)
    out.append(dict(policy=pol, reference=ref, beta=beta, alpha=alpha, loss=losses.detach()))
meta = dict(reference="frasermince/trl@295b8e835db464828fd27093dac6d4f328b4c2d5 trl/trainer/srpo_trainer.py "
                      "SRPOTrainer.srpo_loss (TRL PR #1772)", torch=str(torch.__version__))
torch.save(dict(meta=meta, cases=out), os.path.join(here, "..", "..", "tests", "data", "srpo_golden.pt"))
print(len(out), "cases")
