"""Golden data for DynMoLE (seed 127), made by running the authors' routing, loss and MoE block.

Repository: github.com/mikecovlee/DynMoLE, commit 2f428d38 (their HEAD 9354b27 fails to compile under
``torch.jit.script``: ``tsallis_entropy(a=...)``). Point REPO at a git directory of theirs (a clone, or the mirror
the search tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_dynmole_golden.py

Their package imports transformers and more at import time, so the needed definitions are taken out of two files
with ``ast`` (copied with ``git show`` into a temporary folder, ``authors_code.extract``) and executed there:
``tsallis_entropy`` (``moe_peft/common/moe_utils.py``), ``_dynamic_routing``, ``_dynamic_load_balancing_loss_func``
and ``DynMoleSparseMoe`` (``moe_peft/adapters/dynmole/model.py``), their ``torch.jit.script`` decorators kept.
Two textual patches, both dtype only, so that float64 inputs stay float64 end to end:

* ``tsallis_entropy``: the normaliser ``torch.tensor(X, dtype=torch.float32)`` becomes
  ``torch.full([], X, dtype=p.dtype)`` (gradwise normalises in the input dtype; under TorchScript even
  ``torch.tensor(X, dtype=torch.float64)`` rounds X through float32, so ``full`` is used). The unpatched
  function is run too (``contract/raw_entropy``): it differs from the patched one by the float32 rounding of
  the normaliser only.
* ``DynMoleSparseMoe``: its float32 gate, ``dtype_`` and softmax become float64. The block's LoRA experts are a
  stand-in object whose ``lora_forward(x)`` is their ``lora_b(lora_a(dropout(x))) * scaling`` with no dropout,
  written here as ``(x @ Aᵀ) @ Bᵀ * scaling``; its residual is zero, so the block returns the adapter delta.

Cases (float64): 8 routing settings (weights, entropy and the gradient of a fixed linear functional of both with
respect to the router logits), 4 router losses with gradients (two with a padding mask, rows ordered
[layer, batch, seq]), 3 layer deltas with gradients, 5 contract cases (unnormalised Tsallis and Shannon entropy,
the raw float32-normaliser entropy, a uniform row, a one-hot row).

Output: tests/data/dynmole_golden.pt (``torch.load(..., weights_only=True)``).
"""
import ast
import importlib
import math
import os
import sys
import types
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_code import extract  # noqa: E402

COMMIT = "2f428d38"
here = os.path.dirname(os.path.abspath(__file__))
repo = os.environ["REPO"]
FILES = ["moe_peft/common/moe_utils.py", "moe_peft/adapters/dynmole/model.py"]
tmp = extract(repo, COMMIT, FILES, on_path=())


HEADER = """import math
from typing import Optional, Tuple
import torch
import torch.nn.functional as F
Linear = object
LLMMoeBlock = torch.nn.Module
DynMoleConfig = object
"""


def _exact_normaliser(src: str) -> str:
    """``torch.tensor(X, dtype=torch.float32)`` -> ``torch.full([], X, dtype=p.dtype)`` in both branches.
    (``dtype=p.dtype`` alone is not enough: under TorchScript ``torch.tensor(float)`` rounds through float32.)"""
    out, n = src, 0
    while "torch.tensor(" in out:
        i = out.index("torch.tensor(")
        j = out.index(", dtype=torch.float32)", i)
        out = out[:i] + "torch.full([], " + out[i + len("torch.tensor("):j] + ", dtype=p.dtype)" + \
            out[j + len(", dtype=torch.float32)"):]
        n += 1
    assert n == 2, n
    return out


def load(patch: bool):
    """Writes the kept definitions (with their decorators) into a module file and imports it (TorchScript needs
    the source on disk)."""
    parts = [HEADER]
    for name, keep in zip(FILES, [{"tsallis_entropy"},
                                  {"_dynamic_routing", "_dynamic_load_balancing_loss_func", "DynMoleSparseMoe"}]):
        text = open(os.path.join(tmp, name)).read()
        for node in ast.parse(text).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in keep:
                lines = text.splitlines()[node.decorator_list[0].lineno - 1 if node.decorator_list
                                          else node.lineno - 1:node.end_lineno]
                src = "\n".join(lines)
                if patch and node.name == "tsallis_entropy":
                    src = _exact_normaliser(src)
                if node.name == "DynMoleSparseMoe":
                    src = src.replace("torch.float32", "torch.float64")
                parts.append(src)
    mod = f"dynmole_theirs_{'patched' if patch else 'raw'}"
    with open(os.path.join(tmp, mod + ".py"), "w") as f:
        f.write("\n\n\n".join(parts) + "\n")
    if tmp not in sys.path:
        sys.path.insert(0, tmp)
    return vars(importlib.import_module(mod))


theirs = load(True)
raw = load(False)
g = torch.Generator().manual_seed(127)
D = torch.float64


def randn(*shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=D) * scale


ROUTE_KEYS = ("top_p", "keep_top_k", "entropy_threshold", "entropy_index", "entropy_eps")
DEFAULTS = dict(top_p=0.75, keep_top_k=2, entropy_threshold=0.9, entropy_index=1.1, entropy_eps=1e-5)


def their_route(probs, r):
    ent, w = theirs["_dynamic_routing"](probs, r["entropy_threshold"], r["entropy_index"], r["entropy_eps"],
                                        r["keep_top_k"], r["top_p"])
    return w, ent


