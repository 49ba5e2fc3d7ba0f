"""Golden FedSpeed values made by the authors' own code: the client's local training and the server's rule.

Source: github.com/woodenchild95/FL-Simulator at commit 502bec65570165d1ff1a6ce76375297145c734e3. Their
``client/fedspeed.py`` (on ``client/client.py``, ``optimizer/ESAM.py``, ``utils.py``) and
``server/FedSpeed.py`` (on ``server/server.py``) are imported from a checkout at FEDSPEED_REF. Their
``dataset.py`` needs torchvision and downloads data, so a stand-in ``dataset`` module is put in its place;
the client's DataLoader is then replaced by a fixed list of minibatches (their loop only iterates it).
Everything runs in float64 (``torch.set_default_dtype``).

Run from the repository root:

    FEDSPEED_REF=/path/to/FL-Simulator PYTHONPATH=src .venv/bin/python tools/golden/make_fedspeed_golden.py

Writes tests/data/fedspeed_golden.pt with
- ``client``: per case (lamb, rho, weight_decay, local_epochs, lr), a toy MLP's initial flat parameters,
  the received ``Local_dual_correction``, the minibatches, and the flat parameters after their
  ``fedspeed.train()``;
- ``server``: per case (clients n, rounds), the selected clients of each round, the
  ``Local_dual_correction`` their ``process_for_communication`` sends each, the client updates fed in
  (random), and the global parameters their ``global_update`` returns, with the dual list
  ``h_params_list`` kept between rounds as in their ``Server.train``.
"""
import argparse
import os
import sys
import types
from pathlib import Path

import torch

torch.set_default_dtype(torch.float64)
REF = os.environ["FEDSPEED_REF"]
sys.path.insert(0, REF)
stub = types.ModuleType("dataset")
stub.Dataset = lambda x, y, train=True, dataset_name="": torch.utils.data.TensorDataset(
    torch.as_tensor(x), torch.as_tensor(y))
sys.modules["dataset"] = stub

from client.fedspeed import fedspeed  # noqa: E402
from server.FedSpeed import FedSpeed  # noqa: E402
from utils import get_mdl_params  # noqa: E402

gen = torch.Generator().manual_seed(2302)


def model_func():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))


def args(**kw):
    base = dict(weight_decay=1e-3, lamb=0.1, rho=0.1, local_epochs=2, batchsize=4, dataset="toy",
                total_client=4, comm_rounds=3, local_learning_rate=0.1, use_RI=False, beta=0.1,
                method="FedSpeed")
    base.update(kw)
    return argparse.Namespace(**base)


client = []
for lamb, rho, wd, epochs, lr, scale in [(0.1, 0.1, 1e-3, 2, 0.1, 1.0), (0.5, 0.05, 0.0, 3, 0.2, 1.0),
                                         (0.1, 0.0, 1e-2, 1, 0.1, 1.0), (0.1, 0.1, 1e-3, 2, 0.5, 200.0)]:
    a = args(lamb=lamb, rho=rho, weight_decay=wd, local_epochs=epochs)
    params = get_mdl_params(model_func()) + 0.1 * torch.randn(sum(p.numel() for p in model_func().parameters()),
                                                               generator=gen)
    # scale 200: a correction term lamb * c far above the clip norm 10
    correction = 0.3 * scale * torch.randn(params.shape, generator=gen)
    x = torch.randn(10, 5, generator=gen)
    y = torch.randint(0, 3, (10,), generator=gen)
    batches = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]
    c = fedspeed(torch.device("cpu"), model_func, {"Params_list": params.clone(),
                                                   "Local_dual_correction": correction.clone()},
                 (x.numpy(), y.numpy()), lr, a)
    c.dataset = batches
    out = c.train()
    client.append(dict(lamb=lamb, rho=rho, weight_decay=wd, local_epochs=epochs, lr=lr, params=params,
                       correction=correction, batches=batches, result=out["local_model_param_list"].clone()))

server = []
for n, rounds, selections in [(4, 3, [[0, 2], [1, 2, 3], [0, 2]]), (3, 2, [[0, 1, 2], [1]])]:
    a = args(total_client=n, comm_rounds=rounds)
    init = get_mdl_params(model_func())
    srv = FedSpeed(torch.device("cpu"), model_func, model_func(), init.clone(), None, "FedSpeed", a)
    log = []
    for sel in selections:
        corrections, updates = [], []
        for cid in sel:
            srv.process_for_communication(cid, None)
            corrections.append(srv.comm_vecs["Local_dual_correction"].clone())
            u = 0.2 * torch.randn(init.shape, generator=gen)
            updates.append(u)
            srv.clients_updated_params_list[cid] = u
            srv.clients_params_list[cid] = srv.comm_vecs["Params_list"] + u
            srv.postprocess(cid, None)
        avg_update = torch.mean(srv.clients_updated_params_list[sel], dim=0)
        avg_model = torch.mean(srv.clients_params_list[sel], dim=0)
        before = srv.server_model_params_list.clone()
        srv.server_model_params_list = srv.global_update(sel, avg_update, avg_model)
        log.append(dict(clients=list(sel), global_before=before, corrections=torch.stack(corrections),
                        updates=torch.stack(updates), global_after=srv.server_model_params_list.clone()))
    server.append(dict(num_clients=n, rounds=log))

shapes = [tuple(p.shape) for p in model_func().parameters()]
out = Path(__file__).resolve().parents[2] / "tests" / "data" / "fedspeed_golden.pt"
torch.save({"shapes": shapes, "client": client, "server": server}, out)
print("wrote", out)
