"""Golden data for NTK-Attention (seed 108), made by running the authors' ``ntk_attn``.

Repository: github.com/ChristianYang37/chiwun, commit 08a0713 (``src/NTK-Attention/ntk_attn_demo.py``, the
function the README's quick start imports). Point REPO at a git directory of theirs (a clone, or the mirror the
search tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/their/repo PYTHONPATH=src .venv/bin/python tools/golden/make_ntk_attention_golden.py

The file is copied with ``git show`` into a temporary folder (``authors_code.extract``) and imported from there,
with one textual patch, dtype only: their ``.float()`` casts become ``.double()`` so float64 inputs stay float64
end to end (the casts are there for half-precision models; in float32 the patch changes nothing).

Cases (float64, seeded): 8 settings of ``ntk_attn`` (causal or not, nq = nk or nq < nk, one or three heads,
zero / negative / large ``phi_k``, large scores) with the output and the gradients of a fixed linear functional of
it with respect to ``sum_phi_k`` and ``sum_phi_kv``, and, without the causal mask, query, key and value too
(their causal branch multiplies exp's output in place, ``A *= mask``, which autograd refuses to differentiate
through; in their ChatGLM training the attention inputs come from frozen layers, so it never had to); a
contract case with ``phi_k = phi_kv = 0`` (their output next to plain softmax attention).

Output: tests/data/ntk_attention_golden.pt (``torch.load(..., weights_only=True)``).
"""
import importlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_code import extract  # noqa: E402

COMMIT = "08a0713"
FILE = "src/NTK-Attention/ntk_attn_demo.py"
repo = os.environ["REPO"]
tmp = extract(repo, COMMIT, [FILE], on_path=("src/NTK-Attention",))
path = os.path.join(tmp, FILE)
src = open(path).read()
assert src.count(".float()") == 5, src.count(".float()")
open(path, "w").write(src.replace(".float()", ".double()"))
ntk_attn = importlib.import_module("ntk_attn_demo").ntk_attn

SETTINGS = [  # (name, bs, h, nq, nk, d, causal, k_mode, score_scale)
    ("causal-square", 2, 1, 5, 5, 8, True, "randn", 1.0),
    ("plain-square", 2, 3, 6, 6, 8, False, "randn", 1.0),
    ("causal-decode", 1, 3, 2, 7, 4, True, "randn", 1.0),
    ("plain-rect", 2, 2, 3, 9, 16, False, "randn", 1.0),
    ("negative-k", 1, 2, 4, 4, 8, True, "negative", 1.0),
    ("zero-k", 2, 2, 4, 4, 8, False, "zero", 1.0),
    ("large-scores", 1, 2, 5, 5, 8, True, "randn", 6.0),
    ("large-k", 2, 1, 4, 6, 8, False, "large", 1.0),
]


def case(name, bs, h, nq, nk, d, causal, k_mode, scale, seed):
    g = torch.Generator().manual_seed(seed)
    t = dict(dtype=torch.float64, generator=g)
    q = (torch.randn(bs, h, nq, d, **t) * scale)
    k = torch.randn(bs, h, nk, d, **t) * scale
    v = torch.randn(bs, h, nk, d, **t)
    phi_k = torch.randn(1, h, d, 1, **t)
    if k_mode == "negative":
        phi_k = -phi_k.abs()
    elif k_mode == "zero":
        phi_k = torch.zeros_like(phi_k)
    elif k_mode == "large":
        phi_k = phi_k * 50
    phi_kv = torch.randn(1, h, d, d, **t)
    w = torch.randn(bs, h, nq, d, **t)
    # causal: their in-place ``A *= mask`` on exp's output cannot be differentiated through, so (as in their
    # ChatGLM training, where the attention inputs come from frozen layers) only phi_k and phi_kv get gradients
    leaves = [x.clone().requires_grad_(not causal or i >= 3) for i, x in enumerate((q, k, v, phi_k, phi_kv))]
    out = ntk_attn(*leaves, causal_mask=causal)
    (out * w).sum().backward()
    assert out.dtype == torch.float64
    grads = {f"grad_{n}": leaf.grad for n, leaf in zip(("query", "key", "value", "phi_k", "phi_kv"), leaves)
             if leaf.grad is not None}
    return dict(name=name, causal=causal, query=q, key=k, value=v, phi_k=phi_k, phi_kv=phi_kv, weight=w,
                out=out.detach(), **grads)


def main():
    cases = [case(*s, seed=100 + i) for i, s in enumerate(SETTINGS)]
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 2, 5, 8, dtype=torch.float64, generator=g) for _ in range(3))
    out0 = ntk_attn(q, k, v, torch.zeros(1, 2, 8, 1, dtype=torch.float64),
                    torch.zeros(1, 2, 8, 8, dtype=torch.float64), causal_mask=False)
    sm = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1) @ v
    contract = dict(query=q, key=k, value=v, out=out0, softmax=sm)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data",
                       "ntk_attention_golden.pt")
    torch.save(dict(commit=COMMIT, cases=cases, contract=contract), out)
    print("wrote", os.path.normpath(out), os.path.getsize(out), "bytes")


main()
