"""Golden FedFix schedules, aggregation weights and global models, made by running the authors' own code.

Source: github.com/Accenture/Labs-Federated-Learning, branch ``asynchronous_FL`` at commit
1c896f0ef7d5a00e3a5e148b883297cc5fc25d8b (``FL/server.py``, ``FL/clients_schedule.py``, ``FL/simu.py``).
Their ``Server`` is built as ``FL.py`` builds it (``opt_scheme`` ``FedFix-<delta>_weight``), their
``Server.clients_importances`` computes the aggregation weights, their ``clients_time_schedule`` the
windows, and their ``simu_async`` runs the loop with their ``Server.aggregation``. Stand-ins replace only
what touches data: ``load_model`` returns a float64 ``nn.Linear(3, 2)``; the clients' ``local_work`` runs
three gradient steps ``w <- w - lr * a_i * (w - c_i)`` on a per-client quadratic (elementwise ``a_i``,
``c_i`` per parameter, so an update depends on the model the client was sent: staleness shows);
``loss_acc_global`` records the global model instead of evaluating it (every window, since their
measuring interval is 1 for fewer than 250 windows); ``n_samples`` gives the clients' sizes for
``P_type ratio``. For compute times other than their ``F-<X>`` scenarios, their ``get_tau_i`` is
replaced in both modules by one returning the given times (their code reads the times only from it).

Their ``FL/create_model.py`` and ``FL/read_db.py`` (torchvision datasets) are not imported: stubs stand in
for them in ``sys.modules``, as the driver never loads data.

Run from the repository root with their checkout (``git archive`` of that commit) at FEDFIX_REF:

    FEDFIX_REF=/path/to/Labs-Federated-Learning PYTHONPATH=src .venv/bin/python tools/golden/make_fedfix_golden.py

Writes tests/data/fedfix_golden.pt: a list of cases, each with the compute times, delta, the number of
windows, the importance (client sizes, or None for uniform), the server learning rate, the local
quadratics (a, c, lr, steps), their schedule (``schedule_global``), their aggregation weights and the
global parameters before window 1 and after every window.
"""
import os
import sys
import types
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
REF = Path(os.environ["FEDFIX_REF"])
sys.path.insert(0, str(REF))
for stub in ("FL.create_model", "FL.read_db"):  # data and model zoo: not needed by this driver
    sys.modules[stub] = types.ModuleType(stub)
sys.modules["FL.read_db"].get_dataloaders = sys.modules["FL.create_model"].load_model = None  # set below
import FL.clients_schedule as schedule_mod  # noqa: E402
import FL.server as server_mod  # noqa: E402
from FL.simu import simu_async  # noqa: E402

LR, STEPS = 0.3, 3


def model_factory(seed):
    def load_model(dataset_name, s):
        torch.manual_seed(seed)
        return torch.nn.Linear(3, 2).double(), None
    return load_model


class Clients:  # their Clients.local_work signature; the local work is a quadratic's gradient steps
    def __init__(self, a, c, sizes):
        self.a, self.c, self.sizes = a, c, sizes

    def n_samples(self):
        return list(self.sizes)

    def local_work(self, working_clients, local_models, loss_f, lr_l, n_SGD, clip):
        for i in working_clients:
            with torch.no_grad():
                for (name, p) in local_models[i].named_parameters():
                    for _ in range(STEPS):
                        p -= LR * self.a[i][name] * (p - self.c[i][name])
        return local_models


def run(taus, delta, T, sizes, lr_g, seed, scenario=None):
    rng = np.random.default_rng(seed)
    m = len(taus)
    if scenario is None:  # their get_tau_i only knows F-X: give it these times
        get = lambda n_clients, time_scenario, verbose=True: np.array(taus, dtype=np.float64)  # noqa: E731
        schedule_mod.get_tau_i = server_mod.get_tau_i = get
        scenario = "F-0"
    server_mod.load_model = model_factory(seed)
    args = dict(dataset_name="toy", opt_scheme=f"FedFix-{delta}_weight", time_scenario=scenario,
                P_type="uniform" if sizes is None else "ratio", seed=seed, T=T, M=m, lr_g=lr_g, lr_l=LR,
                n_SGD=STEPS)
    server = server_mod.Server(args)
    shapes = {k: p.shape for k, p in server.g_model.named_parameters()}
    a = [{k: torch.as_tensor(rng.uniform(0.2, 1.5, s)) for k, s in shapes.items()} for _ in range(m)]
    c = [{k: torch.as_tensor(rng.standard_normal(s)) for k, s in shapes.items()} for _ in range(m)]
    clients = Clients(a, c, sizes if sizes is not None else [1] * m)
    server.clients_importances(clients, verbose=False)
    trajectory = []

    def record(_clients):
        trajectory.append({k: p.detach().clone() for k, p in server.g_model.named_parameters()})
        return 0.0, 0.0
    server.loss_acc_global = record
    simu_async(types.SimpleNamespace(M=m), server, clients)
    tau = schedule_mod.get_tau_i(m, scenario, False)
    return dict(compute_times=torch.as_tensor(tau), delta=delta, windows=len(server.schedule_global),
                importance=None if sizes is None else torch.as_tensor(np.asarray(sizes, dtype=np.float64)),
                server_lr=lr_g, lr=LR, steps=STEPS,
                a={k: torch.stack([ai[k] for ai in a]) for k in shapes},
                c={k: torch.stack([ci[k] for ci in c]) for k in shapes},
                schedule=torch.as_tensor(server.schedule_global),
                weights=torch.as_tensor(np.asarray(server.agg_weights, dtype=np.float64)),
                w_global={k: torch.stack([t[k] for t in trajectory]) for k in shapes})


real_get_tau_i = schedule_mod.get_tau_i
cases = [run(real_get_tau_i(5, "F-80", False), 0.5, 6, None, 1.0, 0, scenario="F-80"),  # their FedFix-0.5
         run(real_get_tau_i(4, "F-80", False), 0.2, 3, None, 0.5, 1, scenario="F-80"),  # their FedFix-0.2
         run(real_get_tau_i(3, "F-80", False), 1.0, 4, None, 1.0, 2, scenario="F-80")]  # delta >= tau: FedAvg
rng = np.random.default_rng(2206)
cases.append(run(rng.uniform(0.1, 1.3, 6).round(3), 0.3, 4, rng.integers(20, 200, 6).tolist(), 0.8, 3))
schedule_mod.get_tau_i = server_mod.get_tau_i = real_get_tau_i
for case in cases:
    sched = case["schedule"].numpy()
    print(f"delta {case['delta']}: {case['windows']} windows, weights {case['weights'].numpy().round(3)}, "
          f"max staleness {max((np.arange(len(sched))[:, None] - sched)[sched >= 0].max(), 0)}")
out = Path(__file__).resolve().parents[2] / "tests" / "data" / "fedfix_golden.pt"
torch.save(cases, out)
print("wrote", out, out.stat().st_size, "bytes")
