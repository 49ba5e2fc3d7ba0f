"""Golden values for the distillation losses, made by running the authors' own code.

The authors' files are not part of this repository. Point REFS at a folder
holding, with their repository paths kept:

* ``CIFAR/utils.py`` of github.com/WangYZ1608/Knowledge-Distillation-via-ND at commit fc6f3f9
  (``DirectNormLoss``: the ND loss; ``KDLoss``: plain KD),
* ``distiller_zoo/`` and ``helper/optimizer.py`` of github.com/penghui-yang/DHKD at commit 7976c69
  (``BinaryKL``, ``BinaryKLNorm``, ``DistillKL``, ``OptimGradAlign``),
* ``mtard/mtard_resnet18_cifar10.py`` of github.com/zhaoshiji123/MTARD at commit 6480a1b
  (its ``kl_loss`` and the weight-update statements of its training loop,
  lifted out with ``ast`` because they live in the script's top level),

then run from the repository root:

    REFS=/path/to/refs .venv/bin/python tools/golden/make_distillation_golden.py

Writes tests/data/distillation_golden.pt (float64 inputs and the reference
outputs and gradients). The ``.cuda()`` calls in the ND code are made no-ops
so it runs on CPU.
"""
import ast
import importlib.util
import os
import sys

import torch

here = os.path.dirname(os.path.abspath(__file__))
REFS = os.environ["REFS"]
torch.set_default_dtype(torch.float64)   # the ND code builds its class centers with torch.tensor(list)
torch.Tensor.cuda = lambda self, *a, **k: self  # CPU run of the ND code


def load(name, rel):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REFS, rel))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sys.path.insert(0, REFS)
nd_utils = load("nd_utils", "CIFAR/utils.py")
import distiller_zoo  # noqa: E402  (DHKD)
dhkd_opt = load("dhkd_optimizer", "helper/optimizer.py")

gen = torch.Generator().manual_seed(20240603)
out = {"kd": [], "binary_kl": [], "dhkd": [], "nd": [], "dhkd_ga": [], "mtard_kl": [], "mtard_weights": []}