ROUTING = [  # (rows, experts, logit scale, overrides)
    (40, 6, 1.5, {}),
    (40, 6, 2.0, dict(top_p=0.5, keep_top_k=1)),
    (40, 6, 1.0, dict(top_p=1.0)),
    (40, 6, 1.0, dict(entropy_threshold=1.0)),
    (40, 6, 1.5, dict(entropy_index=1.0, entropy_threshold=0.8)),
    (40, 6, 1.5, dict(entropy_index=2.0, entropy_threshold=0.7)),
    (30, 4, 1.0, dict(keep_top_k=4, entropy_threshold=0.95)),
    (50, 8, 2.5, dict(top_p=0.9, keep_top_k=3, entropy_threshold=0.95, entropy_eps=1e-3, entropy_index=1.5)),
]
routing = []
for rows, e, scale, over in ROUTING:
    r = {**DEFAULTS, **over}
    logits = randn(rows, e, scale=scale).requires_grad_(True)
    cw, ce = randn(rows, e), randn(rows)
    w, ent = their_route(F.softmax(logits, -1), r)
    ((w * cw).sum() + (ent * ce).sum()).backward()
    routing.append(dict(route=r, logits=logits.detach(), cw=cw, ce=ce, weights=w.detach(), entropy=ent.detach(),
                        grad=logits.grad))

LOSSES = [  # (layers, batch, seq, experts, padding, loss coefs, route overrides)
    (2, 3, 5, 6, False, (0.01, 0.001), {}),
    (2, 3, 5, 6, True, (0.01, 0.001), {}),
    (3, 2, 4, 6, True, (0.5, 0.2), dict(entropy_index=1.0, entropy_threshold=0.85, top_p=0.6)),
    (1, 4, 3, 4, False, (0.1, 0.05), dict(keep_top_k=1, top_p=0.6)),
]
losses = []
for layers, b, s, e, pad, (ec, bc), over in LOSSES:
    r = {**DEFAULTS, **over}
    logits = randn(layers * b * s, e, scale=1.5).requires_grad_(True)
    mask = None
    if pad:
        lens = torch.randint(1, s + 1, (b,), generator=g)
        lens[0] = s
        mask = (torch.arange(s)[None, :] < lens[:, None]).long()
    loss = theirs["_dynamic_load_balancing_loss_func"](logits, r["entropy_threshold"], r["entropy_index"],
                                                      r["entropy_eps"], r["keep_top_k"], r["top_p"], ec, bc, mask)
    loss.backward()
    losses.append(dict(route=r, entropy_coef=ec, balance_coef=bc, logits=logits.detach(),
                       attention_mask=torch.empty(0, dtype=torch.long) if mask is None else mask,
                       loss=loss.detach(), grad=logits.grad))

DELTAS = [  # (batch, seq, in, out, experts, rank, scaling, route overrides)
    (2, 5, 12, 10, 6, 4, 2.0, {}),
    (3, 4, 16, 8, 4, 2, 0.5, dict(top_p=0.5, keep_top_k=1, entropy_threshold=0.8)),
    (1, 7, 10, 12, 8, 3, 1.0, dict(entropy_index=1.0, entropy_threshold=1.0, top_p=0.9)),
]
deltas = []
for b, s, din, dout, e, rank, scaling, over in DELTAS:
    r = {**DEFAULTS, **over}
    x = randn(b, s, din).requires_grad_(True)
    wr = randn(e, din, scale=0.6).requires_grad_(True)
    A = randn(e, rank, din, scale=0.3).requires_grad_(True)
    B = randn(e, dout, rank, scale=0.3).requires_grad_(True)
    cfg = types.SimpleNamespace(adapter_name="a", num_experts_=e, router_init_range_=5.0,
                                entropy_threshold_=r["entropy_threshold"], entropy_index_=r["entropy_index"],
                                entropy_eps_=r["entropy_eps"], keep_top_k_=r["keep_top_k"], top_p_=r["top_p"])
    block = theirs["DynMoleSparseMoe"](din, torch.device("cpu"), cfg, gate=wr.detach())
    assert block.gate_.weight.dtype == D
    loras = {f"moe.a.experts.{i}": types.SimpleNamespace(
        lora_forward=(lambda h, i=i: (h @ A[i].T) @ B[i].T * scaling)) for i in range(e)}
    out = block(torch.zeros(b, s, dout, dtype=D), x, types.SimpleNamespace(loras_=loras))
    c = randn(b, s, dout)
    (out * c).sum().backward()
    deltas.append(dict(route=r, scaling=scaling, x=x.detach(), router_weight=wr.detach(), lora_A=A.detach(),
                       lora_B=B.detach(), c=c, delta=out.detach(), grad_x=x.grad, grad_router=block.gate_.weight.grad,
                       grad_A=A.grad, grad_B=B.grad, router_logits=block.router_logits_.detach()))

p = F.softmax(randn(20, 6, scale=1.5), -1)
contract = dict(
    probs=p,
    tsallis_unnorm=theirs["tsallis_entropy"](p, 1.3, False, 1e-5),
    shannon_unnorm=theirs["tsallis_entropy"](p, 1.0, False, 1e-5),
    shannon_norm=theirs["tsallis_entropy"](p, 1.0, True, 1e-5),
    raw_entropy=raw["tsallis_entropy"](p, 1.1, True, 1e-5),
)
uni = torch.full((3, 6), 1 / 6, dtype=D)
contract["uniform_weights"], contract["uniform_entropy"] = their_route(uni, DEFAULTS)
hot = torch.eye(6, dtype=D)[:3]
contract["onehot_weights"], contract["onehot_entropy"] = their_route(hot, DEFAULTS)

out = os.path.join(here, "..", "..", "tests", "data", "dynmole_golden.pt")
torch.save(dict(commit=COMMIT, routing=routing, losses=losses, deltas=deltas, contract=contract), out)
print("wrote", os.path.normpath(out), os.path.getsize(out), "bytes")
