"""Golden EQ-Net quantized layers, WDR and GPG losses, made by running the authors' code.

Source: github.com/xuke225/EQ-Net at commit 86b9e41 (``module/qat_layer.py``, ``module/base_lsq.py``,
``module/base_uaq.py``, ``runner/criterion.py``; the GPG loop of ``runner/trainer.py``). The files are copied at
that commit into a temporary folder (``authors_code.extract``) and imported from there, unchanged. Their
``module/base_lsq.py`` imports ``cfg`` from ``core/config.py`` (yacs, not installed here) only to read
``cfg.Resume``; this script puts a stand-in ``core.config`` module with ``cfg.Resume = None`` (their default) in
``sys.modules``. Nothing of theirs on these paths calls ``.cuda()``. Their ``QuantSuperNetTrainer.train_epoch``
needs DDP and CUDA, so its GPG step (highest subnet with ``nn.CrossEntropyLoss``, then each next subnet with
``KLLossSoft(preds, soft_label, labels, alpha=0.5)`` against the previous subnet's detached logits, one
``backward()`` per subnet) is re-typed here around their ``KLLossSoft``; so is their WDR step
(``kurt_rate * KurtosisLoss(model)`` and ``skew_rate * SkewnessLoss(model)``, backward each) around their
functions. float64 is the default dtype.

Run from the repository root with their repository as a git directory at EQNET_REPO (e.g. the mirror of
github.com/xuke225/EQ-Net):

    EQNET_REPO=/path/to/EQ-Net PYTHONPATH=src .venv/bin/python tools/golden/make_eq_net_golden.py

Writes tests/data/eq_net_golden.pt:
  layers: 2 ``QATQuantModule`` runs (a Linear 6->5 whose calibration input has both signs, a Conv2d 3->4 k3 with
          an all-positive calibration input): the weight, bias and calibration batch; every step size and
          zero-point table after their MSE initialisation; then 4 (Linear) and 3 (Conv2d) configurations
          (weight bits, granularity, symmetry; input bits, symmetry), each with an input, an incoming gradient,
          the output and the gradients of weight, bias, input and every table;
  wdr: a 4-layer model's weights, their KurtosisLoss and SkewnessLoss and the weights' gradients of
       ``0.015 KurtosisLoss + 1.0 SkewnessLoss`` (their config's rates);
  gpg: 3 runs (3 subnets at T = 1, 4 subnets at T = 1, 3 subnets at T = 2): logits, labels, the per-subnet
       losses and the logits' gradients.
"""
import importlib.util
import os
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from authors_code import extract  # noqa: E402

torch.set_default_dtype(torch.float64)
COMMIT = "86b9e41"
FILES = ["module/qat_layer.py", "module/base_lsq.py", "module/base_uaq.py",
         "runner/criterion.py"]
core = types.ModuleType("core")
core_config = types.ModuleType("core.config")
core_config.cfg = types.SimpleNamespace(Resume=None)
core.config = core_config
sys.modules.update({"core": core, "core.config": core_config})


tmp = Path(extract(os.environ["EQNET_REPO"], COMMIT, FILES))  # their module/ has no __init__.py: a namespace package
from module.qat_layer import QATQuantModule  # noqa: E402

spec = importlib.util.spec_from_file_location("eqnet_criterion", tmp / "runner" / "criterion.py")
criterion = importlib.util.module_from_spec(spec)
spec.loader.exec_module(criterion)

gen = torch.Generator().manual_seed(0)
TABLES = {  # ours -> (their quantizer, their attribute)
    "w_scale_channel_sym": ("weight_quantizer", "scale_set_sym_channel"),
    "w_scale_channel_asym": ("weight_quantizer", "scale_set_asym_channel"),
    "w_zero_channel_asym": ("weight_quantizer", "beta_set_asym_channel"),
    "w_scale_tensor_sym": ("weight_quantizer", "scale_set_sym_layer"),
    "w_scale_tensor_asym": ("weight_quantizer", "scale_set_asym_layer"),
    "w_zero_tensor_asym": ("weight_quantizer", "beta_set_asym_layer"),
    "x_scale_sym": ("act_quantizer", "scale_set_sym"),
    "x_scale_asym": ("act_quantizer", "scale_set_asym"),
    "x_zero_asym": ("act_quantizer", "beta_set_asym"),
}


def tables(m, grad=False):
    out = {}
    for ours, (q, attr) in TABLES.items():
        t = getattr(getattr(m, q), attr)
        v = t.grad if grad else t.detach()
        v = torch.zeros_like(t) if v is None else v.clone()
        out[ours] = v if ours.startswith("w_scale_channel") or ours.startswith("w_zero_channel") else v[0]
    return out


