"""The lpn study's pieces at a small size: the blur operator's adjoint, both run kinds, the summary's ranking.
(Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses

import pytest
import torch

from gradwise.arena import lpn_study as ls
from gradwise.arena.study import Run

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = dataclasses.replace(ls.Config(), steps=8, digits_steps=8, admm_iters=3, inv_steps=5, seeds=1)


def test_blur_adjoint_is_the_transpose():
    A, At = ls.blur_ops()
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(3, 64, generator=g), torch.randn(3, 64, generator=g)
    assert (A(u) * v).sum().item() == pytest.approx((u * At(v)).sum().item(), rel=1e-5)
    assert A(torch.ones(1, 64))[0].reshape(8, 8)[3, 3].item() == pytest.approx(1.0, rel=1e-6)  # kernel sums to 1


def test_runs_report_their_numbers_and_summary_ranks_each_part():
    rows = [ls.run_one(SMALL, m, 0) for m in ls.METHODS]
    for r in rows[:3]:
        assert r["phi_err"] >= 0 and r["prox_err"] >= 0
    d = rows[3]
    assert d["resid_ratio"] >= 0 and d["phi_rises"] in (0.0, 1.0) and d["psnr_blurred"] > 0
    summary = ls._summarize(Run(SMALL, None, ls.METHODS, (0,)), rows)
    assert [s["rank"] for s in summary] == [1, 2, 3, 1]  # ranks within each part
    assert summary[0]["phi_err_mean"] <= summary[1]["phi_err_mean"] <= summary[2]["phi_err_mean"]
    assert "digits: PSNR blurred" in ls._notes(Run(SMALL, None, ls.METHODS, (0,)), summary)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method"):
        ls.run_one(SMALL, "laplace-huber", 0)
