"""Golden data for LISA (layerwise importance sampling), made by running the authors' callback.

Repository: github.com/OptimalScale/LMFlow, commit a6b97aa3a2efbfa16c71c9628ad2506839bf4bf9 (the last commit that
touched ``src/lmflow/pipeline/utils/lisa_trainer.py``; the mirror's head was f3597dba134e8bb3d2cfedeaaae6fc7296ace924
and holds the same file). Their files are not part of this repository: point REPO at a git directory of theirs (a
clone, or the mirror the search tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_lisa_golden.py

It reads that one file with ``git show`` and imports it unchanged (it needs numpy and transformers only). Their
``DynamicLayerActivationCallback`` is driven as the Hugging Face Trainer drives it: ``on_step_begin(args, state,
control)`` before every optimizer step with ``state.global_step`` = 0, 1, 2, ... (a ``TrainerState``; ``args`` and
``control`` are not read). Their sampling draws from numpy's global random state
(``np.random.choice(range(total_layers), n_layers, replace=False)``), seeded here with ``np.random.seed(seed)``
right after the callback is built.

What it records (tests/data/lisa_golden.json), one entry per case: the number of layers, ``n_layers``,
``interval_steps``, the seed, how the layers are found (``lisa_layers_attribute`` for a stand-in model whose
``layers`` is a ``ModuleList`` of linear layers, or their class-name table for a tiny ``GPT2LMHeadModel`` built from
a config, no download), and per step the active indices (in the order drawn) and each layer's ``requires_grad``.
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, TrainerState

COMMIT = "a6b97aa3a2efbfa16c71c9628ad2506839bf4bf9"
PATH = "src/lmflow/pipeline/utils/lisa_trainer.py"
here = os.path.dirname(os.path.abspath(__file__))
repo = os.environ["REPO"]
git_dir = os.path.join(repo, ".git") if os.path.isdir(os.path.join(repo, ".git")) else repo
source = subprocess.run(["git", "--git-dir", git_dir, "show", f"{COMMIT}:{PATH}"], check=True,
                        capture_output=True, text=True).stdout
tmp = tempfile.mkdtemp()
with open(os.path.join(tmp, "lisa_trainer.py"), "w") as fh:
    fh.write(source)
spec = importlib.util.spec_from_file_location("lmflow_lisa_trainer", os.path.join(tmp, "lisa_trainer.py"))
theirs = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = theirs
spec.loader.exec_module(theirs)


class StandIn(nn.Module):
    """A model whose layers are ``model.layers`` in their attribute syntax."""

    def __init__(self, n):
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.layers = nn.ModuleList(nn.Linear(3, 3) for _ in range(n))
        self.head = nn.Linear(3, 5)


def run(model, n_layers, interval, seed, steps, attribute):
    cb = theirs.DynamicLayerActivationCallback(n_layers=n_layers, interval_steps=interval, model=model,
                                               lisa_layers_attribute=attribute)
    layers = eval("cb." + cb.layers_attribute)
    np.random.seed(seed)
    state = TrainerState()
    active, grads = [], []
    for step in range(steps):
        state.global_step = step
        cb.on_step_begin(None, state, None)
        active.append([int(i) for i in cb.active_layers_indices])
        grads.append([all(p.requires_grad for p in layer.parameters()) for layer in layers])
    return dict(total_layers=len(layers), n_layers=n_layers, interval=interval, seed=seed, steps=steps,
                layers_attribute=cb.layers_attribute, active=active, requires_grad=grads)


def main():
    out = {"commit": COMMIT, "file": PATH, "cases": {}}
    cases = out["cases"]
    cases["standin_6_2_3"] = run(StandIn(6), 2, 3, 0, 20, "model.layers")
    cases["standin_8_3_1"] = run(StandIn(8), 3, 1, 42, 10, "model.layers")
    cases["standin_4_1_5"] = run(StandIn(4), 1, 5, 7, 16, "model.layers")
    cases["standin_5_5_2"] = run(StandIn(5), 5, 2, 3, 6, "model.layers")
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=8, n_head=2, vocab_size=16, n_positions=16))
    cases["gpt2_4_2_20"] = run(gpt2, 2, 20, 11, 61, None)
    path = os.path.join(here, "..", "..", "tests", "data", "lisa_golden.json")
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")
    print("wrote", os.path.normpath(path))


if __name__ == "__main__":
    main()