def layer_run(org, calib, configs, shape_x):
    weight, bias = org.weight.detach().clone(), org.bias.detach().clone()
    params = dict(n_bits=8, scale_method="mse", leaf_param=True)
    m = QATQuantModule(org, dict(params), dict(params), quantizer="lsq")
    m.set_quant_state(True, True)
    with torch.no_grad():
        m(calib)
    run = dict(weight=weight, bias=bias, calib=calib, init=tables(m),
               positive=bool(m.act_quantizer.all_positive), cases=[])
    for w_bits, channel_wise, sym, a_bits, a_sym in configs:
        m.set_quantization_params(dict(bit=w_bits, symmetric=sym, channel_wise=channel_wise),
                                  dict(bit=a_bits, symmetric=a_sym))
        for p in m.parameters():
            p.grad = None
        for _, (q, attr) in TABLES.items():
            getattr(getattr(m, q), attr).grad = None
        x = (torch.randn(shape_x, generator=gen) * 1.5).requires_grad_()
        out = m(x)
        g = torch.randn(out.shape, generator=gen)
        out.backward(g)
        run["cases"].append(dict(w_bits=w_bits, channel_wise=channel_wise, symmetric=sym, a_bits=a_bits,
                                 act_symmetric=a_sym, x=x.detach().clone(), grad_out=g, out=out.detach(),
                                 grad_weight=m.weight.grad.clone(), grad_bias=m.bias.grad.clone(),
                                 grad_x=x.grad.clone(), grad_tables=tables(m, grad=True)))
    return run


lin = nn.Linear(6, 5)
with torch.no_grad():
    lin.weight.copy_(torch.randn(5, 6, generator=gen) * 0.4)
    lin.bias.copy_(torch.randn(5, generator=gen) * 0.1)
lin_run = layer_run(lin, torch.randn(16, 6, generator=gen), [
    (8, True, False, 8, True), (4, True, True, 6, False), (2, False, False, 2, True), (3, False, True, 5, False)],
    (7, 6))
conv = nn.Conv2d(3, 4, 3, padding=1)
with torch.no_grad():
    conv.weight.copy_(torch.randn(4, 3, 3, 3, generator=gen) * 0.3)
    conv.bias.copy_(torch.randn(4, generator=gen) * 0.1)
conv_run = layer_run(conv, torch.rand(4, 3, 5, 5, generator=gen) * 2.0, [
    (8, True, True, 8, True), (2, True, False, 4, False), (5, False, True, 3, True)], (2, 3, 5, 5))
assert conv_run["positive"] and not lin_run["positive"]

model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Linear(20, 30), nn.Linear(30, 10))
with torch.no_grad():
    for k, mod in enumerate(model):
        mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * (0.2 + 0.1 * k) + 0.05 * k)
        mod.weight[..., 0].pow_(3)  # skewed, heavy-tailed entries
kurt = criterion.KurtosisLoss(model)
skew = criterion.SkewnessLoss(model)
(0.015 * kurt).backward()
(1.0 * skew).backward()
wdr = dict(weights=[m.weight.detach().clone() for m in model], kurtosis=kurt.detach(), skewness=skew.detach(),
           grads=[torch.zeros_like(m.weight) if m.weight.grad is None else m.weight.grad.clone()
                  for m in model], kurt_rate=0.015, skew_rate=1.0)

gpg = []
for n, temperature in [(3, 1.0), (4, 1.0), (3, 2.0)]:
    logits = [(torch.randn(6, 5, generator=gen) * 2).requires_grad_() for _ in range(n)]
    labels = torch.randint(0, 5, (6,), generator=gen)
    soft = criterion.KLLossSoft()
    soft.temperature = temperature
    losses = [nn.CrossEntropyLoss()(logits[0], labels)]
    losses[0].backward()
    soft_label = logits[0].detach().clone()
    for z in logits[1:]:
        loss = soft(z, soft_label, labels, alpha=0.5)
        loss.backward()
        losses.append(loss.detach())
        soft_label = z.detach().clone()
    gpg.append(dict(logits=[z.detach().clone() for z in logits], labels=labels, temperature=temperature,
                    losses=torch.stack([v.detach() for v in losses]), grads=[z.grad.clone() for z in logits]))

out = Path(__file__).resolve().parents[2] / "tests" / "data" / "eq_net_golden.pt"
torch.save(dict(commit=COMMIT, layers=[lin_run, conv_run], wdr=wdr, gpg=gpg), out)
print("wrote", out, out.stat().st_size, "bytes")
