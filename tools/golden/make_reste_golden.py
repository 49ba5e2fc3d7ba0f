"""Golden ReSTE gradients, schedules, binary-conv runs and indicators, made by running the authors' code.

Source: github.com/DravenALG/ReSTE at commit 0d3c36a (``model/binary_module/binarized_modules.py``,
``main.py``, ``utils/tools.py``). Those modules read a global ``args`` (argparse at import) and import
torchvision and scipy, so this script copies them at that commit into a temporary folder
(``authors_code.extract``), parses them and executes, unchanged, only ``Binary``, ``Binary_ReSTE``,
``approximate_function``, ``BinarizeConv2d`` (binarized_modules.py), ``ReSTE_Forward``,
``get_fitting_error``, ``get_stability_var`` (tools.py) and the ``ReSTE(epoch)`` schedule nested in
``main()`` (main.py), with ``args`` a namespace this script sets. Nothing of theirs calls ``.cuda()`` on
these paths except main's loop, which is not run (the schedule's output is used as it is). Their ``o``
and ``t`` are float32 tensors; here they are float64 tensors, and float64 is the default dtype.

Run from the repository root with their repository as a git directory at RESTE_REPO (e.g. the mirror of
github.com/DravenALG/ReSTE):

    RESTE_REPO=/path/to/ReSTE PYTHONPATH=src .venv/bin/python tools/golden/make_reste_golden.py

Writes tests/data/reste_golden.pt:
  sign: 7 (o, t) settings, each 223 points (incl. 0, +-interval, +-t and their neighbours) with a random
        incoming gradient and their Binary_ReSTE gradient;
  schedule: 2 (epochs, o_end) settings, o for every epoch 0..epochs-1;
  conv: 4 BinarizeConv2d runs (ReSTE, 1w1a and 1w32a) with weight, input, incoming gradient, output and the
        gradients of weight and input;
  indicators: 3 (two estimating errors, one gradient stability on their parameter naming);
  contract: their STE class raises on backward; sign(0) = 0; the gradient at exactly +-t and +-interval.
"""
import ast
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import Function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from authors_code import extract  # noqa: E402

torch.set_default_dtype(torch.float64)
COMMIT = "0d3c36a"
FILES = ["model/binary_module/binarized_modules.py", "utils/tools.py", "main.py"]
tmp = Path(extract(os.environ["RESTE_REPO"], COMMIT, FILES, on_path=()))

args = SimpleNamespace(estimator="ReSTE", a32=False, epochs=10, o_end=3.0)
theirs = dict(torch=torch, nn=nn, F=F, math=math, Function=Function, args=args)
WANT = {FILES[0]: {"Binary", "Binary_ReSTE", "approximate_function", "BinarizeConv2d"},
        FILES[1]: {"ReSTE_Forward", "get_fitting_error", "get_stability_var"}}
for name, keep in WANT.items():
    tree = ast.parse((tmp / name).read_text())
    body = [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name in keep]
    assert {n.name for n in body} == keep, f"their {name} changed"
    exec(compile(ast.Module(body=body, type_ignores=[]), name, "exec"), theirs)
main_tree = ast.parse((tmp / FILES[2]).read_text())
sched = [n for n in ast.walk(main_tree) if isinstance(n, ast.FunctionDef) and n.name == "ReSTE"]
assert len(sched) == 1, "their main.py changed"
exec(compile(ast.Module(body=sched, type_ignores=[]), FILES[2], "exec"), theirs)

INTERVAL = 0.1
gen = torch.Generator().manual_seed(0)


def points(t):
    base = torch.linspace(-2.5, 2.5, 201).tolist()
    special = [0.0, INTERVAL, -INTERVAL, t, -t, INTERVAL + 1e-7, INTERVAL - 1e-7, -INTERVAL + 1e-7,
               -INTERVAL - 1e-7, t + 1e-7, t - 1e-7, -t + 1e-7, -t - 1e-7, 1e-12, -1e-12, 3.0, -3.0,
               0.5, -0.5, 1.0, -1.0, 5.0]
    x = torch.tensor(base + special)
    assert x.numel() == 223
    return x


