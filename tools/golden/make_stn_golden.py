"""Golden data for Self-Tuning Networks, made by running the authors' code.

Repository: github.com/asteroidhouse/self-tuning-networks, commit 3c4204993343b09a413588e063ebcf0cff3d64fd
("Update README.md"). Their files are not part of this repository: point REPO at a git directory of theirs (a
clone, or the mirror the search tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_stn_golden.py

It unpacks that commit (``git archive``) into a temporary folder and imports, unchanged, their
``cnn/hypermodels/hyperlinear.py``, ``cnn/hypermodels/hyperconv2d.py``, ``cnn/util/dropout.py``,
``cnn/util/hyperparameter.py`` (``create_hparams``) and ``stn_utils/hyperparameter.py`` (``perturb``,
``hparam_transform``, ``hnet_transform``, ``compute_entropy``, ``project``). They run as they are under torch
2.13 on CPU; no shim is needed (their code targets torch 0.4.1). Everything runs in float64
(``torch.set_default_dtype(torch.float64)``, so their ``torch.Tensor(...)`` and ``torch.tensor(...)`` are
float64). No dataset is read: inputs are seeded random tensors.

What it records (tests/data/stn_golden.pt):

* ``layers``: their ``HyperLinear`` (with and without bias, hnet rows per example) and ``HyperConv2d`` (stride 2,
  padding 1): state dict, input, hnet tensor, output, and the gradients of ``sum(output * cotangent)`` with
  respect to the input, the hnet tensor and every parameter; and the state dicts their layers get at
  construction under ``torch.manual_seed(7)`` (the initialisation);
* ``dropout``: their ``dropout`` and ``dropout_2d`` with per-example rates under ``torch.manual_seed(3)``;
* ``transforms``: ``hparam_transform`` on seeded unconstrained rows for the ranges of ``create_hparams``
  (dropout (0, 0.9), hue (0, 0.5), contrast (0, 1), discrete cutout length (0, 24)) and ``project`` for the
  half-lines and the whole line; ``compute_entropy``; ``perturb`` under a seed with one column shared by the
  batch (``minibatch=False``); ``create_hparams``' starting ``htensor``/``hscale``;
* ``loops``: two runs of their alternating loop on a 3-layer MLP of ``HyperLinear`` layers with per-layer dropout
  (their ``dropout``, rates ``dropout0``, ``dropout1``) and input dropout (``indropout``, applied to training
  batches only, as their ``optimization_step`` does), 3 hyperparameters from their ``create_hparams``. The loop
  below is a harness that calls their functions in the order of ``optimization_step`` in ``cnn/hypertrain.py``
  (that script parses arguments and loads CIFAR-10 at import, so it cannot be imported): per cycle,
  ``train_steps = 2`` training steps (perturb, transforms, input dropout, forward in train mode, cross-entropy
  minus ``entropy_weight * compute_entropy``, SGD step) then ``valid_steps = 1`` hyperparameter step (eval mode,
  unperturbed or, with ``tune_scales``, perturbed hyperparameters, same loss, Adam steps on ``htensor`` and
  ``hscale``). Run ``default``: their defaults (SGD lr 0.01 momentum 0.9, Adam lr 3e-3, entropy weight 1e-5,
  scales not tuned, starting rates 0.05, scale 0.5); run ``tuned_scales``: SGD lr 0.05, Adam lrs 0.02, entropy
  weight 1e-3, scales tuned, starting rates 0.3. Each run: 6 cycles from ``torch.manual_seed(11)`` set just
  before the first step, batches of 16 given in order; kept: the initial state dicts, the batches, the losses
  of every step, ``htensor``/``hscale`` after every hyperparameter step and the final model state dict.
"""
import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile

import torch
import torch.nn.functional as F

COMMIT = "3c4204993343b09a413588e063ebcf0cff3d64fd"
here = os.path.dirname(os.path.abspath(__file__))
repo = os.environ["REPO"]
tmp = tempfile.mkdtemp()
archive = subprocess.run(["git", "--git-dir", os.path.join(repo, ".git") if os.path.isdir(os.path.join(repo, ".git"))
                          else repo, "archive", COMMIT], check=True, capture_output=True).stdout
tarfile.open(fileobj=io.BytesIO(archive)).extractall(tmp, filter="data")
for p in (tmp, os.path.join(tmp, "cnn"), os.path.join(tmp, "cnn", "hypermodels")):
    sys.path.insert(0, p)

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)
import hyperconv2d as their_conv  # noqa: E402
import hyperlinear as their_linear  # noqa: E402
from stn_utils import hyperparameter as stnh  # noqa: E402
from util import dropout as their_dropout  # noqa: E402
from util import hyperparameter as cnnh  # noqa: E402

