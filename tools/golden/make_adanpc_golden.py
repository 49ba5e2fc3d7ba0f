"""Golden AdaNPC runs, made by running the authors' own ``AdaNPC`` class and kNN memory.

Source: github.com/yfzhang114/AdaNPC at commit 6fc8256 (``domainbed/adapt_algorithms.py``'s ``AdaNPC`` and
``domainbed/knn.py``'s ``MomentumQueue``). Their ``adapt_algorithms.py`` imports ``Algorithm`` from
``domainbed/algorithms.py``, which pulls in ``domainbed/networks.py`` and torchvision (which does not import
here): ``domainbed.algorithms`` is a stand-in whose ``Algorithm`` is theirs (an ``nn.Module`` keeping
``hparams``). Their ``knn.py`` and ``AdaNPC`` run unchanged.

The flow is that of their ``unsupervised_adaptation.py``: the featurizer runs in eval mode
(``generate_featurelized_loader``), ``AdaNPC`` is built with a ``MomentumQueue`` of ``queue_size=1``, the
source (training-domain) features and their true labels are appended with ``extend_test``, ``queue_size`` is
set to the memory's length, ``reset_params(hparams)`` sets ``beta``, ``k``, ``temperature``, and each test
batch of features goes through ``adapted_algorithm(z, adapt=True)``. One change to their state, not to their
math: the queue's single random initial row (``torch.rand`` in ``MomentumQueue.__init__``, not normalized,
label 0, kept for good in their runs) is dropped before the source features are appended, so the memory is
exactly the source features (gradwise's ``AdaNPC`` takes the memory as given).

Everything is float64 and seeded: a featurizer Linear(6, 8), BatchNorm1d(8) (random running statistics, so
eval mode matters), ReLU and a Linear(8, C) classifier, source points drawn around C class means, test batches
of 8 drawn with a shift. Run from the repository root with their checkout (e.g. ``git archive 6fc8256``) at
ADANPC_REF:

    ADANPC_REF=/path/to/AdaNPC PYTHONPATH=src .venv/bin/python tools/golden/make_adanpc_golden.py

Writes tests/data/adanpc_golden.pt: a list of cases, each with the hyperparameters, the number of classes, the
model's state_dict (an ``nn.Sequential`` of the four layers), the source features and labels, the raw test
batches, the call after which ``reset()`` is called (or -1), and per call: the returned scores, the memory and
its labels afterwards.
"""
import importlib.util
import os
import sys
import types
from pathlib import Path

import torch
from torch import nn

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)  # their queue builds its rows with the default dtype
REF = Path(os.environ["ADANPC_REF"]) / "domainbed"
OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "adanpc_golden.pt"


class Algorithm(nn.Module):
    """Their ``domainbed.algorithms.Algorithm.__init__`` (the rest of that module needs torchvision)."""

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__()
        self.hparams = hparams


def load_theirs():
    pkg = types.ModuleType("domainbed")
    pkg.__path__ = [str(REF)]
    sys.modules["domainbed"] = pkg
    stub = types.ModuleType("domainbed.algorithms")
    stub.Algorithm = Algorithm
    sys.modules["domainbed.algorithms"] = stub
    spec = importlib.util.spec_from_file_location("domainbed.adapt_algorithms", REF / "adapt_algorithms.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["domainbed.adapt_algorithms"] = mod
    spec.loader.exec_module(mod)
    return mod


adapt_algorithms = load_theirs()


def make_model(seed, num_classes):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, num_classes))
    bn = model[1]
    bn.running_mean.copy_(0.3 * torch.randn(8))
    bn.running_var.copy_(0.5 + torch.rand(8))
    bn.weight.data.copy_(1 + 0.2 * torch.randn(8))
    bn.bias.data.copy_(0.2 * torch.randn(8))
    return model


class Trained(nn.Module):
    """What their scripts hand to ``AdaNPC``: a DomainBed algorithm with ``featurizer`` and ``classifier``."""

    def __init__(self, model):
        super().__init__()
        self.featurizer = model[:-1]
        self.featurizer.n_outputs = model[-1].in_features
        self.classifier = model[-1]


def data(seed, num_classes, n_source, n_batches, shift):
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(num_classes, 6, generator=g)
    ys = torch.arange(n_source) % num_classes
    xs = means[ys] + torch.randn(n_source, 6, generator=g)
    batches = []
    for _ in range(n_batches):
        yt = torch.randint(num_classes, (8,), generator=g)
        batches.append(means[yt] + shift + 1.3 * torch.randn(8, 6, generator=g))
    return xs, ys, batches


def run_case(name, seed, num_classes, hparams, n_source, n_batches, shift, reset_after):
    model = make_model(seed, num_classes)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    xs, ys, batches = data(seed + 100, num_classes, n_source, n_batches, shift)
    trained = Trained(model)
    adapted = adapt_algorithms.AdaNPC((6,), num_classes, 2, {"beta": 0.1, "k": 100, "temperature": 0.1}, trained)
    queue = adapted.classifier
    # drop their random initial row (see the module docstring): the memory is exactly the source features
    queue.memory = queue.memory[:0]
    queue.memory_label = queue.memory_label[:0]
    trained.featurizer.eval()  # generate_featurelized_loader: network.eval()
    with torch.no_grad():
        zs = trained.featurizer(xs)
        queue.extend_test(zs, ys)
        queue.queue_size = queue.memory.shape[0]
        adapted.reset_params(hparams)
        scores, memories, labels = [], [], []
        for i, x in enumerate(batches):
            z = trained.featurizer(x)
            p = adapted(z, adapt=True)
            scores.append(p.clone())
            memories.append(queue.memory.clone())
            labels.append(queue.memory_label.clone())
            if i == reset_after:
                adapted.reset()
    grown = [m.shape[0] - n_source for m in memories]
    print(f"{name}: C={num_classes} {hparams} memory growth per call {grown}")
    return {"name": name, "hparams": dict(hparams), "num_classes": num_classes, "state_dict": state,
            "source_feats": zs.clone(), "source_labels": ys.clone(), "batches": batches,
            "reset_after": reset_after, "scores": scores, "memory": memories, "memory_labels": labels}


def main():
    cases = [
        # the authors' defaults (unsupervised_adaptation.py): every test sample joins the memory (1/C > beta)
        run_case("defaults", 0, 3, {"beta": 0.1, "k": 100, "temperature": 0.1}, 120, 4, 0.8, -1),
        # a selective beta between 1/C and the largest softmax of the vote, a reset after the third call
        run_case("selective_reset", 1, 3, {"beta": 0.45, "k": 5, "temperature": 0.05}, 40, 5, 1.0, 2),
        # 4 classes, larger temperature, beta on the edge of the range of confidences
        run_case("four_classes", 2, 4, {"beta": 0.3, "k": 10, "temperature": 0.5}, 30, 4, 0.5, -1),
        # beta above 1: the memory never grows (the authors' grid includes 1.1); k = 1
        run_case("frozen_k1", 3, 3, {"beta": 1.1, "k": 1, "temperature": 0.25}, 20, 3, 1.0, -1),
    ]
    torch.save(cases, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes), torch {torch.__version__}")


if __name__ == "__main__":
    main()
