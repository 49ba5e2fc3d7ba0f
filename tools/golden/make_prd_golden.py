"""Golden data for PRD (prototype-sample relation distillation), made by running the authors' code.

Repository: github.com/naderAsadi/Probing-Continual-Learning, commit 26a5ac1227aac84b0b63472424a4063e91efecc7
("first commit", the pre-release the issue names). Their files are not part of this repository: point REPO
at a git directory of theirs (a clone, or the mirror the search tool's ``fetch`` brings) and run from the
repository root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_prd_golden.py

It reads, at that commit with ``git show``, ``losses/__init__.py``, ``losses/supcon_loss.py`` and
``methods/repe.py`` into a temporary folder, with two stubs for what ``repe.py`` imports and these
functions do not use: ``methods/er.py`` (an empty ``ER`` base class) and ``utils/__init__.py`` (``copy``,
``Logger``, ``set_optimizer``). Then, in float64 on seeded tensors:

* ``SupConLoss`` (temperature 0.2 and 0.5, ``contrast_mode`` "all" and "one", with labels and without);
* ``RePE.relation_distillation_loss`` and ``RePE.linear_loss`` called on a stand-in ``self`` holding their
  ``Prototypes`` module (3 tasks of 4 classes) for the current and the previous model, a previous model whose
  ``return_hidden`` returns given old features, ``first_task_id`` 0 and ``distill_temp`` 2 and 0.5: the losses
  and the gradients with respect to the features and the prototypes.

Writes tests/data/prd_golden.pt.
"""
import os
import subprocess
import sys
import tempfile
import types

import torch

COMMIT = "26a5ac1227aac84b0b63472424a4063e91efecc7"
here = os.path.dirname(os.path.abspath(__file__))
repo = os.environ["REPO"]
tmp = tempfile.mkdtemp()
for name in ("losses/__init__.py", "losses/supcon_loss.py", "methods/repe.py"):
    src = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:{name}"], check=True, capture_output=True,
                         text=True).stdout
    os.makedirs(os.path.join(tmp, os.path.dirname(name)), exist_ok=True)
    with open(os.path.join(tmp, name), "w") as f:
        f.write(src)
os.makedirs(os.path.join(tmp, "utils"), exist_ok=True)
open(os.path.join(tmp, "methods/__init__.py"), "w").close()
with open(os.path.join(tmp, "methods/er.py"), "w") as f:
    f.write("class ER:\n    pass\n")
with open(os.path.join(tmp, "utils/__init__.py"), "w") as f:
    f.write("import copy\nLogger = object\n\n\ndef set_optimizer(*args, **kwargs):\n    raise NotImplementedError\n")
sys.path.insert(0, tmp)
from losses import SupConLoss  # noqa: E402
from methods.repe import Prototypes, RePE  # noqa: E402

torch.set_default_dtype(torch.float64)
gen = torch.Generator().manual_seed(0)

supcon = []
for temperature in (0.2, 0.5):
    for mode in ("all", "one"):
        for with_labels in (True, False):
            feats = torch.nn.functional.normalize(torch.randn(6, 2, 5, generator=gen), dim=-1)
            labels = torch.tensor([0, 1, 0, 2, 1, 0]) if with_labels else None
            feats.requires_grad_(True)
            loss = SupConLoss(temperature=temperature, device="cpu", contrast_mode=mode)(feats, labels=labels)
            loss.backward()
            supcon.append(dict(features=feats.detach().clone(), labels=labels, temperature=temperature,
                               contrast_mode=mode, loss=loss.detach(), grad=feats.grad.clone()))

prd = []
D, C, T = 6, 4, 3
for distill_temp in (2.0, 0.5):
    cur, prev = Prototypes(D, C, T), Prototypes(D, C, T)
    for m in (cur, prev):
        for head in m.heads.values():
            head.weight.data = torch.randn(C, D, generator=gen)
    feats = (2 * torch.randn(10, D, generator=gen)).requires_grad_(True)
    old_feats = feats.detach() + 0.5 * torch.randn(10, D, generator=gen)
    me = types.SimpleNamespace(prev_model=types.SimpleNamespace(return_hidden=lambda data: old_feats),
                               prev_prototypes=prev, prototypes=cur, first_task_id=0, distill_temp=distill_temp,
                               args=types.SimpleNamespace(n_classes_per_task=C))
    me._get_scores = types.MethodType(RePE._get_scores, me)
    me._distillation_loss = types.MethodType(RePE._distillation_loss, me)
    loss = RePE.relation_distillation_loss(me, feats, data=None, current_task_id=2)
    loss.backward()
    proto_grads = [cur.heads[str(t)].weight.grad.clone() for t in range(T - 1)]
    labels = torch.randint(0, C, (10,), generator=gen)
    # process_inc passes detached features: the prototype loss trains the prototypes only
    lin = RePE.linear_loss(me, feats.detach().clone(), labels=labels.clone(), current_task_id=0)
    head0 = cur.heads["0"].weight
    head0.grad = None
    lin.backward()
    prd.append(dict(feats=feats.detach().clone(), old_feats=old_feats,
                    prototypes=[cur.heads[str(t)].weight.detach().clone() for t in range(T)],
                    old_prototypes=[prev.heads[str(t)].weight.detach().clone() for t in range(T)],
                    temperature=distill_temp, loss=loss.detach(), grad_feats=feats.grad.clone(),
                    grad_prototypes=proto_grads,
                    labels=labels, linear_loss=lin.detach(), linear_grad=head0.grad.clone()))

out = dict(reference=f"naderAsadi/Probing-Continual-Learning@{COMMIT} losses/supcon_loss.py, methods/repe.py "
                     f"(torch {torch.__version__})", supcon=supcon, prd=prd)
path = os.path.join(here, "..", "..", "tests", "data", "prd_golden.pt")
torch.save(out, path)
print("supcon", [round(float(c["loss"]), 5) for c in supcon])
print("prd", [round(float(c["loss"]), 5) for c in prd], "linear", [round(float(c["linear_loss"]), 5) for c in prd])
