"""Golden Tent and EATA steps, made by running the authors' own ``tent.py``, ``eata.py`` and the Fisher
block of ``main.py``.

Source: github.com/mr-eggplant/EATA at commit f739b36 (f739b36 "add MIT License"). Their ``Tent`` and
``EATA`` modules wrap a model configured by their ``configure_model`` with the optimizer their
``main.py`` builds (SGD over ``collect_params``); the Fisher dictionary is made by executing, unchanged,
the ``for iter_, (images, targets) in enumerate(fisher_loader, start=1):`` loop that this script takes
from their ``main.py`` (parsed with ``ast``), with a list of (images, labels) batches as ``fisher_loader``
and ``args.gpu = None`` (CPU). Their code configures ``nn.BatchNorm2d`` only: for the MLP cases
(``nn.BatchNorm1d``) the module-level name ``nn`` their ``configure_model``/``collect_params`` read is
replaced by a stand-in whose ``BatchNorm2d`` is ``nn.BatchNorm1d``; nothing else of theirs is changed.

Everything is float64 and seeded: a tiny BN-CNN (Conv2d, BatchNorm2d, ReLU, Linear; 5 classes) and an
MLP (Linear, BatchNorm1d, ReLU, Linear; 5 classes), with the last layer scaled up so that entropies
spread around the margins, and batches of 8 drawn with a shift. Run from the repository root with their
checkout (e.g. ``git archive f739b36``) at TTA_REF:

    TTA_REF=/path/to/EATA PYTHONPATH=src .venv/bin/python tools/golden/make_tta_golden.py

Writes tests/data/tta_golden.pt: a list of cases, each with the method, the architecture, the initial
state_dict, the batches, the wrapper's keyword arguments and the optimizer's (None for the authors'
SGD(lr=2.5e-4, momentum=0.9)), the step at which ``reset()`` is called (or -1), and per call: the returned
logits, the BatchNorm affine parameters afterwards (flattened, in module order), for EATA the cumulative
``num_samples_update_1``/``_2`` and ``current_model_probs`` (NaN while None); Fisher cases also hold the
Fisher batches and the Fisher dictionary {name: (F, theta0)}.
"""
import ast
import importlib.util
import math
import os
import sys
import types
from pathlib import Path

import torch
from torch import nn

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
REF = Path(os.environ["TTA_REF"])
OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "tta_golden.pt"


def load(name):
    spec = importlib.util.spec_from_file_location(f"authors_{name}", REF / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tent, eata = load("tent"), load("eata")
main_tree = ast.parse((REF / "main.py").read_text())
FISHER_LOOP = next(n for n in ast.walk(main_tree) if isinstance(n, ast.For)
                   and "fisher_loader" in ast.unparse(n.iter))
FISHER_CODE = compile(ast.Module(body=[FISHER_LOOP], type_ignores=[]), str(REF / "main.py"), "exec")


def make_model(arch, seed, scale):
    torch.manual_seed(seed)
    if arch == "cnn":
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * 5 * 5, 5))
    else:
        model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))
    with torch.no_grad():
        for m in model.modules():  # non-trivial affine parameters and running statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        model[-1].weight.mul_(scale)
    return model


def batches(arch, seed, n_batches, n=8, shift=0.4, gain=1.3):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 5, 5) if arch == "cnn" else (6,)
    return torch.randn(n_batches, n, *shape, generator=g) * gain + shift


def bn_flat(params):
    return torch.cat([p.detach().reshape(-1) for p in params])


def configure(mod, model, arch):
    if arch == "mlp":  # their code names nn.BatchNorm2d; point it at BatchNorm1d for this model
        real = mod.nn
        mod.nn = types.SimpleNamespace(BatchNorm2d=nn.BatchNorm1d)
        try:
            model = mod.configure_model(model)
            params, _ = mod.collect_params(model)
        finally:
            mod.nn = real
    else:
        model = mod.configure_model(model)
        params, _ = mod.collect_params(model)
    return model, params


