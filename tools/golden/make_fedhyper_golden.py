"""Golden FedHyper values made by the authors' own code: the global learning-rate rule and the client-side
local learning-rate rule.

Source: github.com/ATP-1010/FedHyper at commit d6a57c54d7e9293cabedc8f80c7d61d3cc321633, from a checkout
at FEDHYPER_REF.
- Global rule: their server rules are inline in the ``__main__`` block of ``src/federated_main.py`` (no
  function to import), so the ``if args.function == 'FedHyper-G'`` and ``'FedHyper-GM' or 'FedHyper-FULL'``
  statements of its round loop are cut out of that file with ``ast`` and executed unchanged, round by
  round, on a toy model whose parameters are the clients' average (``global_weights_help``) and the
  round's average update ``gradient_vector`` (random here), carrying ``agg`` and ``last_vector``.
- Local rule: their ``LocalUpdate.update_weights`` (``src/update.py``, ``--function FedHyper-CL``,
  ``--optimizer sgd``, ``--ad_lr 1``) on a toy MLP, the instance built without its ``__init__`` (which
  loads a dataset) and its ``trainloader`` a fixed list of minibatches.
Everything runs in float64.

Run from the repository root:

    FEDHYPER_REF=/path/to/FedHyper PYTHONPATH=src .venv/bin/python tools/golden/make_fedhyper_golden.py

Writes tests/data/fedhyper_golden.pt with ``global`` (per variant: the average updates of five rounds, and
per round the global step and ``agg``) and ``local`` (per case: initial flat parameters, lr, epochs,
clients ``num_users * frac``, the previous global update ``gtl``, the minibatches, the final flat
parameters).
"""
import argparse
import ast
import os
import sys
from pathlib import Path

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

torch.set_default_dtype(torch.float64)
REF = Path(os.environ["FEDHYPER_REF"]) / "src"
sys.path.insert(0, str(REF))
from update import LocalUpdate  # noqa: E402

gen = torch.Generator().manual_seed(2310)


def toy():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))


# --- global rule: the FedHyper-G / -GM branches of their round loop, executed as written
tree = ast.parse((REF / "federated_main.py").read_text())
main = next(n for n in tree.body if isinstance(n, ast.If))
loop = next(n for n in main.body if isinstance(n, ast.For) and ast.unparse(n.target) == "epoch")
branches = [n for n in loop.body if isinstance(n, ast.If) and "FedHyper-G" in ast.unparse(n.test)]
assert len(branches) == 2, [ast.unparse(b.test) for b in branches]
code = compile(ast.Module(body=branches, type_ignores=[]), "federated_main.py", "exec")

glob = []
for function in ("FedHyper-G", "FedHyper-GM"):
    model = toy()
    d = parameters_to_vector(model.parameters()).numel()
    ns = dict(args=argparse.Namespace(function=function), agg=0, Global_alpha=[], global_model=model,
              vector_to_parameters=vector_to_parameters, parameters_to_vector=parameters_to_vector)
    rounds = []
    w = parameters_to_vector(model.parameters()).detach().clone()
    for epoch, scale in enumerate([0.5, 6.0, 6.0, -7.0, 0.3]):  # rounds 3, 4 reach the clip bounds
        base = torch.randn(d, generator=gen)
        update = scale * (0.6 * base / base.norm() + 0.4 * torch.ones(d) / d ** 0.5)  # correlated rounds
        with torch.no_grad():
            vector_to_parameters(w + update, model.parameters())  # the clients' average
        ns.update(epoch=epoch, gradient_vector=update)
        with torch.no_grad():
            exec(code, ns)
        new = parameters_to_vector(model.parameters()).detach().clone()
        rounds.append(dict(update=update, step=new - w, agg=float(ns["agg"])))
        w = new
    glob.append(dict(function=function, rounds=rounds))


# --- local rule: their LocalUpdate.update_weights with FedHyper-CL
class Logger:
    def add_scalar(self, *a):
        pass


local = []
for lr, epochs, num_users, frac, gscale, xscale in [(0.05, 2, 10, 0.5, 0.5, 1.0), (0.2, 3, 4, 1.0, 2.0, 3.0),
                                                    (0.01, 2, 10, 0.3, 0.0, 1.0)]:
    model = toy()
    params = parameters_to_vector(model.parameters()).detach() + 0.1 * torch.randn(
        parameters_to_vector(model.parameters()).numel(), generator=gen)
    gtl = gscale * torch.randn(params.shape, generator=gen)
    x = xscale * torch.randn(11, 5, generator=gen)
    y = torch.randint(0, 3, (11,), generator=gen)
    batches = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]
    lu = object.__new__(LocalUpdate)
    lu.args = argparse.Namespace(ad_lr=1, optimizer="sgd", function="FedHyper-CL", local_ep=epochs,
                                 num_users=num_users, frac=frac)
    lu.logger, lu.device, lu.criterion = Logger(), "cpu", torch.nn.CrossEntropyLoss()
    lu.lrs, lu.gtl, lu.trainloader = [lr], gtl.clone(), batches
    with torch.no_grad():
        vector_to_parameters(params.clone(), model.parameters())
    state, _, _ = lu.update_weights(model, 0, 0)
    m = toy()
    m.load_state_dict(state)
    local.append(dict(lr=lr, epochs=epochs, clients=num_users * frac, params=params, gtl=gtl, batches=batches,
                      result=parameters_to_vector(m.parameters()).detach().clone()))

out = Path(__file__).resolve().parents[2] / "tests" / "data" / "fedhyper_golden.pt"
torch.save({"global": glob, "local": local}, out)
print("wrote", out)