gen = torch.Generator().manual_seed(0)


def randn(*shape):
    return torch.randn(*shape, generator=gen)


def layer_case(layer, x, hnet):
    for p in layer.parameters():  # random weights, not the small init, so that every term matters
        with torch.no_grad():
            p.copy_(randn(*p.shape) * 0.5)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    x = x.clone().requires_grad_(True)
    hnet = hnet.clone().requires_grad_(True)
    out = layer(x, hnet)
    cot = randn(*out.shape)
    names = [n for n, _ in layer.named_parameters()]
    grads = torch.autograd.grad((out * cot).sum(), [x, hnet] + [p for _, p in layer.named_parameters()])
    return {"state": state, "x": x.detach(), "hnet": hnet.detach(), "cotangent": cot, "out": out.detach(),
            "grad_x": grads[0], "grad_hnet": grads[1], "grad_params": dict(zip(names, grads[2:]))}


layers = {
    "linear": layer_case(their_linear.HyperLinear(5, 4, 3), randn(6, 5), randn(6, 3)),
    "linear_nobias": layer_case(their_linear.HyperLinear(5, 4, 2, bias=False), randn(6, 5), randn(6, 2)),
    "conv": layer_case(their_conv.HyperConv2d(3, 4, kernel_size=3, padding=1, num_hparams=2, stride=2),
                       randn(2, 3, 7, 7), randn(2, 2)),
}
torch.manual_seed(7)
layers["init_linear"] = their_linear.HyperLinear(5, 4, 3).state_dict()
torch.manual_seed(7)
layers["init_conv"] = their_conv.HyperConv2d(3, 4, kernel_size=3, padding=1, num_hparams=2, stride=2).state_dict()

x_drop, p_drop = randn(5, 3, 4), torch.rand(5, generator=gen) * 0.8
x_drop2d = randn(5, 6, 2, 2)
torch.manual_seed(3)
dropout = {"x": x_drop, "probs": p_drop, "x2d": x_drop2d,
           "out": their_dropout.dropout(x_drop, p_drop, training=True)}
dropout["out2d"] = their_dropout.dropout_2d(x_drop2d, p_drop, training=True)

# transforms: the ranges of their create_hparams
hdict = {"dropout": stnh.HyperparameterInfo(index=0, range=(0., 0.9), hnet_fcn=lambda x: x),
         "hue": stnh.HyperparameterInfo(index=1, range=(0., 0.5), hnet_fcn=lambda x: x),
         "contrast": stnh.HyperparameterInfo(index=2, range=(0., 1.), hnet_fcn=lambda x: x),
         "cutlength": stnh.HyperparameterInfo(index=3, discrete=True, range=(0., 24.), hnet_fcn=lambda x: x,
                                              minibatch=False)}
u = randn(7, 4) * 2
hscale = randn(4)
htensor = randn(4)
torch.manual_seed(5)
perturbed = stnh.perturb(htensor, hscale, 6, hdict)
line = randn(9) * 3
inf = float("inf")
transforms = {
    "u": u, "values": stnh.hparam_transform(u, hdict), "hnet": stnh.hnet_transform(u, hdict),
    "hscale": hscale, "entropy": stnh.compute_entropy(hscale), "htensor": htensor, "perturbed": perturbed,
    "line": line, "proj_lower": stnh.project(line, 0.5, inf), "proj_upper": stnh.project(line, -inf, 2.0),
    "proj_none": stnh.project(line, -inf, inf), "proj_both": stnh.project(line, -1.0, 3.0),
}
args = argparse.Namespace(tune_dropout=False, tune_dropoutl=True, tune_hue=False, tune_jitters=False,
                          tune_contrast=False, tune_sat=False, tune_bright=False, tune_indropout=True,
                          tune_inscale=False, tune_cutlength=False, tune_cutholes=False, tune_fcdropout=False,
                          start_drop=0.05, start_indrop=0.05, perturb_scale=0.5)


class MLPClass:
    num_drops = 2


ht0, hs0, hd0 = cnnh.create_hparams(args, MLPClass, "cpu")
transforms["create_htensor"], transforms["create_hscale"] = ht0.detach().clone(), hs0.detach().clone()
transforms["create_names"] = list(hd0)


