"""Golden data for AdAdaGrad's adaptive batch-size tests, made by running the authors' code.

Repository: github.com/timlautk/AdAdaGrad, commit cc126fba4b57c8ea1ffcd5ff5d30dc8891bf9f17 ("Update README.md").
Their files are not part of this repository: point REPO at a git directory of theirs (a clone, or the mirror the
search tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_adadagrad_golden.py

It reads ``tests.py`` at that commit with ``git show`` into a temporary folder and imports it (their code is
PyTorch), with a stub for ``litgpt.utils.chunked_cross_entropy``, which it imports but these functions do not
use. On seeded per-sample gradients (lists of per-parameter ``[B, *shape]`` tensors, float64 and float32, several
batch sizes, small and large eta/theta/nu so that both branches of their max are taken) it runs their
``norm_test``, ``inner_product_test`` and ``orthogonality_test`` (which take a dict; the tensors are passed as
``{str(k): t}``) and keeps all three returns: the ceiled batch size and the two statistics (variance term and
squared norm of the mini-batch gradient). It also runs their ``compute_per_sample_gradients`` (cross-entropy) on a
small seeded MLP. Writes tests/data/adadagrad_golden.pt.
"""
import os
import subprocess
import sys
import tempfile
import types

import torch
from torch import nn

COMMIT = "cc126fba4b57c8ea1ffcd5ff5d30dc8891bf9f17"
here = os.path.dirname(os.path.abspath(__file__))
repo = os.environ["REPO"]
tmp = tempfile.mkdtemp()
src = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:tests.py"], check=True, capture_output=True,
                     text=True).stdout
with open(os.path.join(tmp, "tests.py"), "w") as f:
    f.write(src)
sys.path.insert(0, tmp)
litgpt = types.ModuleType("litgpt")
litgpt_utils = types.ModuleType("litgpt.utils")
litgpt_utils.chunked_cross_entropy = None  # only their compute_loss_litgpt uses it
litgpt.utils = litgpt_utils
sys.modules["litgpt"] = litgpt
sys.modules["litgpt.utils"] = litgpt_utils
import tests as their  # noqa: E402

gen = torch.Generator().manual_seed(0)


def grads(batch, shapes, dtype, mean_scale):
    """Per-sample gradients: a shared mean direction times mean_scale plus unit noise, per tensor."""
    out = []
    for shape in shapes:
        mean = torch.randn(shape, generator=gen, dtype=torch.float64) * mean_scale
        noise = torch.randn((batch, *shape), generator=gen, dtype=torch.float64)
        out.append((mean + noise).to(dtype))
    return out


cases = []
specs = [
    ("b8_f64_noisy", 8, [(5, 3), (5,), (2, 2, 2)], torch.float64, 0.3),
    ("b8_f64_clean", 8, [(5, 3), (5,), (2, 2, 2)], torch.float64, 3.0),
    ("b16_f32", 16, [(7, 4), (7,), (1, 7), (1,)], torch.float32, 1.0),
    ("b2_f64_one_tensor", 2, [(6,)], torch.float64, 1.0),
    ("b32_f32_wide", 32, [(20, 10), (20,)], torch.float32, 0.5),
]
for name, batch, shapes, dtype, scale in specs:
    psg = grads(batch, shapes, dtype, scale)
    d = {str(k): t for k, t in enumerate(psg)}
    results = {}
    for test, fn in (("norm", their.norm_test), ("inner_product", their.inner_product_test),
                     ("orthogonality", their.orthogonality_test)):
        for param in (0.1, 0.5, 2.0, 10.0):
            results[(test, param)] = fn(d, param)
    cases.append(dict(name=name, per_sample_grads=psg, results=results))

# their per-sample gradients (vmap of grad over functional_call, cross-entropy per sample)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
x = torch.randn(7, 6, generator=gen, dtype=torch.float64)
y = torch.randint(0, 3, (7,), generator=gen)
psg_model = their.compute_per_sample_gradients(model, x, y)

out = dict(reference=f"timlautk/AdAdaGrad@{COMMIT} tests.py (torch {torch.__version__})", cases=cases,
           per_sample=dict(state_dict=model.state_dict(), inputs=x, targets=y,
                           grads={k: v.clone() for k, v in psg_model.items()}))
path = os.path.join(here, "..", "..", "tests", "data", "adadagrad_golden.pt")
torch.save(out, path)
print(len(cases), "cases;", {c["name"]: c["results"][("norm", 0.5)] for c in cases})