def fishers_of(model, fisher_batches):
    """Their main.py Fisher loop, executed unchanged."""
    params = [p for p in model.parameters() if p.requires_grad]
    ns = {"fisher_loader": [(x, torch.zeros(len(x), dtype=torch.long)) for x in fisher_batches],
          "args": types.SimpleNamespace(gpu=None), "subnet": model, "fishers": {}, "torch": torch,
          "train_loss_fn": nn.CrossEntropyLoss(), "ewc_optimizer": torch.optim.SGD(params, 0.001)}
    exec(FISHER_CODE, ns)
    return {k: (v[0].clone(), v[1].clone()) for k, v in ns["fishers"].items()}


def run(method, arch, *, seed, scale, n_batches, kwargs, opt=None, reset_at=-1, fisher_batches=0):
    model = make_model(arch, seed, scale)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    xs = batches(arch, seed + 100, n_batches)
    mod = tent if method == "tent" else eata
    model, params = configure(mod, model, arch)
    case = {"method": method, "arch": arch, "state": state, "batches": xs, "kwargs": dict(kwargs),
            "opt": opt, "reset_at": reset_at}
    ours_kw = dict(kwargs)
    theirs_kw = {"steps": kwargs.get("steps", 1), "episodic": kwargs.get("episodic", False)}
    if method == "eata":
        c = 5
        theirs_kw["e_margin"] = kwargs["e_margin"] if kwargs.get("e_margin") is not None else 0.4 * math.log(c)
        theirs_kw["d_margin"] = kwargs.get("d_margin", 0.05)
        theirs_kw["fisher_alpha"] = kwargs.get("fisher_alpha", 2000.0)
        if fisher_batches:
            fb = batches(arch, seed + 200, fisher_batches, shift=0.0, gain=1.0)
            ewc_params = [p for p in model.parameters() if p.requires_grad]
            assert len(ewc_params) == len(params)
            case["fisher_batches"] = fb
            case["fishers"] = fishers_of(model, fb)
            theirs_kw["fishers"] = {k: list(v) for k, v in case["fishers"].items()}
    o = opt or {"lr": 0.00025, "momentum": 0.9}
    optimizer = torch.optim.SGD(params, o["lr"], momentum=o["momentum"])
    wrapper = mod.Tent(model, optimizer, **theirs_kw) if method == "tent" else mod.EATA(model, optimizer, **theirs_kw)
    outs, flat, n1, n2, ema = [], [], [], [], []
    for t, x in enumerate(xs):
        if t == reset_at:
            wrapper.reset()
        with torch.no_grad():
            outs.append(wrapper(x).detach().clone())
        flat.append(bn_flat(params))
        if method == "eata":
            n1.append(wrapper.num_samples_update_1)
            n2.append(wrapper.num_samples_update_2)
            p = wrapper.current_model_probs
            ema.append(torch.full((5,), math.nan) if p is None else p.detach().clone())
    case["outputs"], case["params"] = torch.stack(outs), torch.stack(flat)
    if method == "eata":
        case["n1"], case["n2"], case["ema"] = torch.tensor(n1), torch.tensor(n2), torch.stack(ema)
        print(f"eata {arch} {kwargs}: n1 {n1} n2 {n2}", file=sys.stderr)
    return case


SGD = {"lr": 0.05, "momentum": 0.9}
CASES = [
    run("tent", "cnn", seed=0, scale=1.0, n_batches=4, kwargs={}, opt=None),
    run("tent", "cnn", seed=1, scale=1.0, n_batches=4, kwargs={"steps": 2}, opt=SGD, reset_at=2),
    run("tent", "mlp", seed=2, scale=1.0, n_batches=4, kwargs={"episodic": True}, opt=SGD),
    run("eata", "cnn", seed=3, scale=6.0, n_batches=5, kwargs={"d_margin": 0.9}, opt=SGD),
    run("eata", "cnn", seed=4, scale=6.0, n_batches=4, kwargs={}, opt=None),
    run("eata", "mlp", seed=5, scale=4.0, n_batches=5, kwargs={"e_margin": 0.9, "d_margin": 0.8, "steps": 2},
        opt=SGD, reset_at=3),
    run("eata", "cnn", seed=6, scale=6.0, n_batches=4, kwargs={"d_margin": 0.9, "fisher_alpha": 50.0},
        opt=SGD, fisher_batches=3),
]

if __name__ == "__main__":
    torch.save(CASES, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes), torch {torch.__version__}")
