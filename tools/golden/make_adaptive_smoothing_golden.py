"""Golden data for adaptive smoothing (seed 235), made by running the authors' ``CompositeModel`` and ``CompLoss``.

Repository: github.com/Bai-YT/AdaptiveSmoothing at commit 51f0198 (``models/comp_model.py``, ``models/mixing_net.py``,
``models/base_models/small_rn.py``, ``adaptive_smoothing/losses.py``), copied out with ``git show`` into a temporary
folder and imported from there as written. Point REPO at a git directory of theirs (a clone, or the mirror the
search tool's ``fetch`` brings); from the repository root:

    REPO=/work/.mirror/Bai-YT+AdaptiveSmoothing/repo .venv/bin/python tools/golden/make_adaptive_smoothing_golden.py

What is patched around their code (nothing inside it): ``torchvision`` is not installed, so an empty stand-in
module is put in ``sys.modules`` (``small_rn.py`` imports ``torchvision.transforms`` at the top and never uses it
in ``PreActBlock``, which ``MixingNetV3`` builds); ``forward_settings["parallel"] = True`` so their ``__init__``
does not call ``.cuda()`` on the mixing net (the only ``.cuda()`` call; nothing else needs a GPU); everything runs
in float64 (``torch.set_default_dtype``). The base models are stand-ins: linear layers on 8 features returning
``(logits, (x, logits))``, so their mixing-network call ``policy_net([x, x], [std_logits, rob_logits])`` reaches a
stand-in policy net that calls a small MLP on ``cat(x, std_logits, rob_logits)``, gradwise's
``mixing_net(x, std_logits, rob_logits)`` interface. Their ``__init__`` overwrites the configured ``gamma`` with
``-inf`` after setting it, so the fixed-gamma cases call their ``set_gamma_value`` after construction; scales and
biases go through their setters (which store float32 values: the values used are recorded as they read back).

Recorded: fixed gamma (2, -1.5, 0, -inf, +inf; logit scales; train and eval; for gamma = 2 the input gradient of
the summed cross-entropy); with the mixing network in training mode three batches in a row (outputs, gammas, the
BatchNorm's running mean/var after each, the gradient of CompLoss with every mixing-net parameter), then eval mode
with three gamma/alpha settings (outputs, gammas, the input gradient of the summed cross-entropy: what an attack
follows); CompLoss alone on two constant sets (loss and gradients with the predictions and gammas).
"""
import os
import sys
import types

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_code import extract  # noqa: E402

COMMIT = "51f019869564e551ac09b5da90ff90a7784e5eaa"
FILES = ["models/__init__.py", "models/comp_model.py", "models/mixing_net.py", "models/base_models/small_rn.py",
         "adaptive_smoothing/__init__.py", "adaptive_smoothing/losses.py"]
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data",
                   "adaptive_smoothing_golden.pt")
D_IN, C, HIDDEN = 8, 5, 16


class Base(nn.Module):
    """A stand-in base model: logits and (x, logits) as its 'intermediate features'."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D_IN, C)

    def forward(self, x):
        out = self.lin(x)
        return out, (x, out)


class Mixer(nn.Module):
    """gradwise's mixing_net(x, std_logits, rob_logits) -> gamma [B, 1] (tests/robustness rebuilds it)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(D_IN + 2 * C, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 1))

    def forward(self, x, s, r):
        return self.net(torch.cat([x, s, r], dim=1))


class PolicyStub(nn.Module):
    """Their policy-net call, policy_net([f_std0, f_rob0], [f_std1, f_rob1]), routed to the Mixer."""

    def __init__(self, mixer):
        super().__init__()
        self.mixer = mixer

    def forward(self, feats1, feats2):
        return self.mixer(feats1[0], feats2[0], feats2[1])


