"""Golden LSQ fake-quantization outputs and gradients, made by running lsq-net's quantizer.

Source: github.com/zhutmost/lsq-net at commit 1f644e9 (``quan/quantizer/lsq.py``: ``grad_scale``,
``round_pass``, ``LsqQuan``; ``quan/quantizer/quantizer.py``: ``Quantizer``), an unofficial re-implementation
of "Learned Step Size Quantization" (Esser et al., ICLR 2020, arXiv 1902.08153; the authors released no code).
Its package ``quan/__init__.py`` imports the rest of their framework, so this script copies the two files at
that commit into a temporary folder (``authors_code.extract``), parses them and executes, unchanged, only
those classes and functions, with ``t`` = torch. float64 is the default dtype.

Run from the repository root with their repository as a git directory at LSQ_REPO (e.g. the mirror of
github.com/zhutmost/lsq-net):

    LSQ_REPO=/path/to/lsq-net PYTHONPATH=src .venv/bin/python tools/golden/make_lsq_golden.py

Writes tests/data/lsq_golden.pt:
  runs: 6 settings (bits, all_positive, symmetric, per_channel): a [6, 5, 3, 3] tensor, their ``init_from``
        step, a random incoming gradient, their output and the gradients of x and of the step;
  boundary: x exactly at -Q_N s and Q_P s (4-bit signed, step 0.5): their output and gradients, where the
            closed-interval ``torch.clamp`` differs from the paper's formulas (module docstring of
            gradwise.compression.lsq).
"""
import ast
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from authors_code import extract  # noqa: E402

torch.set_default_dtype(torch.float64)
COMMIT = "1f644e9"
FILES = ["quan/quantizer/quantizer.py", "quan/quantizer/lsq.py"]
tmp = Path(extract(os.environ["LSQ_REPO"], COMMIT, FILES, on_path=()))
theirs = dict(t=torch)
WANT = {FILES[0]: {"Quantizer"}, FILES[1]: {"grad_scale", "round_pass", "LsqQuan"}}
for name, keep in WANT.items():
    tree = ast.parse((tmp / name).read_text())
    body = [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name in keep]
    assert {n.name for n in body} == keep, f"their {name} changed"
    exec(compile(ast.Module(body=body, type_ignores=[]), name, "exec"), theirs)
LsqQuan = theirs["LsqQuan"]

SETTINGS = [  # bits, all_positive, symmetric, per_channel
    (2, False, False, False), (3, False, True, False), (4, False, False, False),
    (4, True, False, False), (4, False, False, True), (8, False, False, True)]


def run(q, x, gy):
    x = x.clone().requires_grad_(True)
    y = q(x)
    y.backward(gy)
    return y.detach(), x.grad.detach(), q.s.grad.detach().clone()


gen = torch.Generator().manual_seed(20)
runs = []
for bits, all_positive, symmetric, per_channel in SETTINGS:
    w = torch.randn(6, 5, 3, 3, generator=gen) * 0.3
    x = w.abs() if all_positive else w
    q = LsqQuan(bits, all_positive=all_positive, symmetric=symmetric, per_channel=per_channel)
    q.init_from(w)
    step = q.s.detach().clone()
    # widen the range so that values fall on both sides of the clip points
    x = x * (1.5 * max(1.0, q.thd_pos ** 0.5 / 2))
    gy = torch.randn(x.shape, generator=gen)
    y, gx, gs = run(q, x, gy)
    runs.append(dict(bits=bits, all_positive=all_positive, symmetric=symmetric, per_channel=per_channel,
                     w=w, x=x, step=step, gy=gy, y=y, gx=gx, gs=gs, q_n=-q.thd_neg, q_p=q.thd_pos))

q = LsqQuan(4, per_channel=False)
q.s = torch.nn.Parameter(torch.tensor([0.5]))
xb = torch.tensor([-8 * 0.5, 7 * 0.5, -9 * 0.5, 8 * 0.5, 0.3])
gyb = torch.ones(5)
yb, gxb, gsb = run(q, xb, gyb)
boundary = dict(x=xb, step=torch.tensor([0.5]), gy=gyb, y=yb, gx=gxb, gs=gsb)

out = Path(__file__).resolve().parents[2] / "tests" / "data" / "lsq_golden.pt"
torch.save(dict(commit=COMMIT, runs=runs, boundary=boundary), out)
print(f"wrote {out} ({out.stat().st_size} bytes): {len(runs)} runs + boundary")
