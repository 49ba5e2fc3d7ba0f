"""Golden RMT runs, made by running the authors' own ``RMT`` class and ``SymmetricCrossEntropy``.

Source: github.com/mariodoebler/test-time-adaptation at commit 8b2ed63: ``classification/methods/rmt.py``
(``RMT``), ``classification/methods/base.py`` (``TTAMethod``), ``classification/utils/losses.py``,
``classification/utils/misc.py`` (``ema_update_model``) and ``classification/utils/registry.py``, all run
unchanged. Stubbed is only their plumbing, never the math: ``torchvision`` (imported by ``base.py`` for an
``isinstance`` check against ``transforms.Compose``; it does not import here), ``models.model``
(``split_up_model`` splits our ``nn.Sequential`` into all-but-last and last layer, as theirs splits a
network at its classifier; ``ResNetDomainNet126`` is an empty class), ``augmentations.transforms_cotta``
(``get_tta_transforms`` returns the fixed, deterministic ``augment`` below, so runs are reproducible) and
``datasets.data_loading`` (``get_source_loader`` returns a list of source batches). The config is a plain
namespace with their option names. The prototypes are given: they are saved where their code looks for
them (``CKPT_DIR/prototypes/protos_cifar10_c_Standard.pth``) in a temporary directory, so it loads them;
the warm-up runs because no warm-up checkpoint exists there.

Everything is float64 (default dtype, so their projector is float64 too), CPU, seeded right before their
``RMT`` is built (the projector's initialization draws from the global RNG, and gradwise's ``RMT`` draws
the same). Cases: a BatchNorm2d CNN with source replay, a 2-step warm-up, Adam, and a ``reset()``; the
same CNN source-free (``LAMBDA_CE_SRC = 0``, no warm-up; gradwise runs it with ``source_batches=None``);
an MLP with BatchNorm1d, SGD (Nesterov momentum) and other weights, temperature and momentum. Run from the
repository root with their checkout (e.g. ``git archive 8b2ed63 | tar -x``) at RMT_REF:

    RMT_REF=/path/to/test-time-adaptation PYTHONPATH=src .venv/bin/python tools/golden/make_rmt_golden.py

Writes tests/data/rmt_golden.pt: ``sce`` (logits pairs, alphas and their ``SymmetricCrossEntropy``
values) and ``cases``, each with the architecture, config values, the model's initial state_dict, the
prototypes, source batches, test batches, the call after which ``reset()`` is called (or -1), the seed, the
projector's state after construction, and per call: the returned logits, the student's and teacher's
parameters (flattened, in ``parameters()`` order) and the projector's parameters afterwards.
"""
import importlib.util
import os
import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace as NS

import torch
from torch import nn

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
REF = Path(os.environ["RMT_REF"]) / "classification"
OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "rmt_golden.pt"


def augment(x):
    """The fixed augmentation of every case: a horizontal flip, a contrast change and a shift."""
    return x.flip(-1) * 0.8 + 0.1


def build(arch):
    if arch == "cnn":
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))


class _Source:
    """The stand-in for their source DataLoader: re-iterable over fixed batches."""

    def __init__(self, batches, batch_size):
        self.batches, self.batch_size = batches, batch_size

    def __iter__(self):
        return iter(self.batches)