def main():
    repo = os.environ["REPO"]
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    sys.modules.setdefault("torchvision.transforms", types.ModuleType("torchvision.transforms"))
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    extract(repo, COMMIT, FILES)
    from adaptive_smoothing.losses import CompLoss
    from models.comp_model import CompositeModel

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(235)
    std, rob, mixer = Base(), Base(), Mixer()
    for m in (std, rob):
        m.lin.weight.data.mul_(3.0)
        for p in m.parameters():
            p.requires_grad_(False)

    def composite(use_policy, **extra):
        settings = dict(policy_graph=use_policy, pn_version=3, in_planes=(64, 64), parallel=True, std_model_type="rn18",
                        use_policy=use_policy, gamma=2.0, **extra)
        comp = CompositeModel([std, rob], settings)
        comp.policy_net = PolicyStub(mixer)
        return comp

    out = {"commit": COMMIT, "std": {k: v.clone() for k, v in std.state_dict().items()},
           "rob": {k: v.clone() for k, v in rob.state_dict().items()},
           "mixer": {k: v.clone() for k, v in mixer.state_dict().items()}}
    ce_sum = nn.CrossEntropyLoss(reduction="sum")

    # fixed gamma
    x = torch.randn(12, D_IN)
    y = torch.randint(0, C, (12,))
    fixed = []
    for gamma, s_std, s_rob, mode in ((2.0, 1.0, 1.0, "train"), (2.0, 1.0, 1.0, "eval"), (-1.5, 2.0, 0.5, "eval"),
                                      (0.0, 1.0, 1.0, "eval"), (-float("inf"), 2.0, 1.0, "eval"),
                                      (float("inf"), 1.0, 0.5, "eval")):
        comp = composite(False, std_scale=s_std, rob_scale=s_rob)
        comp.set_gamma_value(gamma)
        comp.train(mode == "train")
        xg = x.clone().requires_grad_(True)
        o, g = comp(xg)
        ce_sum(o, y).backward()
        fixed.append({"gamma": gamma, "std_scale": float(comp.std_scale), "rob_scale": float(comp.rob_scale),
                      "mode": mode, "out": o.detach().clone(), "gammas": g.detach().clone(),
                      "x_grad": xg.grad.clone(), "logits_only": abs(gamma) == float("inf")})
    out["fixed"] = {"x": x, "y": y, "cases": fixed}

    # mixing network: training mode, three batches
    comp = composite(True, alpha_scale=0.75, alpha_bias=0.25)
    comp.set_gamma_scale_bias(2.0, 0.5)
    comp.train()
    loss_fn = CompLoss({"bce": 1.0, "ce": 0.5, "prod": 0.1})
    train_steps = []
    for step in range(3):
        xb = torch.randn(16, D_IN) * (1.0 + step)
        yb = torch.randint(0, C, (16,))
        sup = (torch.arange(16) % 2).to(torch.get_default_dtype())
        scale = torch.where(sup > 0, 1.0, 2.0)
        mixer.zero_grad()
        o, g = comp(xb)
        loss = loss_fn(o, yb, g, sup, scale)
        loss.backward()
        train_steps.append({"x": xb, "y": yb, "sup": sup, "scale": scale, "out": o.detach().clone(),
                            "gammas": g.detach().clone(), "loss": loss.detach().clone(),
                            "running_mean": comp.bn.running_mean.clone(), "running_var": comp.bn.running_var.clone(),
                            "grads": {n: p.grad.clone() for n, p in mixer.named_parameters()}})
    out["train"] = {"gamma_scale": float(comp.gamma_scale), "gamma_bias": float(comp.gamma_bias),
                    "steps": train_steps}

    # eval mode after those batches (BatchNorm's running statistics)
    x = torch.randn(10, D_IN) * 2.0
    y = torch.randint(0, C, (10,))
    evals = []
    for g_scale, g_bias, a_scale, a_bias in ((3.0, 0.5, 0.75, 0.25), (3.0, 20.0, 0.75, 0.25), (2.0, -1.0, 0.5, 0.5)):
        comp.set_gamma_scale_bias(g_scale, g_bias)
        comp.set_alpha_scale_bias(a_scale, a_bias)
        comp.eval()
        xg = x.clone().requires_grad_(True)
        o, g = comp(xg)
        ce_sum(o, y).backward()
        evals.append({"gamma_scale": float(comp.gamma_scale), "gamma_bias": float(comp.gamma_bias),
                      "alpha_scale": float(comp.alpha_scale), "alpha_bias": float(comp.alpha_bias),
                      "out": o.detach().clone(), "gammas": g.detach().clone(), "x_grad": xg.grad.clone()})
    out["eval"] = {"x": x, "y": y, "running_mean": comp.bn.running_mean.clone(),
                   "running_var": comp.bn.running_var.clone(), "cases": evals}

    # CompLoss alone
    losses = []
    for consts, scale in (({"bce": 1.0, "ce": 0.5, "prod": 0.1}, None), ({"bce": 1.5, "ce": 1.0, "prod": 0.3}, 2.0)):
        preds = torch.log_softmax(torch.randn(9, C) * 2, dim=1).requires_grad_(True)
        gam = (torch.randn(9) * 3).requires_grad_(True)
        lab = torch.randint(0, C, (9,))
        sup = torch.randint(0, 2, (9,)).to(torch.get_default_dtype())
        w = torch.rand(9) + 0.5 if scale is None else scale
        loss = CompLoss(consts)(preds, lab, gam, sup, w)
        loss.backward()
        losses.append({"consts": consts, "preds": preds.detach().clone(), "gammas": gam.detach().clone(),
                       "labels": lab, "sup": sup, "weight": w, "loss": loss.detach().clone(),
                       "preds_grad": preds.grad.clone(), "gammas_grad": gam.grad.clone()})
    out["loss"] = losses
    torch.save(out, OUT)
    print("wrote", os.path.normpath(OUT), os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
