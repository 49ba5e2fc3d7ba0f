"""Golden data for AdaDFQ (seed 250), made by running the authors' loss code from their CIFAR trainer.

Repository: github.com/hfutqian/AdaDFQ, commit 84100f3 (``AdaDFQ/CIFAR/trainer.py``). Point REPO at a git
directory of theirs (a clone, or the mirror the search tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/their/repo PYTHONPATH=src .venv/bin/python tools/golden/make_adadfq_golden.py

``trainer.py`` imports their ``utils`` package at import time, so the code is taken out of the file (copied with
``git show`` into a temporary folder, ``authors_code.extract``) and executed there: ``compute_entropy`` and
``marginal_loss`` (``ast``), the method ``Trainer.loss_fn_kd`` (``ast``, called with a stand-in ``self``), and
the generator-loss block of ``Trainer.train`` (its source lines from ``#generation loss`` to the ``loss_G = ...``
line, executed with ``self`` a namespace holding their ``nn.LogSoftmax(dim=1)``, ``nn.MSELoss()``, the settings
and the BatchNorm statistics lists). Textual patches: every ``.cuda()`` is removed (CPU), and the block's
``torch.zeros(1)`` accumulator becomes ``torch.zeros(1, dtype=torch.float64)`` so float64 statistics are not
rounded to float32 (dtype only). Their ``marginal_loss`` compares against ``torch.zeros(16)`` ("batch size 16"),
so every case has 16 samples.

Cases (float64, seeded): 6 generator-loss settings (10 or 100 classes, logit scales from near-agreement to strong
disagreement so that both sides of the margin are active, the CIFAR defaults and other alpha/lambda/beta/gamma,
with and without BatchNorm statistics): ``loss_G`` and its parts, with gradients of ``loss_G`` with respect to
the teacher and student logits and the batch statistics; 3 student-loss cases (``loss_fn_kd``, T = 20) with the
gradient with respect to the student logits.

Output: tests/data/adadfq_golden.pt (``torch.load(..., weights_only=True)``).
"""
import ast
import math
import os
import sys
import textwrap
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_code import extract  # noqa: E402

COMMIT = "84100f3"
FILE = "AdaDFQ/CIFAR/trainer.py"
repo = os.environ["REPO"]
tmp = extract(repo, COMMIT, [FILE], on_path=())
src = open(os.path.join(tmp, FILE)).read()
tree = ast.parse(src)

ns = {"torch": torch, "nn": nn, "F": F, "math": math}
funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("compute_entropy", "marginal_loss")]
assert len(funcs) == 2
code = "\n\n".join(ast.get_source_segment(src, f) for f in funcs)
assert code.count(".cuda()") == 1
exec(code.replace(".cuda()", ""), ns)
trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
kd = next(n for n in trainer.body if isinstance(n, ast.FunctionDef) and n.name == "loss_fn_kd")
exec(textwrap.dedent(ast.get_source_segment(src, kd).expandtabs(4)), ns)
lines = src.splitlines()
start = next(i for i, ln in enumerate(lines) if ln.strip() == "#generation loss")
stop = next(i for i, ln in enumerate(lines) if ln.strip().startswith("loss_G = "))
block = textwrap.dedent("\n".join(lines[start:stop + 1]).expandtabs(4))
assert block.count(".cuda()") == 1 and block.count("torch.zeros(1)") == 1
block = block.replace(".cuda()", "").replace("torch.zeros(1)", "torch.zeros(1, dtype=torch.float64)")
GEN = compile(block, "trainer.py:generation-loss", "exec")

B = 16
SETTINGS = [  # (name, classes, teacher scale, student noise, settings, bn layers)
    ("cifar10-defaults", 10, 3.0, 1.0, dict(alpha_ds=0.2, alpha_as=0.1, lambda_l=0.1, lambda_u=0.8, beta=1, gamma=1), 0),
    ("cifar10-bns", 10, 3.0, 0.5, dict(alpha_ds=0.2, alpha_as=0.1, lambda_l=0.1, lambda_u=0.8, beta=1, gamma=1), 3),
    ("cifar100-bns", 100, 4.0, 2.0, dict(alpha_ds=0.2, alpha_as=0.1, lambda_l=0.1, lambda_u=0.8, beta=1, gamma=1), 2),
    ("near-agreement", 10, 2.0, 0.05, dict(alpha_ds=0.2, alpha_as=0.1, lambda_l=0.3, lambda_u=0.6, beta=0.5, gamma=2), 1),
    ("strong-disagreement", 10, 6.0, 6.0, dict(alpha_ds=0.5, alpha_as=0.3, lambda_l=0.2, lambda_u=0.5, beta=2, gamma=0.5), 2),
    ("narrow-margin", 100, 1.0, 1.0, dict(alpha_ds=0.1, alpha_as=0.2, lambda_l=0.4, lambda_u=0.45, beta=1, gamma=1), 0),
]