def _stub(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def load_theirs():
    _stub("torchvision", transforms=_stub("torchvision.transforms", Compose=type("Compose", (), {})))
    _stub("models")
    _stub("models.model", ResNetDomainNet126=type("ResNetDomainNet126", (nn.Module,), {}),
          split_up_model=lambda model, arch, ds: (nn.Sequential(*list(model.children())[:-1]), model[-1]))
    _stub("augmentations")
    _stub("augmentations.transforms_cotta", get_tta_transforms=lambda size: augment)
    _stub("datasets")
    _stub("datasets.data_loading", get_source_loader=lambda **kw: (None, SOURCE[0]))
    for pkg in ("utils", "methods"):
        mod = types.ModuleType(pkg)
        mod.__path__ = [str(REF / pkg)]
        sys.modules[pkg] = mod
    loaded = {}
    for name in ("utils.registry", "utils.losses", "utils.misc", "methods.base", "methods.rmt"):
        spec = importlib.util.spec_from_file_location(name, REF / (name.replace(".", "/") + ".py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        loaded[name] = mod
    return loaded["methods.rmt"].RMT, loaded["utils.losses"].SymmetricCrossEntropy


SOURCE = [None]  # the current case's source loader, read by the stubbed get_source_loader


def cfg_for(c, ckpt_dir):
    return NS(
        CORRUPTION=NS(DATASET="cifar10_c"), DATA_DIR="", CKPT_DIR=ckpt_dir, MIXED_PRECISION=False,
        MODEL=NS(ADAPTATION="rmt", ARCH="Standard", CKPT_PATH="", EPISODIC=False, RESET_AFTER_NUM_UPDATES=0),
        TEST=NS(BATCH_SIZE=c["batch"], WINDOW_LENGTH=1),
        SOURCE=NS(NUM_SAMPLES=-1, PERCENTAGE=1.0, NUM_WORKERS=0),
        OPTIM=NS(STEPS=1, **c["optim"]),
        CONTRAST=NS(MODE="all", TEMPERATURE=c["temperature"], PROJECTION_DIM=c["projector_dim"]),
        M_TEACHER=NS(MOMENTUM=c["teacher_momentum"]),
        RMT=NS(LAMBDA_CE_SRC=c["lambda_ce_src"], LAMBDA_CE_TRG=c["lambda_ce_trg"], LAMBDA_CONT=c["lambda_cont"],
               NUM_SAMPLES_WARM_UP=c["warmup_steps"] * c["batch"]))


def flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone()


def run_case(RMT, c):
    torch.manual_seed(c["data_seed"])
    model = build(c["arch"])
    shape = (2, 5, 5) if c["arch"] == "cnn" else (6,)
    c["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    c["prototypes"] = torch.randn(5, 4 if c["arch"] == "cnn" else 8)
    c["source"] = [(torch.randn(c["batch"], *shape), torch.randint(0, 5, (c["batch"],))) for _ in range(3)]
    c["batches"] = [torch.randn(c["batch"], *shape) * 1.5 + 0.3 for _ in range(c["calls"])]
    SOURCE[0] = _Source(c["source"], c["batch"])
    with tempfile.TemporaryDirectory() as ckpt:
        os.makedirs(os.path.join(ckpt, "prototypes"))
        torch.save(c["prototypes"], os.path.join(ckpt, "prototypes", "protos_cifar10_c_Standard.pth"))
        model.model_preprocess = None  # their loader plumbing reads it (no torchvision transforms here)
        torch.manual_seed(c["seed"])
        rmt = RMT(cfg_for(c, ckpt), model, 5)
        c["projector_init"] = {k: v.clone() for k, v in rmt.projector.state_dict().items()}
        c["after_warmup"] = (flat(rmt.model), flat(rmt.model_ema))
        outs, students, teachers, projectors = [], [], [], []
        for t, x in enumerate(c["batches"]):
            if t == c["reset_at"]:
                rmt.reset()
            with torch.no_grad():
                outs.append(rmt(x).detach().clone())
            students.append(flat(rmt.model))
            teachers.append(flat(rmt.model_ema))
            projectors.append(flat(rmt.projector))
    c.update(outputs=torch.stack(outs), students=torch.stack(students), teachers=torch.stack(teachers),
             projectors=torch.stack(projectors))
    return c


def main():
    RMT, SCE = load_theirs()
    torch.manual_seed(0)
    pairs = [(torch.randn(6, 5) * 3, torch.randn(6, 5) * 3) for _ in range(2)]
    alphas = [0.5, 0.2, 1.0]
    sce = {"pairs": pairs, "alphas": alphas,
           "values": [[SCE(alpha=a)(x, y) for x, y in pairs] for a in alphas]}
    adam = {"METHOD": "Adam", "LR": 1e-2, "BETA": 0.9, "MOMENTUM": 0.9, "DAMPENING": 0.0, "NESTEROV": True,
            "WD": 0.0}
    sgd = {"METHOD": "SGD", "LR": 5e-2, "BETA": 0.9, "MOMENTUM": 0.9, "DAMPENING": 0.0, "NESTEROV": True,
           "WD": 1e-3}
    base = dict(arch="cnn", batch=6, calls=4, reset_at=-1, optim=adam, temperature=0.1, projector_dim=6,
                teacher_momentum=0.9, lambda_ce_src=1.0, lambda_ce_trg=1.0, lambda_cont=1.0, warmup_steps=0,
                data_seed=1, seed=11)
    cases = [
        run_case(RMT, {**base, "name": "cnn_source_warmup", "warmup_steps": 2, "reset_at": 3}),
        run_case(RMT, {**base, "name": "cnn_source_free", "lambda_ce_src": 0.0}),
        run_case(RMT, {**base, "name": "mlp_sgd", "arch": "mlp", "batch": 8, "optim": sgd, "temperature": 0.5,
                       "projector_dim": 5, "teacher_momentum": 0.99, "lambda_ce_src": 0.5, "lambda_ce_trg": 2.0,
                       "lambda_cont": 0.3, "warmup_steps": 1, "data_seed": 2, "seed": 12}),
    ]
    torch.save({"sce": sce, "cases": cases, "torch": str(torch.__version__)}, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
