"""The data-free study's pieces at a small size. (Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses

import torch

from gradwise.arena import data_free_study as df
from gradwise.arena.tasks import Task
from gradwise.compression import LSQQuantizer

SMALL = dataclasses.replace(df.Config(), batch_size=8, pre_epochs=1, warmup=1, steps=2)


def test_student_quantizes_every_layer_and_keeps_the_teacher_unchanged():
    teacher = df.teacher_cnn().eval()
    before = [p.clone() for p in teacher.parameters()]
    student = df.student_cnn(teacher).eval()
    quantizers = [m for m in student.modules() if isinstance(m, LSQQuantizer)]
    assert len(quantizers) == 7 and all(q.bits == 4 for q in quantizers)  # 4 weight + 3 activation
    x = torch.randn(5, 64)
    assert student(x).shape == (5, 10)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    assert df.generator()(torch.randn(4, df.Z_DIM), torch.arange(4)).shape == (4, 64)


def test_adadfq_run_reports_teacher_calibrated_and_final_accuracy():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 64, generator=g), torch.randint(0, 10, (48,), generator=g)
    task = Task(name="toy", x_train=x[:32], y_train=y[:32], x_eval=x[32:], y_eval=y[32:], num_classes=10)
    row = df.run_one(task, SMALL, "adadfq", 0)
    assert all(0 <= row[k] <= 1 for k in ("fp_accuracy", "calib_accuracy", "accuracy"))
