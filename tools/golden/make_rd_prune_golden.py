"""Golden layer-adaptive pruning allocations, made by running the authors' RD_PRUNE code.

Source: github.com/Akimoto-Cris/RD_PRUNE at commit 5bf7b7e (``tools/algo.py``, ``tools/pruners.py``,
``tools/utils.py``). This script writes those three files, unchanged, from the git directory at
RDPRUNE_REPO into a temporary ``tools`` package and imports them. Stubbed, because they are not needed on
these paths and are heavy or absent: ``tools/common.py`` (imports torchvision, their model zoo and sets a
CUDA device) is an empty module, ``tools/__init__.py`` is empty, and ``einops`` (not installed) is a stub
whose ``repeat`` handles the two patterns ``dp_pruning`` uses ("n -> n p", "p -> n p") with
``torch.Tensor.expand``. Nothing run here touches CUDA (``dp_pruning(device="cpu")``, the pruners on a CPU
model). Float64 is the default dtype, so their curves, amounts, model weights and DP table
(``torch.ones((nlayers, T))``, float32 in their runs) are float64 here.

Run from the repository root with their repository as a git directory at RDPRUNE_REPO (e.g. the mirror of
github.com/Akimoto-Cris/RD_PRUNE):

    RDPRUNE_REPO=/path/to/RD_PRUNE PYTHONPATH=src .venv/bin/python tools/golden/make_rd_prune_golden.py

Writes tests/data/rd_prune_golden.pt:
  dp: 7 cases (layer sizes, amount grid, synthetic curves, target sparsity, prev) with their
      ``dp_pruning`` amounts (all with T = (1 - s) N <= 4096, below their 4096-column piece bug, and no
      layer larger than T + 1 weights: beyond that their table lookup ``dp[n-1, c - n]`` indexes out of
      range for the masked-out choices and raises IndexError on CPU);
  curves: a small MLP, calibration input, 11 amounts and the distortions of their ``algo.pruning`` per layer
          (their ``gen_rd_curves`` loop body, without CUDA and files);
  baselines: a conv+linear model's weights and, at 3 sparsities, their LAMP and ERK amounts
             (``_compute_lamp_amounts``, ``_compute_erk_amounts``) and the per-layer pruned fraction left
             by their ``prune_weights_global`` and ``prune_weights_uniform``.
"""
import os
import subprocess
import sys
import tempfile
import types

import numpy as np
import torch
from torch import nn

COMMIT = "5bf7b7e"
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "rd_prune_golden.pt")


def _load_authors(repo: str):
    root = tempfile.mkdtemp(prefix="rdprune_")
    os.makedirs(os.path.join(root, "tools"))
    for f in ("algo.py", "pruners.py", "utils.py"):
        src = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:tools/{f}"], check=True,
                             capture_output=True, text=True).stdout
        with open(os.path.join(root, "tools", f), "w") as fh:
            fh.write(src)
    for f in ("__init__.py", "common.py"):
        open(os.path.join(root, "tools", f), "w").close()
    einops = types.ModuleType("einops")

    def repeat(x, pattern, **kw):
        if pattern == "n -> n p":
            return x[:, None].expand(-1, kw["p"]).clone()
        if pattern == "p -> n p":
            return x[None, :].expand(kw["n"], -1).clone()
        raise NotImplementedError(pattern)

    einops.repeat = repeat
    sys.modules["einops"] = einops
    sys.path.insert(0, root)
    import tools.algo as algo
    import tools.pruners as pruners
    return algo, pruners


class _Layer:
    def __init__(self, n):
        self.weight = torch.empty(n)


def _curves(gen, sizes, grid):
    out = []
    for _ in sizes:
        scale = float(torch.rand(1, generator=gen)) * 2 + 0.1
        power = float(torch.rand(1, generator=gen)) * 3 + 0.5
        noise = torch.rand(len(grid), generator=gen).cumsum(0) * 1e-3
        d = scale * grid ** power + noise - noise[0]
        out.append(d)
    return torch.stack(out)