def rnd(*shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


# ---- plain KD: ND repo's KDLoss and DHKD repo's DistillKL
for n, c, scale, T in [(6, 5, 1.0, 4.0), (8, 10, 3.0, 1.0), (4, 3, 5.0, 2.0)]:
    s, t = rnd(n, c, scale=scale).requires_grad_(), rnd(n, c, scale=scale)
    loss = nd_utils.KDLoss(kl_loss_factor=1.0, T=T)(s, t)
    (g,) = torch.autograd.grad(loss, s)
    loss2 = distiller_zoo.DistillKL(T)(s, t)
    assert torch.allclose(loss, loss2)
    out["kd"].append(dict(student=s.detach(), teacher=t, temperature=T, loss=loss.detach(), grad=g))

# ---- DHKD's BinaryKL and BinaryKLNorm (moderate logits: their 1e-8 clamp stays inactive)
for n, c, scale, T in [(6, 5, 1.0, 2.0), (8, 10, 4.0, 2.0), (5, 7, 2.0, 1.0)]:
    s, t = rnd(n, c, scale=scale).requires_grad_(), rnd(n, c, scale=scale)
    for variant, cls in [("norm", distiller_zoo.BinaryKLNorm), ("plain", distiller_zoo.BinaryKL)]:
        loss = cls(temperature=T)(s, t)
        (g,) = torch.autograd.grad(loss, s)
        out["binary_kl"].append(dict(student=s.detach(), teacher=t, temperature=T, variant=variant,
                                     loss=loss.detach(), grad=g))

# ---- the DHKD objective as helper/loops.py: train_distill builds it (gamma * CE(main) + alpha * BinaryKLNorm(aux))
for n, c, gamma, alpha, T in [(6, 5, 1.0, 1.0, 2.0), (8, 10, 1.0, 0.1, 2.0)]:
    main, aux, t = rnd(n, c, scale=2.0).requires_grad_(), rnd(n, c, scale=2.0).requires_grad_(), rnd(n, c, scale=2.0)
    y = torch.randint(0, c, (n,), generator=gen)
    loss = gamma * torch.nn.CrossEntropyLoss()(main, y) + alpha * distiller_zoo.BinaryKLNorm(temperature=T)(aux, t)
    g_main, g_aux = torch.autograd.grad(loss, [main, aux])
    out["dhkd"].append(dict(main=main.detach(), aux=aux.detach(), teacher=t, target=y, gamma=gamma, alpha=alpha,
                            temperature=T, loss=loss.detach(), grad_main=g_main, grad_aux=g_aux))

# ---- DHKD gradient alignment (OptimGradAlign.ga_backward) on a tiny two-head model
for seed in (0, 1, 2):
    torch.manual_seed(seed)
    backbone, fc, fc2 = torch.nn.Linear(6, 4), torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    params = [*backbone.parameters(), *fc.parameters(), *fc2.parameters()]
    init = [p.detach().clone() for p in params]
    x, t = rnd(10, 6), rnd(10, 3, scale=3.0)
    y = torch.randint(0, 3, (10,), generator=gen)
    feat = torch.relu(backbone(x))
    l_cls = torch.nn.CrossEntropyLoss()(fc(feat), y)
    l_kd = 1.0 * distiller_zoo.BinaryKLNorm(temperature=2.0)(fc2(feat), t)
    opt = dhkd_opt.OptimGradAlign(torch.optim.SGD(params, lr=0.1))
    opt.ga_backward([l_cls, l_kd])
    out["dhkd_ga"].append(dict(seed=seed, init=init, x=x, teacher=t, target=y, grads=[p.grad.clone() for p in params]))

# ---- ND loss: DirectNormLoss
for n, d, c, s_scale, t_scale in [(6, 8, 4, 1.0, 1.0), (10, 16, 5, 3.0, 1.0), (7, 5, 3, 0.5, 2.0)]:
    s, t = rnd(n, d, scale=s_scale).requires_grad_(), rnd(n, d, scale=t_scale)
    centers = rnd(c, d, scale=2.0)
    y = torch.randint(0, c, (n,), generator=gen)
    t_emb = {str(k): centers[k].tolist() for k in range(c)}
    loss = nd_utils.DirectNormLoss(num_class=c, nd_loss_factor=1.0)(s_emb=s, t_emb=t, T_EMB=t_emb, labels=y)
    (g,) = torch.autograd.grad(loss, s)
    out["nd"].append(dict(student=s.detach(), teacher=t, centers=centers, target=y, loss=loss.detach(), grad=g))

# ---- MTARD: kl_loss and the Normalization Loss Balance update, lifted from the training script
src = open(os.path.join(REFS, "mtard/mtard_resnet18_cifar10.py")).read()
tree = ast.parse(src)
kl_def = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "kl_loss")
ns = {"torch": torch}
exec(compile(ast.Module(body=[kl_def], type_ignores=[]), "mtard_kl", "exec"), ns)
loop = next(n for n in ast.walk(tree) if isinstance(n, ast.For) and isinstance(n.target, ast.Tuple))  # the step loop
body = loop.body
first = next(i for i, st in enumerate(body) if "init_loss_nat == None" in ast.unparse(st))
last = next(i for i, st in enumerate(body) if ast.unparse(st).startswith("weight['adv_loss'] = 1"))
update_src = "\n".join(ast.unparse(st) for st in body[first:last + 1])
F = torch.nn.functional
for n, c, scale in [(6, 10, 2.0), (5, 4, 6.0)]:
    s, t = rnd(n, c, scale=scale).requires_grad_(), rnd(n, c, scale=scale)
    loss = torch.mean(ns["kl_loss"](F.log_softmax(s, dim=1), F.softmax(t.detach(), dim=1)))
    (g,) = torch.autograd.grad(loss, s)
    out["mtard_kl"].append(dict(student=s.detach(), teacher=t, loss=loss.detach(), grad=g))
for lr, bert in [(0.025, 1), (0.1, 2)]:
    state = {"weight": {"adv_loss": 1 / 2.0, "nat_loss": 1 / 2.0}, "init_loss_nat": None, "init_loss_adv": None,
             "weight_learn_rate": lr, "bert": bert}
    losses = (torch.rand(25, 2, generator=gen) + 0.2) * torch.linspace(2.0, 0.5, 25)[:, None]
    weights = []
    for la, ln in losses:
        state["kl_Loss1"], state["kl_Loss2"] = la, ln  # kl_Loss1: adversarial, kl_Loss2: natural (their names)
        exec(update_src, {}, state)
        weights.append((state["weight"]["adv_loss"], state["weight"]["nat_loss"]))
    out["mtard_weights"].append(dict(lr=lr, beta=float(bert), losses=losses, weights=torch.tensor(weights)))

out["update_source"] = update_src
torch.save(out, os.path.join(here, "..", "..", "tests", "data", "distillation_golden.pt"))
print({k: len(v) for k, v in out.items() if isinstance(v, list)})
