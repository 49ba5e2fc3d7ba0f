"""Golden data for Magnitude Invariant Parametrizations (MIP), made by running the authors' hyperlight.

Repository: github.com/JJGO/hyperlight, commit a3e210812ba2b9aede34cdb0550e823241a11e42 ("Update README.md").
Their files are not part of this repository (and are not installed with pip): point REPO at a git directory of
theirs (a clone, or the mirror the search tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/their/repo OMP_NUM_THREADS=1 .venv/bin/python tools/golden/make_mip_golden.py

It reads every ``hyperlight/**.py`` at that commit with ``git show`` into a temporary folder and imports the
package (it needs only torch). It records, on seeded inputs:

* ``hyperlight.hypernet.encoding.encode_input`` in its three modes ("cos|sin", "z|1-z", None);
* ``hyperlight.HyperNet`` for the parameters of a small target MLP (input shape {"h": (3,)}, hidden sizes
  [8, 16]), in each encoding, with and without ``init_independent_weights`` (MIP's additive output versus a
  plain hypernetwork): its state dict, the predicted parameters for a batch of 4 inputs, and the gradients of
  ``sum(outputs * weights)`` with respect to the hypernetwork's parameters and its input;
* for their default configuration on a larger target, the standard deviation of their initialization of each
  output block (rows of the output layer's weight per target parameter; the independent parameters), over 20
  seeds, to check our initialization follows the same distribution.

Writes tests/data/mip_golden.pt.
"""
import os
import subprocess
import sys
import tempfile

import torch
from torch import nn

COMMIT = "a3e210812ba2b9aede34cdb0550e823241a11e42"
here = os.path.dirname(os.path.abspath(__file__))
repo = os.environ["REPO"]
tmp = tempfile.mkdtemp()
files = subprocess.run(["git", "-C", repo, "ls-tree", "-r", "--name-only", COMMIT, "hyperlight"], check=True,
                       capture_output=True, text=True).stdout.split()
for name in files:
    src = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:{name}"], check=True, capture_output=True,
                         text=True).stdout
    os.makedirs(os.path.join(tmp, os.path.dirname(name)), exist_ok=True)
    with open(os.path.join(tmp, name), "w") as f:
        f.write(src)
sys.path.insert(0, tmp)
import hyperlight as hl  # noqa: E402
from hyperlight.hypernet.encoding import encode_input  # noqa: E402

gen = torch.Generator().manual_seed(0)
z = torch.rand(5, 3, generator=gen)
encodings = {str(mode): encode_input(z, mode=mode) for mode in ("cos|sin", "z|1-z", None)}


def target():
    return nn.Sequential(nn.Linear(4, 5), nn.LeakyReLU(), nn.Linear(5, 2))


shapes = {name: tuple(p.shape) for name, p in target().named_parameters()}
cases = []
for encoding in ("cos|sin", "z|1-z", None):
    for independent in (True, False):
        torch.manual_seed(1)
        net = hl.HyperNet(input_shapes={"h": (3,)}, output_shapes=shapes, hidden_sizes=[8, 16],
                          encoding=encoding, init_independent_weights=independent)
        h = torch.rand(4, 3, generator=gen).requires_grad_(True)
        out = net(h=h)
        weights = {k: torch.randn(v.shape, generator=gen) for k, v in out.items()}
        loss = sum((out[k] * weights[k]).sum() for k in out)
        params = dict(net.named_parameters())
        grads = torch.autograd.grad(loss, list(params.values()) + [h])
        cases.append(dict(encoding=str(encoding), independent=independent, h=h.detach(),
                          state={k: v.detach().clone() for k, v in net.state_dict().items()},
                          out={k: v.detach() for k, v in out.items()}, weights=weights,
                          grads=dict(zip(params, grads[:-1])), grad_h=grads[-1]))

big = nn.Sequential(nn.Linear(16, 32), nn.LeakyReLU(), nn.Linear(32, 32), nn.LeakyReLU(), nn.Linear(32, 10))
big_shapes = {name: tuple(p.shape) for name, p in big.named_parameters()}
stds = {"weight": {k: [] for k in big_shapes}, "independent": {k: [] for k in big_shapes}, "hidden": []}
for seed in range(20):
    torch.manual_seed(seed)
    net = hl.HyperNet(input_shapes={"h": (2,)}, output_shapes=big_shapes, hidden_sizes=[16, 64])
    for name, (offset, length) in net._output_offsets.items():
        stds["weight"][name].append(net.backbone.output.weight[offset:offset + length].std().item())
        stds["independent"][name].append(net.backbone.output.bias[offset:offset + length].std().item()
                                         if name.endswith("weight") else
                                         net.backbone.output.bias[offset:offset + length].abs().max().item())
    stds["hidden"].append([net.backbone.block0_lin.weight.std().item(), net.backbone.block1_lin.weight.std().item()])
init = dict(shapes=big_shapes, input_size=2, hidden_sizes=[16, 64],
            weight_std={k: torch.tensor(v).mean().item() for k, v in stds["weight"].items()},
            independent_std={k: torch.tensor(v).mean().item() for k, v in stds["independent"].items()},
            hidden_std=torch.tensor(stds["hidden"]).mean(0).tolist())
meta = dict(repo="github.com/JJGO/hyperlight", commit=COMMIT, torch=str(torch.__version__))
torch.save(dict(meta=meta, z=z, encodings=encodings, shapes=shapes, cases=cases, init=init),
           os.path.join(here, "..", "..", "tests", "data", "mip_golden.pt"))
print("wrote", len(cases), "cases;", init)
