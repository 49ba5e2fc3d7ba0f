"""Golden values for the federated curriculum made by the authors' own code: pacing functions, the
client's ordered local training and the server's client curriculum.

Source: github.com/sreevatsank1999/Curriculum-FL at commit 8cd79cd7aab737b304c998681c8ec1d3f028832f
(the code of Vahidian et al., "When Do Curricula Work in Federated Learning?", ICCV 2023), checked out at
CURRICULUM_FL_REF. Used unchanged: ``src/pacing_fn/get_pacing_function.py``,
``src/client/client_fedavg_curr_lg_loss.py`` (``Client_FedAvg_Curr_LG_Loss``), ``src/utils/client_scheduler.py``
(``ClientScheduler``) and ``exp_lr_decay`` of ``src/utils/train_model.py``, each loaded from its file: their
``src/utils/__init__.py`` imports torchvision and their data sets, so ``src.utils`` is a stand-in holding
only ``exp_lr_decay`` (and an unused ``eval_on_dataloader``). In the client module, ``DataLoader`` is
replaced by one that yields the (sub)set's minibatches in order (their training shuffles each pass with
the global RNG; the order is what is compared) and ``Subset`` by one that records each pass's indices.
Everything runs in float64 (``torch.set_default_dtype``).

Run from the repository root:

    CURRICULUM_FL_REF=/path/to/Curriculum-FL PYTHONPATH=src .venv/bin/python tools/golden/make_curriculum_golden.py

Writes tests/data/curriculum_golden.pt with
- ``pacing``: per case (function, a, b, total_steps, total_data), ``g(t)`` for ``t = 0 .. 1.3 total_steps``;
- ``local``: per case (ordering, pacing, a, b, epochs, lr decay), a toy MLP's initial state, the client's
  data, the order their scoring gives, the indices of each pass, the state after their ``train()``, its
  returned loss and step count;
- ``clients``: per case (ordering, pacing, a, b, clients, budget), each client's example losses and the pool
  their ``ClientScheduler.next_sched`` returns at several update counts.
"""
import importlib.util
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
REF = Path(os.environ["CURRICULUM_FL_REF"])
sys.path.insert(0, str(REF))


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, REF / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if importlib.util.find_spec("tqdm") is None:  # train_model.py imports it; exp_lr_decay does not use it
    sys.modules["tqdm"] = types.SimpleNamespace(tqdm=lambda x, **k: x)
train_model = load("their_train_model", "src/utils/train_model.py")
utils_stub = types.ModuleType("src.utils")
utils_stub.exp_lr_decay = train_model.exp_lr_decay
utils_stub.eval_on_dataloader = None
sys.modules["src.utils"] = utils_stub
pacing_fn = load("src.pacing_fn", "src/pacing_fn/get_pacing_function.py")
client_mod = load("their_client", "src/client/client_fedavg_curr_lg_loss.py")
scheduler_mod = load("their_scheduler", "src/utils/client_scheduler.py")

gen = torch.Generator().manual_seed(2212)

# ---------------------------------------------------------------- pacing functions
pacing = []
for f in ("linear", "quad", "sqrt", "step", "exp", "log"):
    for a, b, total_steps, total_data in [(0.8, 0.2, 40, 70), (0.2, 0.4, 100, 10), (1.6, 0.0025, 25, 500),
                                          (1.0, 1.0, 30, 10), (0.1, 0.1, 50, 33), (math.inf, 0.3, 20, 40)]:
        g = pacing_fn.get_pacing_function(f, a, b, total_steps, total_data)
        ts = list(range(int(1.3 * total_steps) + 1))
        pacing.append(dict(pacing=f, a=a, b=b, total_steps=total_steps, total_data=total_data,
                           steps=torch.tensor(ts), sizes=torch.tensor([int(g(t)) for t in ts])))


# ---------------------------------------------------------------- a client's ordered local training
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.hidden = torch.nn.Linear(6, 8)
        self.linear = torch.nn.Linear(8, 4)  # their optimizer wants a `linear` head

    def forward(self, x):
        return self.linear(torch.tanh(self.hidden(x)))


passes: list = []


