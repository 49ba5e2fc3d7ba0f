"""Golden data for StableMax cross-entropy and the softmax-collapse diagnostics, made by running the authors' code.

Repository: github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability, commit
0cc9e8dc62ce5ed66d29d80eebbaf14da2f71c67 ("Create LICENSE.md"). Their files are not part of this repository:
point REPO at a git directory of theirs (a clone, or the mirror the search tool's ``fetch`` brings) and run from
the repository root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_stablemax_golden.py

It reads ``utils.py`` and ``logger.py`` at that commit with ``git show`` into a temporary folder and imports
them, with stubs for the modules they import but these functions do not use (torchvision-backed datasets,
pandas), then runs, on fixed seeded inputs: ``utils.stablemax_cross_entropy`` (reductions "mean" and "none",
with the gradient of the mean with respect to float32 logits through their float64 cast), ``utils.log_stablemax``,
and ``MetricsLogger.compute_softmax_collapse`` (``softmax_precision`` 16, 32, 64) and
``MetricsLogger.compute_zero_terms`` with their ``utils.cross_entropy_float32``.
Writes tests/data/stablemax_golden.pt.
"""
import os
import subprocess
import sys
import tempfile
import types

import torch

COMMIT = "0cc9e8dc62ce5ed66d29d80eebbaf14da2f71c67"
here = os.path.dirname(os.path.abspath(__file__))
repo = os.environ["REPO"]
tmp = tempfile.mkdtemp()
for name in ("utils.py", "logger.py", "models.py", "constants.py", "binary_operations.py"):
    src = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:{name}"], check=True, capture_output=True,
                         text=True).stdout
    with open(os.path.join(tmp, name), "w") as f:
        f.write(src)
sys.path.insert(0, tmp)
stub = types.ModuleType("datasets")  # theirs imports torchvision; the loss functions never touch it
for cls in ("AlgorithmicDataset", "SparseParityDataset", "BinaryAlgorithmicDataset", "AlgorithmicDatasetTransformer"):
    setattr(stub, cls, type(cls, (), {}))
sys.modules["datasets"] = stub
sys.modules.setdefault("pandas", types.ModuleType("pandas"))  # only MetricsLogger.__init__ uses it
import logger as their_logger  # noqa: E402
import utils as their  # noqa: E402

gen = torch.Generator().manual_seed(0)


def ce_case(name, logits, target):
    x = logits.clone().requires_grad_(True)
    mean = their.stablemax_cross_entropy(x, target, reduction="mean")
    grad, = torch.autograd.grad(mean, x)
    none = their.stablemax_cross_entropy(logits, target, reduction="none")
    return dict(name=name, logits=logits, target=target, mean=mean.detach(), none=none.detach(), grad=grad,
                log_stablemax=their.log_stablemax(logits.double(), dim=-1))


n, c = 16, 7
cases = []
x = torch.randn(n, c, generator=gen) * 3
y = torch.randint(0, c, (n,), generator=gen)
cases.append(ce_case("randn*3", x, y))
x = torch.randn(n, c, generator=gen) * torch.logspace(0, 8, n)[:, None]  # rows scaled 1 .. 1e8
x[:, 0] = x.abs().amax(1) + 1.0                                            # class 0 largest on every row
y = torch.where(torch.arange(n) % 3 == 0, 1, 0)
cases.append(ce_case("scaled_rows", x, y))
x = torch.randn(32, 113, generator=gen) * 20  # the paper's modular-addition width
y = torch.randint(0, 113, (32,), generator=gen)
cases.append(ce_case("p113", x, y))

# softmax collapse: rows of growing scale, so more collapse in float16 than float32 than float64
z = torch.randn(24, 10, generator=gen) * torch.logspace(-1, 3, 24)[:, None]
labels = z.argmax(1)
labels[::5] = (labels[::5] + 1) % 10  # a few misclassified samples
fake = types.SimpleNamespace(_train_output=z, _train_targets=labels)
sc = {}
for bits in (16, 32, 64):
    rows = their_logger.MetricsLogger.compute_softmax_collapse(
        fake, model=None, epoch=0, epoch_position=0, args=types.SimpleNamespace(softmax_precision=bits),
        loss_function=None)
    sc[bits] = rows[0]["value"]
zero = their_logger.MetricsLogger.compute_zero_terms(
    fake, model=None, epoch=0, epoch_position=0, args=None, loss_function=their.cross_entropy_float32)[0]["value"]

out = dict(reference=f"LucasPrietoAl/grokking-at-the-edge-of-numerical-stability@{COMMIT} utils.py, logger.py "
                     f"(torch {torch.__version__})",
           cross_entropy=cases, collapse=dict(logits=z, target=labels, softmax_collapse=sc, zero_terms=zero))
path = os.path.join(here, "..", "..", "tests", "data", "stablemax_golden.pt")
torch.save(out, path)
print(len(cases), "loss cases; softmax_collapse", sc, "zero_terms", zero)
