"""Golden SalUn masks and unlearning trajectories, made by running the authors' own functions.

Source: github.com/OPTML-Group/Unlearn-Saliency at commit a6e89fd17ff737c24c6aa16c9574469a234ffd91
("Fix weight decay", 2026-02), folder ``Classification``: ``generate_mask.py`` (``save_gradient_ratio``:
the saliency masks for ratios 0.1, ..., 1.0) and ``unlearn/RL.py`` (``RL``, wrapped by
``unlearn/impl.py``'s ``iterative_unlearn``, which builds their SGD optimizer and runs the epochs).
Their functions run unchanged; stubbed are only what is not math: ``arg_parser`` (an ``args``
namespace instead), ``utils`` (their progress meters ``AverageMeter``/``accuracy``; the real module
imports their datasets and torchvision), ``pruner`` (weight rewinding, off here: it
imports torchvision), ``unlearn/__init__`` (its other methods are not loaded: the
package is registered without running it), ``Tensor.cuda`` (returns the CPU tensor) and the data loaders
(lists of float64 batches with a ``dataset`` attribute). ``args.dataset = "cifar10"`` selects RL's
branch that runs the forget batches with ``torch.randint`` labels, then the retain batches.

The model is a float64 MLP 5-7-6-3 whose first layer has three dead ReLU units (bias -100); with the
second layer's units that stay off on the forget inputs, 47 of the 111 saliencies are exactly 0 and the
0.6, 0.7, 0.8 and 0.9 masks cut inside that tie. Their masks come
from ``torch.argsort`` (not stable on CPU), so which tied weights they pick is torch's business; the
tests compare only where the saliencies differ, and check gradwise's own tie rule separately.

Run from the repository root with their checkout (``git archive a6e89fd Classification | tar -x``)
at SALUN_REF (the ``Classification`` folder):

    SALUN_REF=/path/to/Classification PYTHONPATH=src .venv/bin/python tools/golden/make_salun_golden.py

Writes tests/data/salun_golden.pt: the initial state dict, the forget and retain batches, their masks
for every ratio (rows of one flat bool vector over the parameters, in ``named_parameters`` order), and
cases (a mask ratio, or -1 for none; lr, momentum, weight decay; epochs; the global seed before the
run), each with the labels their loss saw (concatenated) and the flat parameters before every step
and at the end.
"""
import os
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn as nn

REF = Path(os.environ["SALUN_REF"])
sys.path.insert(0, str(REF))
torch.set_num_threads(1)

# -- stubs for what is not their math ------------------------------------------------------------------
utils_stub = types.ModuleType("utils")


class AverageMeter:  # their progress meter, for printing only
    def update(self, val, n=1):
        self.val, self.avg = val, val


utils_stub.AverageMeter = AverageMeter
utils_stub.accuracy = lambda output, target: [torch.zeros(())]
sys.modules["utils"] = utils_stub
sys.modules["arg_parser"] = types.ModuleType("arg_parser")
pruner_stub = types.ModuleType("pruner")  # their weight rewinding only (rewind_epoch=0 here); imports torchvision


def _not_used(*a, **k):
    raise NotImplementedError("pruning is not part of SalUn's RL run")


pruner_stub.extract_mask = pruner_stub.prune_model_custom = pruner_stub.remove_prune = _not_used
sys.modules["pruner"] = pruner_stub
unlearn_pkg = types.ModuleType("unlearn")  # their package, without its __init__ (other methods)
unlearn_pkg.__path__ = [str(REF / "unlearn")]
sys.modules["unlearn"] = unlearn_pkg
torch.Tensor.cuda = lambda self, *a, **k: self  # CPU run

import generate_mask  # noqa: E402  (their code)
from unlearn.RL import RL  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class Loader(list):  # stands in for a DataLoader over fixed batches
    def __init__(self, batches):
        super().__init__(batches)
        self.dataset = None


def flat(model):  # all parameters as one vector, in named_parameters order (kept small on disk)
    return torch.cat([v.detach().flatten() for v in model.parameters()])


def make_model():
    torch.manual_seed(211)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        model[0].bias[[1, 4, 5]] = -100.0  # dead units: exact zero gradients, ties in the saliency
    return model


def args_for(lr, momentum, weight_decay, epochs, save_dir=""):
    return types.SimpleNamespace(
        unlearn_lr=lr, momentum=momentum, weight_decay=weight_decay, unlearn_epochs=epochs, save_dir=save_dir,
        dataset="cifar10", num_classes=3, warmup=0, print_freq=10**9, decreasing_lr="91,136", rewind_epoch=0,
        imagenet_arch=False, unlearn="RL", lr=0.1)


g = torch.Generator().manual_seed(17)
forget = [(torch.randn(4, 5, dtype=torch.float64, generator=g), torch.randint(0, 3, (4,), generator=g))
          for _ in range(3)]
retain = [(torch.randn(5, 5, dtype=torch.float64, generator=g), torch.randint(0, 3, (5,), generator=g))
          for _ in range(4)]
loaders = {"forget": Loader(forget), "retain": Loader(retain)}
init = {k: v.clone() for k, v in make_model().state_dict().items()}

# their saliency masks, every ratio of their list
model = make_model()
with tempfile.TemporaryDirectory() as tmp:
    generate_mask.save_gradient_ratio(loaders, model, nn.CrossEntropyLoss(), args_for(0.01, 0.9, 5e-4, 1, tmp))
    masks = {r: torch.load(f"{tmp}/with_{r}.pt", weights_only=True)
             for r in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)}
print({r: int(sum(int(m.sum()) for m in d.values())) for r, d in masks.items()})


def run(ratio, lr, momentum, weight_decay, epochs, seed):
    model = make_model()
    snaps, labels = [], []
    model.register_forward_pre_hook(lambda mod, inp: snaps.append(flat(mod)))  # what each step starts from
    ce = nn.CrossEntropyLoss()

    def criterion(output, target):
        labels.append(target.clone())
        return ce(output, target)

    mask = None if ratio is None else masks[ratio]
    torch.manual_seed(seed)
    RL(loaders, model, criterion, args_for(lr, momentum, weight_decay, epochs), mask=mask)
    snaps.append(flat(model))
    return dict(ratio=-1.0 if ratio is None else ratio, lr=lr, momentum=momentum, weight_decay=weight_decay,
                epochs=epochs, seed=seed, labels=torch.cat(labels), params=torch.stack(snaps))


cases = [run(0.5, 0.1, 0.9, 5e-4, 2, 0),
         run(0.8, 0.05, 0.9, 0.05, 2, 1),   # inside the tie; a large weight decay that must not leak
         run(0.3, 0.1, 0.0, 0.01, 1, 2),    # no momentum buffer
         run(None, 0.1, 0.9, 5e-4, 2, 3)]   # mask=None: plain random labelling
out = ROOT / "tests" / "data" / "salun_golden.pt"
ratios = sorted(masks)
torch.save(dict(init=init, forget=forget, retain=retain, ratios=torch.tensor(ratios, dtype=torch.float64),
                masks=torch.stack([torch.cat([m.flatten() for m in masks[r].values()]).bool() for r in ratios]),
                cases=cases, torch=str(torch.__version__)), out)
print("wrote", out, out.stat().st_size, "bytes")
