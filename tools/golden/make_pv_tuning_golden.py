"""Golden PV-Tuning steps on scalar (1- and 2-bit) codebooks, made by running the authors' optimizer.

Source: github.com/Vahe1994/AQLM at commit e79a896: ``src/pv_optimizer.py`` (``StraightThroughAdamW``),
``src/aq.py`` (``QuantizedWeight``), ``src/beam_search_l2.py``, ``src/configurable_adam.py``, ``src/kmeans.py``,
``src/utils.py`` and their imports, copied at that commit into a temporary folder (``authors_code.extract``)
and imported from there unchanged. It runs on CPU as it is: with one process ``torch.distributed`` is never
initialized, so the optimizer takes its unsharded path; nothing is patched. (``src/pv_utils.py`` imports
transformers, which the project venv has.) Their TorchScript helpers are scripted (``AQ_USE_JIT`` unset).

Each case: a ``QuantizedWeight`` with ``in_group_size = out_group_size = num_codebooks = 1`` (a scalar codebook of
2^nbits values shared by the matrix, one scale per output row, AQLM's k-means initialization) of a seeded float64
weight; the dequantized weight as the model's parameter; the loss ``0.5 ||X W^T - Y||^2 / n`` on seeded data;
``StraightThroughAdamW`` in PV mode (``delta_decay = 1``: codebooks and scales by Adam, codes by the linearized V
step (Adam with ``code_betas``; their finetune.py default (0, 0.95) in runs 0 and 1) through beam search of width 1
on the Adam-updated dequantized weight, limited by ``max_code_change_per_step`` and ``code_trust_ratio``). Every
step records the gradient, codes, codebook, scales and the dequantized weight.

Run from the repository root with their repository as a git directory at AQLM_REPO:

    AQLM_REPO=/path/to/AQLM PYTHONPATH=src .venv/bin/python tools/golden/make_pv_tuning_golden.py

Writes tests/data/pv_tuning_golden.pt: 4 runs x 6 steps (settings, data, the initial representation, per-step
records).
"""
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from authors_code import extract  # noqa: E402

torch.set_default_dtype(torch.float64)
COMMIT = "e79a896"
FILES = ["src/__init__.py", "src/aq.py", "src/beam_search_l2.py", "src/beam_search_xtx.py", "src/configurable_adam.py",
         "src/kmeans.py", "src/utils.py", "src/pv_utils.py", "src/pv_optimizer.py"]
extract(os.environ["AQLM_REPO"], COMMIT, FILES)
from src.aq import QuantizedWeight  # noqa: E402
from src.pv_optimizer import StraightThroughAdamW  # noqa: E402

SETTINGS = [
    dict(nbits=1, lr=1e-2, code_lr=0.5, max_code_change=0.1, trust_ratio=None, betas=(0.9, 0.95), eps=1e-8,
         code_betas=(0.0, 0.95)),
    dict(nbits=2, lr=1e-2, code_lr=0.2, max_code_change=0.05, trust_ratio=None, betas=(0.9, 0.95), eps=1e-8,
         code_betas=(0.0, 0.95)),
    dict(nbits=2, lr=5e-3, code_lr=0.3, max_code_change=1.0, trust_ratio=0.05, betas=(0.8, 0.99), eps=1e-6,
         code_betas=(0.8, 0.99)),
    dict(nbits=1, lr=0.0, code_lr=0.4, max_code_change=0.2, trust_ratio=0.02, betas=(0.9, 0.999), eps=1e-8,
         code_betas=(0.9, 0.999)),
]
runs = []
for k, st in enumerate(SETTINGS):
    gen = torch.Generator().manual_seed(500 + k)
    out_f, in_f, n = 6, 10, 32
    w0 = torch.randn(out_f, in_f, generator=gen) * 0.3
    x = torch.randn(n, in_f, generator=gen)
    y = x @ (w0 + 0.2 * torch.randn(out_f, in_f, generator=gen)).T
    torch.manual_seed(600 + k)  # their k-means initialization samples
    qw = QuantizedWeight(reference_weight=w0, in_group_size=1, out_group_size=1, num_codebooks=1,
                         nbits_per_codebook=st["nbits"], max_iter=50, verbose=False, code_dtype=torch.int32)
    weight = nn.Parameter(qw().detach().clone())
    init = dict(codes=qw.get_codes().clone(), codebook=qw.codebooks.detach().clone(), scales=qw.scales.detach().clone())
    opt = StraightThroughAdamW(
        dict(w=weight), dict(w=qw), update_codebooks_and_scales=dict(lr=st["lr"]),
        update_codes=dict(lr=st["code_lr"], betas=st["code_betas"]), beam_size=1, delta_decay=1,
        max_code_change_per_step=st["max_code_change"], code_trust_ratio=st["trust_ratio"],
        lr=st["lr"], betas=st["betas"], eps=st["eps"])
    rec = {key: [] for key in ("grad", "codes", "codebook", "scales", "weight", "loss")}
    for t in range(6):
        loss = 0.5 * (x @ weight.T - y).square().sum() / n
        loss.backward()
        rec["grad"].append(weight.grad.detach().clone())
        rec["loss"].append(loss.detach().clone())
        opt.step()
        opt.zero_grad()
        rec["codes"].append(qw.get_codes().clone())
        rec["codebook"].append(qw.codebooks.detach().clone())
        rec["scales"].append(qw.scales.detach().clone())
        rec["weight"].append(weight.detach().clone())
    changed = [(rec["codes"][t] != (rec["codes"][t - 1] if t else init["codes"])).sum().item() for t in range(6)]
    print(k, st, "codes changed per step", changed, "loss", [round(float(v), 4) for v in rec["loss"]])
    runs.append(dict(settings=st, w0=w0, x=x, y=y, init=init, **rec))

dest = Path("tests/data/pv_tuning_golden.pt")
torch.save({"commit": COMMIT, "runs": runs}, dest)
print(dest, dest.stat().st_size)
