"""Golden weights for loss-based sample reweighting, computed by the authors' own functions.

Point LR_REFS at a checkout of github.com/sowmaster/Sample-Level-Loss-Reweighting-ICLR-2025
(golden made at commit edd6f15), then run from the repository root:

    LR_REFS=/path/to/checkout .venv/bin/python tools/golden/make_loss_reweighting_golden.py

Only the weighting functions (``g_func``, ``h_func``, ``f_func_*``) are taken
from their ``src/trainer.py`` (parsed with ``ast``, so its training
dependencies need not be installed) and applied exactly as their training
step does on one device:
``h = h_func(losses, delta=1, l_min=min, l_max=max); f = f_func(h, delta=1);
g = g_func(f - f.max(), l=kl_reg); weights = g / g.sum()``.
Writes tests/data/loss_reweighting_golden.pt.
"""
import ast
import os

import torch

src = open(os.path.join(os.environ["LR_REFS"], "src", "trainer.py")).read()
tree = ast.parse(src)
keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and (n.name in ("g_func", "h_func") or
                                                                     n.name.startswith("f_func_"))]
ns = {"torch": torch}
exec(compile(ast.Module(body=keep, type_ignores=[]), "trainer.py", "exec"), ns)
names = {"linupper": "f_func_linupper", "quadratic": "f_func_mid", "extremes": "f_func_extremes",
         "upper": "f_func_upper"}

g = torch.Generator().manual_seed(0)
cases = []
for i in range(6):
    losses = (torch.rand(32, generator=g, dtype=torch.float64) * 3 + 0.5)
    for strategy, fname in names.items():
        for kl_reg in (0.4, 1.0):
            lmin, lmax = losses.min().item(), losses.max().item()
            h = ns["h_func"](losses, delta=1., l_min=lmin, l_max=lmax)
            f = ns[fname](h, delta=1.)
            gg = ns["g_func"](f - f.max().item(), l=kl_reg)
            w = gg / gg.sum()
            cases.append(dict(losses=losses, strategy=strategy, temperature=kl_reg, weights=w))
torch.save(dict(reference="sowmaster/Sample-Level-Loss-Reweighting-ICLR-2025@edd6f15 src/trainer.py", cases=cases),
           os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data",
                        "loss_reweighting_golden.pt"))
print(len(cases), "cases")
