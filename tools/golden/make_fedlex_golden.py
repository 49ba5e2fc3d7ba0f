"""Golden FedLEx values made by the authors' own code: exploration, the global guidance matrix, guided training.

Source: github.com/ChristianInterno/FedLEx at commit 69ed5812f9f3bd3f27b219c6f6f977ab895c6f55. From a checkout
at FEDLEX_REF this imports ``src/GTL_utils.py`` (``create_mask``) and ``src/client/fedlexclient.py``
(``FedlexClient.create_scout`` and ``FedlexClient.update``) unchanged. Their ``src/__init__.py`` imports
transformers and their dataset loaders, so a stand-in ``src`` package is registered in its place (its
``__path__`` is their ``src`` folder, so the real submodules load) giving the names those two files import:
``load_model`` (this script's toy MLP), and a ``MetricManager`` that only sums the loss (it never touches the
weights). Their files are written under a temporary working directory (``./checkpoints``, ``result_path``).
Everything runs in float64 (``torch.set_default_dtype``).

Each explorer runs ``create_scout`` on its own copy of the base model (their server passes its one model
object to every explorer, which chains their training; see fedlex.py) and its trained weights are the scout
(``create_scout`` returns an all-ones placeholder at this commit, so the model it trained in place is read).
A ``tl_base.ckpt`` is put in ``./checkpoints`` first so ``create_scout`` skips making its own base.

Run from the repository root:

    FEDLEX_REF=/path/to/FedLEx PYTHONPATH=src .venv/bin/python tools/golden/make_fedlex_golden.py

Writes tests/data/fedlex_golden.pt: a list of cases (optimizer SGD or Adam, lr, momentum, exploration epochs
and patience, local epochs, clip norm, normalization), each with the base weights ``base`` ({name: tensor}),
per explorer its fixed minibatches and its scout weights, the guidance matrix ``mask`` their
``create_mask`` saves (the scouts against ``tl_base`` = ``base``), and a guided client (its minibatches, and
its weights after their ``update()`` from ``base`` with that mask); ``stopped_early`` says whether the
patience cut an explorer's training short.
"""
import argparse
import contextlib
import copy
import importlib
import io
import os
import sys
import tempfile
import types
from pathlib import Path

import torch

torch.set_default_dtype(torch.float64)
REF = os.environ["FEDLEX_REF"]
OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "fedlex_golden.pt"


def model_func():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))


class MetricManager:  # their MetricManager less the metric modules: it only records losses
    def __init__(self, eval_metrics):
        self.results = {}

    def track(self, loss, pred, true):
        pass

    def aggregate(self, total_len, curr_step=None):
        pass


pkg = types.ModuleType("src")
pkg.__path__ = [os.path.join(REF, "src")]
pkg.MetricManager = MetricManager
pkg.load_model = lambda args: (model_func(), args)
for name in ("Range", "set_logger", "TensorBoardRunner", "check_args", "set_seed", "load_dataset"):
    setattr(pkg, name, None)
sys.modules["src"] = pkg
GTL = importlib.import_module("src.GTL_utils")
FedlexClient = importlib.import_module("src.client.fedlexclient").FedlexClient

gen = torch.Generator().manual_seed(2506)


def data(n):
    x = torch.randn(n, 5, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    return torch.utils.data.TensorDataset(x, y), [(x[i:i + 4], y[i:i + 4]) for i in range(0, n, 4)]


def make_args(tmp, **kw):
    base = dict(optimizer="SGD", criterion="CrossEntropyLoss", no_shuffle=True, B=4, result_path=str(tmp),
                exp_name="_golden", eval_metrics=[], Patience_mask=100, epoochs_mask=3, E=2, max_grad_norm=0.0,
                guidence_normalization="MinMax", lr=0.5, momentum=0.0, weight_decay=0.0, curr_round=1,
                _train_only=True, device="cpu")
    base.update(kw)
    return argparse.Namespace(**base)


def run_case(tmp, n_explorers, **kw):
    os.chdir(tmp)
    os.makedirs("checkpoints", exist_ok=True)
    args = make_args(tmp, **kw)
    base_model = model_func()
    with torch.no_grad():
        for p in base_model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    base = {k: v.clone() for k, v in base_model.state_dict().items()}
    torch.save(base, "checkpoints/tl_base.ckpt")
    torch.save(base, f"checkpoints/tl_base{args.exp_name}.ckpt")
    explorers, scouts, stopped = [], [], False
    for i in range(n_explorers):
        dataset, batches = data(10 + 2 * i)
        with contextlib.redirect_stdout(io.StringIO()):  # their constructor prints where it saves the data
            client = FedlexClient(i, args, dataset, dataset)
        scout_model = copy.deepcopy(base_model)
        with contextlib.redirect_stdout(io.StringIO()):
            client.create_scout(model=scout_model)
        scouts.append({k: v.detach().clone() for k, v in scout_model.state_dict().items()})
        # the same exploration without the patience: did early stopping cut it short?
        full_model = copy.deepcopy(base_model)
        client.args = make_args(tmp, **{**kw, "Patience_mask": 10**6})
        with contextlib.redirect_stdout(io.StringIO()):
            client.create_scout(model=full_model)
        client.args = args
        stopped |= any(not torch.equal(a, b) for a, b in zip(full_model.parameters(), scout_model.parameters()))
        explorers.append(batches)
    mask = GTL.create_mask(model_checkpoint=f"tl_base{args.exp_name}", scouts=scouts, name_file=args.exp_name,
                           args=args)
    dataset, batches = data(12)
    with contextlib.redirect_stdout(io.StringIO()):
        client = FedlexClient(99, args, dataset, dataset)
        client.download(copy.deepcopy(base_model))
        client.update()
    guided = {k: v.detach().clone() for k, v in client.model.state_dict().items()}
    return dict(optimizer=args.optimizer.lower(), lr=args.lr, momentum=args.momentum,
                weight_decay=args.weight_decay, explore_epochs=args.epoochs_mask, patience=args.Patience_mask,
                local_epochs=args.E, max_norm=args.max_grad_norm,
                normalization={"MinMax": "minmax", "RobustScaler": "robust"}[args.guidence_normalization],
                base=base, explorer_batches=explorers, scouts=scouts, mask={k: v.clone() for k, v in mask.items()},
                guided_batches=batches, guided=guided, stopped_early=stopped)


CASES = [
    (3, dict()),
    (2, dict(guidence_normalization="RobustScaler", momentum=0.5, max_grad_norm=0.5)),
    (4, dict(optimizer="Adam", lr=0.05, epoochs_mask=4, E=1, weight_decay=0.01)),
    (3, dict(lr=2.0, epoochs_mask=8, Patience_mask=2, guidence_normalization="RobustScaler", E=3)),
]

cases = []
with tempfile.TemporaryDirectory() as tmp:
    cwd = os.getcwd()
    try:
        for k, kw in CASES:
            sub = Path(tmp) / f"case{len(cases)}"
            sub.mkdir()
            cases.append(run_case(sub, k, **kw))
    finally:
        os.chdir(cwd)
assert any(c["stopped_early"] for c in cases), "no case exercises the early stopping"
torch.save(cases, OUT)
print(f"wrote {OUT} ({OUT.stat().st_size} bytes); stopped early: {[c['stopped_early'] for c in cases]}")