class TheirMLP(torch.nn.Module):
    """A 3-layer MLP of their HyperLinear, their dropout after each hidden layer (as their AlexNet's fc part)."""

    def __init__(self, num_hparams):
        super().__init__()
        self.fc1 = their_linear.HyperLinear(8, 16, num_hparams)
        self.fc2 = their_linear.HyperLinear(16, 16, num_hparams)
        self.fc3 = their_linear.HyperLinear(16, 3, num_hparams)

    def forward(self, x, hnet_tensor, hparam_tensor, hdict):
        x = F.relu(self.fc1(x, hnet_tensor))
        x = their_dropout.dropout(x, hparam_tensor[:, hdict["dropout0"].index], training=self.training)
        x = F.relu(self.fc2(x, hnet_tensor))
        x = their_dropout.dropout(x, hparam_tensor[:, hdict["dropout1"].index], training=self.training)
        return self.fc3(x, hnet_tensor)


def run_loop(name, start, train_lr, valid_lr, scale_lr, entropy_weight, tune_scales, cycles=6, batch=16):
    args.start_drop = args.start_indrop = start
    htensor, hscale, hd = cnnh.create_hparams(args, MLPClass, "cpu")
    torch.manual_seed(100)
    model = TheirMLP(len(hd))
    w = randn(8, 3)
    def batches(n):
        out = []
        for _ in range(n):
            xb = randn(batch, 8)
            out.append((xb, (xb @ w + 0.5 * randn(batch, 3)).argmax(1)))
        return out
    train_batches, val_batches = batches(2 * cycles), batches(cycles)
    init = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "htensor": htensor.detach().clone(),
            "hscale": hscale.detach().clone()}
    cnn_opt = torch.optim.SGD(model.parameters(), lr=train_lr, momentum=0.9)
    hyper_opt = torch.optim.Adam([htensor], lr=valid_lr)
    scale_opt = torch.optim.Adam([hscale], lr=scale_lr)

    def step(xb, yb, hyper):
        # the order of their optimization_step (cnn/hypertrain.py), calling their functions
        cnn_opt.zero_grad(); hyper_opt.zero_grad(); scale_opt.zero_grad()
        if not hyper or tune_scales:
            batch_ht = stnh.perturb(htensor, hscale, xb.shape[0])
        else:
            batch_ht = htensor.repeat(xb.shape[0], 1)
        hparam_tensor = stnh.hparam_transform(batch_ht, hd)
        hnet_tensor = stnh.hnet_transform(batch_ht, hd)
        if not hyper:
            xb = their_dropout.dropout(xb, hparam_tensor[:, hd["indropout"].index], training=True)
        pred = model(xb, hnet_tensor, hparam_tensor, hd)
        xent = F.cross_entropy(pred, yb)
        loss = xent - entropy_weight * stnh.compute_entropy(hscale)
        loss.backward()
        if not hyper:
            cnn_opt.step()
        else:
            hyper_opt.step()
            if tune_scales:
                scale_opt.step()
        return xent.detach(), loss.detach()

    torch.manual_seed(11)
    train_losses, val_losses, hts, hss = [], [], [], []
    for c in range(cycles):
        model.train()
        for k in range(2):
            train_losses.append(step(*train_batches[2 * c + k], hyper=False)[0])
        model.eval()
        val_losses.append(step(*val_batches[c], hyper=True)[1])
        hts.append(htensor.detach().clone())
        hss.append(hscale.detach().clone())
    return {"names": list(hd), "start": start, "train_lr": train_lr, "valid_lr": valid_lr, "scale_lr": scale_lr,
            "entropy_weight": entropy_weight, "tune_scales": tune_scales, "init": init,
            "train_batches": train_batches, "val_batches": val_batches, "train_losses": torch.stack(train_losses),
            "val_losses": torch.stack(val_losses), "htensor": torch.stack(hts), "hscale": torch.stack(hss),
            "final_model": {k: v.clone() for k, v in model.state_dict().items()}}


loops = {"default": run_loop("default", 0.05, 0.01, 3e-3, 3e-3, 1e-5, False),
         "tuned_scales": run_loop("tuned_scales", 0.3, 0.05, 0.02, 0.02, 1e-3, True)}

out = os.path.join(here, "..", "..", "tests", "data", "stn_golden.pt")
torch.save({"commit": COMMIT, "torch": torch.__version__, "layers": layers, "dropout": dropout,
            "transforms": transforms, "loops": loops}, out)
print("wrote", os.path.normpath(out))
