"""Study ``data-free``: a digits CNN quantized to W4A4 (``--bits``) without data, AdaDFQ's generator
against a plain one.

Claim (AdaDFQ, Qian et al., "Adaptive Data-Free Quantization", CVPR 2023, arXiv 2303.06869; issue 20, study 6):
a generator trained with AdaDFQ's losses (:func:`adadfq_losses`: the margin on the teacher-student
disagreement entropy, the one-hot disagreement/agreement terms and BN-statistics matching) gives samples on
which the quantized network recovers more of the full-precision accuracy than a generator trained to match
the BatchNorm statistics only. The paper's scale is CIFAR/ImageNet ResNets; this may not show on 8x8 digits.

Data: scikit-learn's 8x8 digits (1,347 training, 450 test images; the split of ``digits_task``); the training
images are used only to train the full-precision teacher. Teacher: conv 1->16 (3x3) -> BN -> ReLU -> conv
16->32 (3x3, stride 2) -> BN -> ReLU -> conv 32->32 -> BN -> ReLU -> global average pool -> linear 32->10,
``pre_epochs`` of Adam 1e-3, batch 64, fixed by the seed. Student: a copy with LSQ quantizers
(:class:`LSQQuantizer`): all weights ``bits``-bit (default 4) per channel (the first conv and the linear layer
too, unlike the 8-bit first/last layers usual in data-free quantization: at 8 bits the loss was too small to
recover), inputs of the second and third conv and of the linear layer ``bits``-bit unsigned (the image input
stays full precision); the student's BatchNorm layers keep the
teacher's running statistics (eval mode). Generator (GDFQ-style, small): ``z * embed(y)`` (32-d) -> linear ->
32x4x4 -> BN -> upsample x2 -> conv 32->32 -> BN -> LeakyReLU 0.2 -> conv 32->1 -> BN without affine.

Each run: ``warmup`` generator-only steps, then the activation steps are set from one generated batch
(``calib`` accuracy: LSQ's initial steps, no training), then ``steps`` alternating steps (generator, then
student on the detached batch), batch ``batch_size``; generator Adam 1e-3 (0.5, 0.999), student Adam
``lr`` on weights and steps. Methods:

* ``gaussian`` -- no generator: standard-normal 8x8 images; student loss KD = KL(teacher || student), T = 1;
* ``plain-gen`` -- generator loss = BNS only (:func:`adadfq_bns_loss`); student loss KD;
* ``adadfq-gen-kd`` -- generator loss = :func:`adadfq_losses` (the authors' CIFAR defaults); student loss KD
  (isolates the generator);
* ``adadfq`` -- AdaDFQ's generator loss and AdaDFQ's student loss (:func:`adadfq_student_loss`, T = 20).

``bits`` (default 4) sets the student's W/A bits. Reported: test accuracy of the teacher, of the quantized
student after calibration and after fine-tuning.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gradwise.arena.noisy_labels_study import digits_task
from gradwise.arena.stats import CI_NOTE, RANK_NOTE
from gradwise.arena.study import Column, Run, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "METHODS", "STUDY", "teacher_cnn", "student_cnn", "generator", "run_one"]

HELP = "digits CNN to W4A4 (--bits) without data: AdaDFQ generator losses vs a BN-statistics-only generator"
METHODS = ("gaussian", "plain-gen", "adadfq-gen-kd", "adadfq")
Z_DIM = 32


@dataclass(frozen=True)
class Config:
    batch_size: int = option(64, "generated batch size", at_least=1)
    lr: float = 1e-4
    bits: int = option(4, "weight and activation bits of the student (W<bits>A<bits>)", at_least=2, below=9)
    pre_epochs: int = option(15, "teacher training epochs on real digits", at_least=1)
    warmup: int = option(50, "generator-only steps before the student is calibrated", at_least=1)
    steps: int = option(250, "alternating generator/student steps", at_least=1)
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    threads: int = 1


def teacher_cnn():
    from torch import nn

    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)),
                         nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def student_cnn(teacher, bits: int = 4):
    """A copy of ``teacher`` with ``bits``-bit LSQ weight (and input) quantizers; weights copied."""
    import copy

    import torch.nn.functional as F
    from torch import nn

    from gradwise.compression import LSQQuantizer

    class QLayer(nn.Module):
        def __init__(self, layer, w_bits, a_bits):
            super().__init__()
            self.layer = layer
            self.wq = LSQQuantizer(w_bits, per_channel=True)
            self.wq.init_from(layer.weight)
            self.aq = None if a_bits is None else LSQQuantizer(a_bits, signed=False)

        def forward(self, x):
            if self.aq is not None:
                x = self.aq(x)
            w = self.wq(self.layer.weight)
            if isinstance(self.layer, nn.Conv2d):
                return F.conv2d(x, w, self.layer.bias, self.layer.stride, self.layer.padding)
            return F.linear(x, w, self.layer.bias)

    s = copy.deepcopy(teacher)
    for k, (wb, ab) in {1: (bits, None), 4: (bits, bits), 7: (bits, bits), 12: (bits, bits)}.items():
        s[k] = QLayer(s[k], wb, ab)
    return s


def _init_activation_steps(student, x) -> None:
    import torch

    acts: dict = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: acts.setdefault(m, a[0].detach()))
             for m in student.modules() if type(m).__name__ == "QLayer" and m.aq is not None]
    with torch.no_grad():
        student(x)
    for h in hooks:
        h.remove()
    for m, a in acts.items():
        m.aq.init_from(a)


def generator():
    from torch import nn

    class Gen(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, Z_DIM)
            self.fc = nn.Linear(Z_DIM, 32 * 16)
            self.body = nn.Sequential(nn.BatchNorm2d(32), nn.Upsample(scale_factor=2),
                                      nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.LeakyReLU(0.2),
                                      nn.Conv2d(32, 1, 3, padding=1), nn.BatchNorm2d(1, affine=False))

        def forward(self, z, y):
            return self.body(self.fc(z * self.embed(y)).view(-1, 32, 4, 4)).flatten(1)

    return Gen()


def _accuracy(model, task) -> float:
    import torch

    with torch.no_grad():
        return float((model(task.x_eval).argmax(1) == task.y_eval).double().mean())


def _kd(t, s):
    import torch.nn.functional as F

    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True)


def run_one(task, cfg: Config, method: str, seed: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from gradwise.compression import BNStatsRecorder, adadfq_bns_loss, adadfq_losses, adadfq_student_loss

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    teacher = teacher_cnn()
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    for _ in range(cfg.pre_epochs):
        teacher.train()
        for idx in torch.randperm(len(task.x_train), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(teacher(task.x_train[idx]), task.y_train[idx]).backward()
            opt.step()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    row: dict[str, Any] = {"method": method, "seed": seed, "fp_accuracy": _accuracy(teacher, task)}
    student = student_cnn(teacher, cfg.bits).eval()
    for p in student.parameters():
        p.requires_grad_(True)
    g = generator()
    g_opt = torch.optim.Adam(g.parameters(), lr=1e-3, betas=(0.5, 0.999))
    n = cfg.batch_size

    def sample():
        y = torch.randint(0, 10, (n,), generator=gen)
        if method == "gaussian":
            return torch.randn(n, 64, generator=gen), y
        return g(torch.randn(n, Z_DIM, generator=gen), y), y

    def generator_step():
        if method == "gaussian":
            return
        x, y = sample()
        with BNStatsRecorder(teacher) as rec:
            t = teacher(x)
        if method == "plain-gen":
            loss = adadfq_bns_loss(rec.stats)
        else:
            loss = adadfq_losses(t, student(x), y, bn_stats=rec.stats)["loss"]
        g_opt.zero_grad()
        loss.backward()
        g_opt.step()

    g.train()
    for _ in range(cfg.warmup):
        generator_step()
    with torch.no_grad():
        _init_activation_steps(student, sample()[0])
    row["calib_accuracy"] = _accuracy(student, task)
    s_opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    for _ in range(cfg.steps):
        generator_step()
        with torch.no_grad():
            x, _ = sample()
            t = teacher(x)
        s = student(x)
        loss = adadfq_student_loss(t, s) if method == "adadfq" else _kd(t, s)
        s_opt.zero_grad()
        loss.backward()
        s_opt.step()
    row["accuracy"] = _accuracy(student, task)
    row["wall_s"] = time.perf_counter() - t0
    return row


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"data-free on digits: CNN teacher ({cfg.pre_epochs} epochs) -> W{cfg.bits}A{cfg.bits} student "
            "(all layers), "
            f"no real data; {cfg.warmup} generator warm-up + {cfg.steps} alternating steps x batch {cfg.batch_size}, "
            f"student Adam {cfg.lr:g}, {cfg.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return ("best first by the student's test accuracy after fine-tuning on generated images; calib = after setting "
            "LSQ's activation steps from one generated batch, before fine-tuning; fp = the teacher; "
            f"{CI_NOTE}; {RANK_NOTE}")


STUDY = register_study(Study(
    name="data-free", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    setup=digits_task, run_one=lambda run, method, seed, _: run_one(run.task, run.cfg, method, seed),
    summary_keys=("accuracy", "calib_accuracy", "fp_accuracy", "wall_s"),
    rank_on="accuracy", title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"), ci_column("student acc", "accuracy"),
             ci_column("calib", "calib_accuracy"), Column("fp", lambda s: f"{s['fp_accuracy_mean']:.4f}"),
             Column("s/run", lambda s: f"{s['wall_s_mean']:.1f}")),
    outputs=(), smoke=("--seeds", "1", "--pre-epochs", "1", "--warmup", "1", "--steps", "2",
                       "--batch-size", "16"),
))
