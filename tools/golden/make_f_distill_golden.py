"""Golden f-distill weights h(r) and VSD losses, made by running the authors' code (NVlabs/FastGen).

Source: github.com/NVlabs/FastGen at commit 34f30e8 (not on PyPI; PyPI's ``fastgen`` is unrelated):

* ``fastgen/methods/distribution_matching/f_distill.py``: ``all_f_div_weighting_function`` and
  ``FdistillModel._get_f_div_weighting_h``, run as a function of a namespace holding what it reads
  (``config.f_distill`` with FastGen's defaults ratio_lower 0.1, ratio_upper 20, bin_num 10,
  ratio_ema_rate 0.0; ``net.bins`` = ones as ``build_model`` registers them; ``net.noise_scheduler``
  with ``min_t``/``max_t``), with and without ``ratio_normalization``;
* ``fastgen/methods/common_loss.py``: ``variational_score_distillation_loss`` (with ``additional_scale``
  = the h above) and ``expand_like`` from ``fastgen/utils/__init__.py`` (lifted out with ``ast``).

The two files are executed from their source text with stub modules for their fastgen imports
(``DMD2Model``, ``logging_utils``, ``world_size`` = 1, ``BaseNoiseSchedule``). FastGen casts to float32
(``.float()``) whatever the input dtype; for the float64 records (checked at rel 1e-10) that text is
run with ``.float()`` replaced by ``.double()``, and the unmodified float32 run is stored too (checked
at float32 tolerance). ``"rkl"`` is run and its TypeError recorded (its h is a 0-d tensor, and
``len(h)`` fails).

    FASTGEN_REF=/path/to/FastGen PYTHONPATH=src python tools/golden/make_f_distill_golden.py

with their checkout from ``git archive 34f30e8 fastgen/methods/common_loss.py
fastgen/methods/distribution_matching/f_distill.py fastgen/utils/__init__.py | tar -x``; run with
torch 2.13.0 on CPU. Writes tests/data/f_distill_golden.pt.
"""
import ast
import os
import sys
import types
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "f_distill_golden.pt"
REF = Path(os.environ["FASTGEN_REF"])

stubs = {name: types.ModuleType(name) for name in (
    "fastgen", "fastgen.methods", "fastgen.methods.common_loss", "fastgen.utils", "fastgen.utils.logging_utils",
    "fastgen.utils.distributed", "fastgen.networks", "fastgen.networks.noise_schedule",
    "fastgen.configs", "fastgen.configs.methods", "fastgen.configs.methods.config_f_distill")}
stubs["fastgen.methods"].DMD2Model = object
stubs["fastgen.utils.logging_utils"].info = lambda *a, **k: None
stubs["fastgen.utils.distributed"].world_size = lambda: 1
stubs["fastgen.networks.noise_schedule"].BaseNoiseSchedule = object
stubs["fastgen"].utils = stubs["fastgen.utils"]
stubs["fastgen"].methods = stubs["fastgen.methods"]
stubs["fastgen.utils"].logging_utils = stubs["fastgen.utils.logging_utils"]
sys.modules.update(stubs)
stubs["fastgen.utils"].torch = torch
utils_src = (REF / "fastgen/utils/__init__.py").read_text()
fn = next(n for n in ast.parse(utils_src).body if isinstance(n, ast.FunctionDef) and n.name == "expand_like")
exec(compile(ast.Module(body=[fn], type_ignores=[]), "fastgen/utils/__init__.py", "exec"), stubs["fastgen.utils"].__dict__)


def load(double: bool) -> tuple[dict, dict]:
    """The namespaces of common_loss.py and f_distill.py, executed from their text (float casts -> float64 when
    ``double``)."""
    mods = []
    for rel, name in (("fastgen/methods/common_loss.py", "fastgen.methods.common_loss"),
                      ("fastgen/methods/distribution_matching/f_distill.py", "fastgen_f_distill")):
        src = (REF / rel).read_text()
        if double:
            src = src.replace(".float()", ".double()")
        ns = {"__name__": name}
        sys.modules["fastgen.methods.common_loss"].__dict__.update(mods[0] if mods else {})
        exec(compile(src, rel, "exec"), ns)
        mods.append(ns)
    return mods[0], mods[1]


def weight_h(fd: dict, logits, t, div: str, normalize: bool, t_min: float, t_max: float):
    cfg = types.SimpleNamespace(f_div=div, ratio_lower=0.1, ratio_upper=20.0, ratio_normalization=normalize,
                                bin_num=10, ratio_ema_rate=0.0)
    me = types.SimpleNamespace(
        config=types.SimpleNamespace(f_distill=cfg), bin_num=10,
        net=types.SimpleNamespace(bins=torch.ones(10), noise_scheduler=types.SimpleNamespace(min_t=t_min, max_t=t_max)),
        f_div_weighting_function=fd["all_f_div_weighting_function"][div])
    return fd["FdistillModel"]._get_f_div_weighting_h(me, logits, t)


gen = torch.Generator().manual_seed(0)
out: dict = {"h": [], "vsd": [], "rkl_error": None}
DIVS = ("kl", "js", "sf", "neyman", "sh", "jf")
for double in (True, False):
    cl, fd = load(double)
    dtype = torch.float64 if double else torch.float32
    for b, k, spread, (t_min, t_max) in ((16, 1, 2.0, (0.002, 80.0)), (40, 3, 4.0, (0.0, 1.0)),
                                         (7, 1, 12.0, (0.02, 0.98))):
        logits = (spread * torch.randn(b, k, generator=gen, dtype=torch.float64)).to(dtype)
        t = (t_min + (t_max - t_min) * torch.rand(b, generator=gen, dtype=torch.float64) ** 2).to(dtype)
        rec = dict(logits=logits, t=t, t_range=(t_min, t_max), dtype=str(dtype))
        for div in DIVS:
            for normalize in (False, True):
                rec[f"{div}_{'bins' if normalize else 'plain'}"] = weight_h(fd, logits, t, div, normalize, t_min, t_max)
        out["h"].append(rec)
    if double:
        try:
            weight_h(fd, torch.randn(4, 1, dtype=torch.float64), torch.rand(4, dtype=torch.float64), "rkl", True, 0.0, 1.0)
        except TypeError as e:
            out["rkl_error"] = f"TypeError: {e}"
    for shape in ((6, 1, 8, 8), (4, 3, 4, 4)):
        x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        teacher = (x + 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
        fake = (x + 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
        h = (0.5 + torch.rand(shape[0], generator=gen, dtype=torch.float64)).to(dtype)
        rec = dict(x=x, teacher=teacher, fake=fake, h=h)
        for key, scale in (("plain", None), ("scaled", h)):
            xx = x.clone().requires_grad_()
            loss = cl["variational_score_distillation_loss"](xx, teacher, fake, additional_scale=scale)
            loss.backward()
            rec[f"loss_{key}"], rec[f"grad_{key}"] = loss.detach(), xx.grad
        out["vsd"].append(rec)

assert out["rkl_error"] is not None
torch.save(out, OUT)
print(f"wrote {OUT} ({OUT.stat().st_size} bytes); rkl: {out['rkl_error']}")
