"""Golden data for ScaleLong's long-skip-connection scaling, made by running the authors' UViT.

Repository: github.com/sail-sg/ScaleLong, commit 4ca368c467b715d83b8f555625e523ea8264a298 ("Update README.md").
Their files are not part of this repository: point REPO at a git directory of theirs (a clone, or the mirror the
search tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/their/repo OMP_NUM_THREADS=1 .venv/bin/python tools/golden/make_scalelong_golden.py

It reads ``libs/uvit.py`` and ``libs/timm.py`` at that commit with ``git show`` into a temporary package ``libs``
and imports it. Their code imports ``einops`` (not installed here); a stub gives the three ``rearrange`` patterns
their ``UViT.forward`` uses, written with reshape/permute. For each of their five ``scalelong`` modes
(0 origin, 1 1/sqrt(2)-CS, 2 CS with kappa 0.5 and 0.8, 3 LS, 4 LS non-share) it builds a small seeded UViT
(img 8, patch 2, embed 16, depth 6 so 3 long skips, 17 tokens), runs one forward on a seeded image and time,
and records with hooks the output of each ``in_blocks`` block (the unscaled skips, encoder order) and the
``skip`` argument each ``out_blocks`` block receives (the scaled skip, decoder order), plus, for LS, the
calibration modules' state and the gradients of ``sum(scaled_skips * weights)`` with respect to the unscaled
skips and the calibration parameters. Writes tests/data/scalelong_golden.pt.
"""
import os
import subprocess
import sys
import tempfile
import types

import torch

COMMIT = "4ca368c467b715d83b8f555625e523ea8264a298"
here = os.path.dirname(os.path.abspath(__file__))
repo = os.environ["REPO"]
tmp = tempfile.mkdtemp()
os.makedirs(os.path.join(tmp, "libs"))
open(os.path.join(tmp, "libs", "__init__.py"), "w").close()
for name in ("libs/uvit.py", "libs/timm.py"):
    src = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:{name}"], check=True, capture_output=True,
                         text=True).stdout
    with open(os.path.join(tmp, name), "w") as f:
        f.write(src)
sys.path.insert(0, tmp)


def rearrange(x, pattern, **kw):
    """The patterns their UViT.forward uses (flash attention and unpatchify)."""
    if pattern == "B L (K H D) -> K B H L D":
        b, l, _ = x.shape
        return x.reshape(b, l, kw["K"], kw["H"], -1).permute(2, 0, 3, 1, 4)
    if pattern == "B H L D -> B L (H D)":
        b, h, l, d = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, l, h * d)
    if pattern == "B (h w) (p1 p2 C) -> B C (h p1) (w p2)":
        b, hw, _ = x.shape
        h, p1 = kw["h"], kw["p1"]
        w = hw // h
        x = x.reshape(b, h, w, p1, p1, -1)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(b, -1, h * p1, w * p1)
    raise NotImplementedError(pattern)


einops = types.ModuleType("einops")
einops.rearrange = rearrange
sys.modules["einops"] = einops
from libs import uvit  # noqa: E402

cfg = dict(img_size=8, patch_size=2, in_chans=3, embed_dim=16, depth=6, num_heads=2, mlp_ratio=2.0,
           qkv_bias=False, mlp_time_embed=False, num_classes=-1, conv=True, skip=True)
cases = []
for mode, kappa in ((0, 0.5), (1, 0.5), (2, 0.5), (2, 0.8), (3, 0.5), (4, 0.5)):
    torch.manual_seed(0)
    net = uvit.UViT(scalelong=mode, kappa=kappa, **cfg)
    gen = torch.Generator().manual_seed(1)
    img = torch.randn(2, 3, 8, 8, generator=gen)
    t = torch.rand(2, generator=gen) * 1000
    skips, scaled = [], []
    hooks = [b.register_forward_hook(lambda m, a, out: skips.append(out)) for b in net.in_blocks]
    hooks += [b.register_forward_pre_hook(lambda m, a: scaled.append(a[1])) for b in net.out_blocks]
    out = net(img, t)
    for h in hooks:
        h.remove()
    case = dict(mode=mode, kappa=kappa, skips=[s.detach() for s in skips], scaled=[s.detach() for s in scaled])
    if mode in (3, 4):
        # gradients through their calibration module(s), as their out blocks apply them (decoder order)
        leaves = [s.detach().clone().requires_grad_(True) for s in skips]
        se = [net.se] * 3 if mode == 3 else list(net.se)
        outs = [leaves[2 - k] * se[k](leaves[2 - k]) for k in range(3)]
        wgen = torch.Generator().manual_seed(2)
        weights = [torch.randn(o.shape, generator=wgen) for o in outs]
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        params = list(net.se.parameters())
        grads = torch.autograd.grad(loss, leaves + params)
        case.update(se_state={k: v.clone() for k, v in net.se.state_dict().items()}, weights=weights,
                    grad_skips=list(grads[:3]), grad_params=dict(zip([n for n, _ in net.se.named_parameters()],
                                                                     grads[3:])))
    cases.append(case)
meta = dict(repo="github.com/sail-sg/ScaleLong", commit=COMMIT, torch=str(torch.__version__), config=cfg)
torch.save(dict(meta=meta, cases=cases), os.path.join(here, "..", "..", "tests", "data", "scalelong_golden.pt"))
print("wrote", len(cases), "cases")