def recording_subset(ds, indices):
    passes.append(torch.tensor(list(indices)))
    return torch.utils.data.Subset(ds, list(indices))


class OrderedLoader(list):
    """The (sub)set's minibatches in order; ``.dataset`` as a DataLoader has it."""

    def __init__(self, ds, batch_size, shuffle=False, pin_memory=False):
        items = [ds[i] for i in range(len(ds))]
        super().__init__((torch.stack([x for x, _ in items[i:i + batch_size]]),
                          torch.stack([y for _, y in items[i:i + batch_size]]))
                         for i in range(0, len(items), batch_size))
        self.dataset = ds


client_mod.Subset = recording_subset
client_mod.DataLoader = OrderedLoader

local = []
for ordering, f, a, b, epochs, lr_a, lr_b, n in [("curr", "linear", 0.8, 0.2, 2, 0.0, 0.0, 70),
                                                 ("anti", "linear", 0.8, 0.2, 2, 0.0, 0.0, 70),
                                                 ("curr", "quad", 0.5, 0.1, 1, 0.1, 0.75, 90),
                                                 ("curr", "step", 0.4, 0.5, 2, 0.0, 0.0, 45),
                                                 ("anti", "exp", 0.8, 0.2, 3, 0.05, 0.5, 60)]:
    x = torch.randn(n, 6, generator=gen)
    y = torch.randint(0, 4, (n,), generator=gen)
    net = Net()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    client = client_mod.Client_FedAvg_Curr_LG_Loss(
        0, net, 10, epochs, 0.1, lr_a, lr_b, 0.9, 5e-4, torch.device("cpu"), "G",
        train_ds_local=torch.utils.data.TensorDataset(x, y), ordering=ordering, pacing_f=f, pacing_a=a,
        pacing_b=b)
    order, _ = client.scoring_func(w_glob={k: v.clone() for k, v in start.items()})
    passes.clear()
    loss, steps = client.train({k: v.clone() for k, v in start.items()})
    local.append(dict(ordering=ordering, pacing=f, a=a, b=b, epochs=epochs, lr=0.1, lr_decay=(lr_a, lr_b),
                      momentum=0.9, weight_decay=5e-4, batch_size=10, x=x, y=y, start=start,
                      order=torch.tensor(order), passes=list(passes), loss=float(loss), steps=int(steps),
                      result={k: v.clone() for k, v in client.get_state_dict().items()}))


# ---------------------------------------------------------------- the server's client curriculum
class FakeClient:
    """A client whose scoring_func returns fixed per-example losses, in their {index: [loss]} form."""

    def __init__(self, losses):
        self.losses = losses

    def scoring_func(self, w_glob=None):
        stat = {i: [float(v)] for i, v in enumerate(self.losses)}
        return list(stat), stat


clients = []
for ordering, f, a, b, num, budget in [("curr", "linear", 0.2, 0.4, 20, 100), ("anti", "linear", 0.5, 0.1, 12, 60),
                                       ("curr", "step", 0.3, 0.25, 16, 80), ("curr", "exp", 0.8, 0.2, 30, 50),
                                       ("anti", "sqrt", 0.6, 0.3, 9, 40)]:
    losses = [torch.rand(int(torch.randint(5, 30, (1,), generator=gen)), generator=gen) * (1 + i % 4)
              for i in range(num)]
    scheduler = scheduler_mod.ClientScheduler([FakeClient(v) for v in losses], budget, ordering=ordering,
                                              pacing_f=f, pacing_a=a, pacing_b=b)
    updates = [0, 1, budget // 10, budget // 4, budget // 2, budget - 1, budget]
    pools = [torch.tensor(list(scheduler.next_sched(None, u).indices)) for u in updates]
    clients.append(dict(ordering=ordering, pacing=f, a=a, b=b, total_updates=budget, losses=losses,
                        updates=torch.tensor(updates), pools=pools))

out = Path(__file__).resolve().parents[2] / "tests" / "data" / "curriculum_golden.pt"
torch.save({"pacing": pacing, "local": local, "clients": clients, "numpy": np.__version__}, out)
print(f"wrote {out} ({out.stat().st_size} bytes)")