def main():
    repo = os.environ.get("RDPRUNE_REPO")
    if not repo:
        raise SystemExit("set RDPRUNE_REPO to a git directory of github.com/Akimoto-Cris/RD_PRUNE")
    torch.set_default_dtype(torch.float64)
    algo, pruners = _load_authors(repo)
    gen = torch.Generator().manual_seed(0)

    cases = [
        dict(sizes=[300, 1200, 150, 800, 2000], A=21, s=0.5, prev=None),
        dict(sizes=[400] * 6 + [300, 500], A=21, s=0.8, prev=None),
        dict(sizes=[300, 1200, 150, 800, 2000], A=21, s=0.2, prev=[0.1, 0.3, 0.0, 0.2, 0.4]),
        dict(sizes=[500] * 8, A=11, s=0.6, prev=None),
        dict(sizes=[200] * 11 + [190], A=101, s=0.9, prev=None),
        dict(sizes=[64, 128, 256, 512, 1024, 2048], A=41, s=0.0, prev=None),
        dict(sizes=[700, 33, 1500, 260], A=17, s=0.35, prev=None, random=True),
    ]
    dp_out = []
    for c in cases:
        grid = torch.linspace(0, 1, c["A"])
        if c.get("random"):
            dist = torch.rand(len(c["sizes"]), c["A"], generator=gen)  # non-monotone curves
        else:
            dist = _curves(gen, c["sizes"], grid)
        prev = c["prev"] or [0.0] * len(c["sizes"])
        layers = [_Layer(n) for n in c["sizes"]]
        rd_dist = [dist[i].numpy()[None] for i in range(len(layers))]
        rd_phi = [grid.numpy()[None] for _ in layers]
        phi, dp, g = algo.dp_pruning(layers, rd_dist, rd_phi, c["s"], [[p] for p in prev])
        amounts = torch.tensor([float(p[0]) for p in phi])
        dp_out.append(dict(sizes=c["sizes"], grid=grid, dist=dist, s=c["s"], prev=c["prev"], amounts=amounts))
        print(c["sizes"], c["s"], amounts.tolist())

    # curves: their gen_rd_curves loop body (algo.pruning per layer, mean squared output difference)
    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    x = torch.randn(32, 8)
    amounts = [d / 10 for d in range(11)]
    layers = [mlp[0], mlp[2], mlp[4]]
    with torch.no_grad():
        y = mlp(x)
        dist = torch.empty(len(layers), len(amounts))
        for li, layer in enumerate(layers):
            w0 = layer.weight.clone()
            for j, a in enumerate(amounts):
                layer.weight.data = algo.pruning(layer.weight, a)
                dist[li, j] = ((y - mlp(x)) ** 2).mean()
                layer.weight.data = w0
    curves = dict(state=mlp.state_dict(), x=x, amounts=amounts, dist=dist)

    # baselines
    torch.manual_seed(2)

    def model():
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(64, 32),
                             nn.Linear(32, 10))

    base = model()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    sparsities = [0.3, 0.7, 0.95]
    res = []
    for s in sparsities:
        lamp = torch.stack([torch.as_tensor(a).double() for a in pruners._compute_lamp_amounts(base, s)])
        erk = pruners._compute_erk_amounts(base, s).double()
        fr = {}
        for name, fn in (("global", pruners.prune_weights_global), ("uniform", pruners.prune_weights_uniform)):
            m = model()
            m.load_state_dict(state)
            fn(m, s)
            fr[name] = torch.tensor([1.0 - float(mm.weight_mask.mean()) for mm in m if hasattr(mm, "weight_mask")])
        res.append(dict(s=s, lamp=lamp, erk=erk, **fr))
        print(s, lamp.tolist(), erk.tolist(), fr)
    baselines = dict(state=state, results=res)
    torch.save(dict(dp=dp_out, curves=curves, baselines=baselines, commit=COMMIT), OUT)
    print("wrote", os.path.abspath(OUT))


if __name__ == "__main__":
    main()