sign_cases = []
for o, t in [(1.0, 1.5), (1.5, 1.5), (2.0, 1.5), (3.0, 1.5), (0.5, 1.5), (2.0, 1.0), (3.0, 2.0)]:
    x = points(t).requires_grad_()
    g = torch.rand(223, generator=gen) + 0.5
    out = theirs["Binary_ReSTE"].apply(x, torch.tensor(t), torch.tensor(o))
    out.backward(g)
    sign_cases.append(dict(o=o, t=t, x=x.detach(), grad_out=g, out=out.detach(), grad=x.grad.clone()))

schedules = []
for epochs, o_end in [(10, 3.0), (7, 2.0)]:
    args.epochs, args.o_end = epochs, o_end
    os_ = [float(theirs["ReSTE"](e)[0]) for e in range(epochs)]
    schedules.append(dict(epochs=epochs, o_end=o_end, o=torch.tensor(os_)))

conv_cases = []
for a32, o, t, cfg in [(False, 1.0, 1.5, dict(stride=1, padding=1)), (False, 2.5, 1.5, dict(stride=2, padding=1)),
                       (True, 3.0, 1.5, dict(stride=1, padding=0)), (False, 1.7, 1.2, dict(stride=1, padding=1))]:
    args.estimator, args.a32 = "ReSTE", a32
    conv = theirs["BinarizeConv2d"](3, 4, 3, bias=False, **cfg)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.5)
    conv.o = conv.o_a = torch.tensor(o)
    conv.t = conv.t_a = torch.tensor(t)
    x = (torch.randn(2, 3, 6, 6, generator=gen) * 0.8).requires_grad_()
    out = conv(x)
    g = torch.randn(out.shape, generator=gen)
    out.backward(g)
    conv_cases.append(dict(a32=a32, o=o, t=t, **cfg, weight=conv.weight.detach().clone(), x=x.detach(), grad_out=g,
                           out=out.detach(), grad_weight=conv.weight.grad.clone(), grad_x=x.grad.clone()))


class Net(nn.Module):  # their indicators pick parameters named like layer*.conv*.weight
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Module()
        self.layer1.conv1 = nn.Conv2d(3, 4, 3, bias=False)
        self.layer1.conv2 = nn.Conv2d(4, 4, 3, bias=False)


net = Net()
with torch.no_grad():
    for p in net.parameters():
        p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    net.layer1.conv1.weight[0, 0, 0, 0] = 0.0  # their ReSTE_Forward at exactly 0
y = net.layer1.conv2(torch.tanh(net.layer1.conv1(torch.randn(2, 3, 7, 7, generator=gen))))
(y * torch.randn(y.shape, generator=gen)).sum().backward()
weights = [net.layer1.conv1.weight.detach().clone(), net.layer1.conv2.weight.detach().clone()]
grads = [net.layer1.conv1.weight.grad.clone(), net.layer1.conv2.weight.grad.clone()]
indicators = dict(weights=weights, grads=grads,
                  error_o2=theirs["get_fitting_error"](net, torch.tensor(2.0)).detach(),
                  error_o3=theirs["get_fitting_error"](net, torch.tensor(3.0)).detach(),
                  stability=theirs["get_stability_var"](net).detach())

# contract
try:
    xs = torch.tensor([0.3, -2.0], requires_grad=True)
    theirs["Binary"]().apply(xs).sum().backward()
    ste_error = ""
except Exception as exc:  # their STE keeps ctx.saved_tensors as a tuple
    ste_error = f"{type(exc).__name__}: {exc}"
assert ste_error, "their STE ran"
x0 = torch.tensor([0.0, 1.5, -1.5, 0.1, -0.1], requires_grad=True)
out0 = theirs["Binary_ReSTE"].apply(x0, torch.tensor(1.5), torch.tensor(2.0))
out0.backward(torch.ones(5))
contract = dict(ste_error=ste_error, x=x0.detach(), out=out0.detach(), grad=x0.grad.clone(), o=2.0, t=1.5)

dest = Path(__file__).resolve().parents[2] / "tests" / "data" / "reste_golden.pt"
torch.save(dict(commit=COMMIT, sign=sign_cases, schedule=schedules, conv=conv_cases, indicators=indicators,
                contract=contract), dest)
print("wrote", dest, dest.stat().st_size, "bytes;", ste_error)
