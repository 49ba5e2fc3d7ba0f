"""Golden Robust Weight Signatures and patched weights, made by running the authors' own functions.

Source: github.com/VITA-Group/Robust_Weight_Signatures at commit 57b695d (the initial commit):
``decompose`` from ``model_patching.py`` and ``select_layers``, ``get_projection`` from ``tools.py``. Their
modules import advertorch, torchvision, seaborn and the CIFAR/Tiny-ImageNet loaders at the top, so this
script parses the two files with ``ast`` and executes those three function definitions unchanged, in a
namespace holding ``torch``, their ``select_layers``/``get_projection`` and the one global ``decompose``
reads, ``args.arch = 'vgg16'`` (their argparse). ``Tensor.cuda`` is made the identity so their code runs
on CPU. Their ``main`` builds the patch weights as float32; here they are float64 tensors, so the float64
weights are not rounded. Nothing of their math is replaced.

The models are tiny VGG-style networks (``features`` = 3 convolutions with ReLU, ``classifier`` =
Linear, the key names their ``select_layers(..., 'vgg16')`` expects), float64, seeded: one pretrained
model, a clean and three robust models near it (pretrained + seeded deltas, the robust ones sharing part
of the clean delta, so the projection matters).

Cases saved (tests/data/rws_golden.pt, a dict):
- ``pretrained``, ``clean``, ``robust`` (list of 3): the state dicts;
- ``keys[k]``: their ``select_layers(clean, k, 'vgg16')`` for k = 1, 2, 3;
- ``signature[k][i]``: the signature of robust model i on k layers: their ``decompose([robust_i],
  pretrained, zeros, clean, weight=[1], keep_num=k)`` restricted to ``keys[k]`` (patching zeros gives
  the signature itself);
- ``patched[name]``: ``decompose(robust, pretrained, clean, clean, weight=w, keep_num=2)`` for the
  weights ``w`` in ``weights[name]``: ``alpha1`` (their ``--alpha 1`` over 3 corruptions, w = 1/3 each),
  ``mixed`` (w = 0.5, 1.0, -0.25), and ``single`` (robust model 0 alone, w = 0.7), with ``patch_into``
  set to a different model (a "continually updated" clean backbone) for the last.

Run from the repository root with their checkout (e.g. ``git archive 57b695d | tar -x``) at RWS_REF:

    RWS_REF=/path/to/Robust_Weight_Signatures PYTHONPATH=src .venv/bin/python tools/golden/make_rws_golden.py
"""
import ast
import os
import types
from pathlib import Path

import torch
from torch import nn

REF = Path(os.environ["RWS_REF"])
OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "rws_golden.pt"


def their_functions(path: Path, names: set[str]) -> ast.Module:
    tree = ast.parse(path.read_text())
    return ast.Module(body=[n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names],
                      type_ignores=[])


ns = {"torch": torch, "args": types.SimpleNamespace(arch="vgg16")}
exec(compile(their_functions(REF / "tools.py", {"select_layers", "get_projection"}), str(REF / "tools.py"), "exec"), ns)
exec(compile(their_functions(REF / "model_patching.py", {"decompose"}), str(REF / "model_patching.py"), "exec"), ns)
torch.Tensor.cuda = lambda self, *a, **k: self  # their code moves tensors to the GPU; run it on CPU


def build() -> nn.Module:
    """The golden architecture (also built by tests/tta/test_rws.py)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1),
                                          nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1), nn.ReLU())
            self.classifier = nn.Linear(3 * 4 * 4, 5)

        def forward(self, x):
            return self.classifier(self.features(x).flatten(1))

    return Net().double()


def main():
    torch.manual_seed(206)
    pretrained = build().state_dict()
    delta = {k: 0.1 * torch.randn_like(v) for k, v in pretrained.items()}
    clean = {k: v + delta[k] for k, v in pretrained.items()}
    robust = [{k: v + a * delta[k] + 0.1 * torch.randn_like(v) for k, v in pretrained.items()}
              for a in (0.5, -0.3, 1.2)]
    other = {k: v + 0.05 * torch.randn_like(v) for k, v in clean.items()}
    zeros = {k: torch.zeros_like(v) for k, v in clean.items()}
    one = torch.ones(1, dtype=torch.float64)

    keys, signature = {}, {}
    for k in (1, 2, 3):
        keys[k] = ns["select_layers"](clean, k, "vgg16")
        signature[k] = [{key: ns["decompose"]([r], pretrained, zeros, clean, weight=one, keep_num=k)[key]
                         for key in keys[k]} for r in robust]
    weights = {"alpha1": torch.full((3,), 1 / 3, dtype=torch.float64),
               "mixed": torch.tensor([0.5, 1.0, -0.25], dtype=torch.float64),
               "single": torch.tensor([0.7], dtype=torch.float64)}
    patched, patch_into = {}, {"alpha1": "clean", "mixed": "clean", "single": "other"}
    for name, w in weights.items():
        rs = robust[:len(w)]
        into = clean if patch_into[name] == "clean" else other
        patched[name] = ns["decompose"](rs, pretrained, into, clean, weight=w, keep_num=2)
    torch.save({"pretrained": pretrained, "clean": clean, "robust": robust, "other": other, "keys": keys,
                "signature": signature, "weights": weights, "patch_into": patch_into, "patched": patched,
                "torch": str(torch.__version__), "source": "VITA-Group/Robust_Weight_Signatures@57b695d"}, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes); keys[2] = {keys[2]}")


if __name__ == "__main__":
    main()