def generator_case(name, c, t_scale, noise, settings, n_bn, seed):
    g = torch.Generator().manual_seed(seed)
    t = dict(dtype=torch.float64, generator=g)
    teacher = torch.randn(B, c, **t) * t_scale
    student = teacher + torch.randn(B, c, **t) * noise
    labels = torch.randint(0, c, (B,), generator=g)
    stats = []
    for _ in range(n_bn):
        ch = int(torch.randint(3, 9, (1,), generator=g))
        stats.append([torch.randn(ch, **t), torch.rand(ch, **t) + 0.5, torch.randn(ch, **t), torch.rand(ch, **t) + 0.5])
    leaves = [teacher.clone().requires_grad_(), student.clone().requires_grad_()]
    stat_leaves = [[x.clone().requires_grad_(i < 2) for i, x in enumerate(s)] for s in stats]
    labels_loss = torch.zeros(B, c, dtype=torch.float64)
    labels_loss.scatter_(1, labels.unsqueeze(1), 1.0)
    self = types.SimpleNamespace(
        log_soft=nn.LogSoftmax(dim=1), MSE_loss=nn.MSELoss(), settings=types.SimpleNamespace(nClasses=c, **settings),
        mean_list=[s[0] for s in stat_leaves], var_list=[s[1] for s in stat_leaves],
        teacher_running_mean=[s[2] for s in stat_leaves], teacher_running_var=[s[3] for s in stat_leaves])
    scope = dict(ns, self=self, output_teacher_batch=leaves[0], output=leaves[1], labels_loss=labels_loss)
    if n_bn == 0:  # their block divides by len(mean_list); with no BatchNorm we evaluate it without that term
        scope["self"].settings.gamma = 0
        self.mean_list, self.var_list = [torch.zeros(1, dtype=torch.float64)], [torch.zeros(1, dtype=torch.float64)]
        self.teacher_running_mean, self.teacher_running_var = self.mean_list, self.var_list
    exec(GEN, scope)
    loss_g = scope["loss_G"]
    loss_g.sum().backward()
    out = dict(name=name, settings={k: float(v) for k, v in settings.items()}, teacher=teacher, student=student,
               labels=labels, stats=stats, loss=loss_g.detach().reshape(()),
               margin=scope["h_loss"].detach(), disagreement=scope["loss_ds"].detach(),
               agreement=scope["loss_as"].detach(), onehot=scope["loss_onehot"].detach(),
               bns=scope["BNS_loss"].detach().reshape(()), grad_teacher=leaves[0].grad, grad_student=leaves[1].grad,
               grad_stats=[[s[0].grad, s[1].grad] for s in stat_leaves])
    assert out["loss"].dtype == torch.float64
    return out


def student_case(c, noise, seed):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(B, c, dtype=torch.float64, generator=g) * 3
    student = (teacher + torch.randn(B, c, dtype=torch.float64, generator=g) * noise).requires_grad_()
    self = types.SimpleNamespace()
    loss = ns["loss_fn_kd"](self, student, None, teacher)
    loss.backward()
    return dict(classes=c, teacher=teacher, student=student.detach(), loss=loss.detach(), grad_student=student.grad)


def main():
    gen = [generator_case(*s, seed=200 + i) for i, s in enumerate(SETTINGS)]
    stu = [student_case(10, 1.0, 300), student_case(100, 5.0, 301), student_case(10, 0.01, 302)]
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "adadfq_golden.pt")
    torch.save(dict(commit=COMMIT, generator=gen, student=stu), out)
    print("wrote", os.path.normpath(out), os.path.getsize(out), "bytes")
    for c in gen:
        print(c["name"], "loss", float(c["loss"]), "margin", float(c["margin"]), "bns", float(c["bns"]))


main()
