"""The one-step study's pieces at a tiny size: the methods table, the generator's levels, the metrics, a run
of every method (a few updates) and the claims' paired verdicts. (Its smallest command line runs in
tests/arena/test_studies.py.)"""
import dataclasses
import math

import pytest
import torch

from gradwise.arena import onestep_runs as orr
from gradwise.arena import onestep_study as os_
from gradwise.diffusion.toy import TEACHER_FILE, load_teacher

torch.set_num_threads(1)

TINY = dataclasses.replace(os_.Config(), seeds=1, gen_steps=1, batch_size=16, eval_n=64, checkpoints=2)


def test_the_methods_table_is_the_study_s_list():
    assert tuple(orr.METHODS) == os_.NAMES == tuple(os_.STUDY.methods())
    assert orr.METHODS["dmd"] == orr.MethodSpec("rkl", 5, False, 1)   # DMD2's ratio 5
    assert orr.METHODS["dmd-ratio1"].ratio == 1 and orr.METHODS["dmd-4step"].steps == 4


def test_generator_levels_are_dmd2_s_timesteps_on_the_karras_grid():
    one, four = orr.generator_steps(1), orr.generator_steps(4)
    assert one == [pytest.approx(80.0)] and four[0] == pytest.approx(80.0)
    assert all(a > b for a, b in zip(four, four[1:]))
    with pytest.raises(ValueError, match="steps"):
        orr.generator_steps(2)


def test_metrics_see_a_dropped_light_mode():
    ref = orr.mixture_reference(2000, 0)
    full = orr.evaluate(orr.mixture_reference(2000, 1), ref)
    assert full["recall"] == 1.0 and full["light_recall"] == 1.0 and 0.7 < full["light_mass"] < 1.3
    assert full["ed"] < 0.01
    x, _ = ref, None
    heavy = orr.mixture_reference(4000, 2)
    centers = torch.stack([torch.tensor([2.0 * math.cos(2 * math.pi * k / 8), 2.0 * math.sin(2 * math.pi * k / 8)])
                           for k in orr.light_modes()])
    keep = torch.cdist(heavy, centers).min(1).values > 0.5   # drop the light modes' samples
    dropped = orr.evaluate(heavy[keep][:2000], ref)
    assert dropped["light_recall"] == 0.0 and dropped["light_mass"] == 0.0 and dropped["recall"] == 0.75
    assert dropped["ed"] > full["ed"]
    assert orr.evaluate(torch.full((8, 2), float("nan")), ref)["ed"] == math.inf


@pytest.mark.skipif(not TEACHER_FILE.is_file(), reason="no cached teachers")
def test_the_loops_run_and_report_finite_metrics():
    # the smoke run (tests/arena/test_studies.py) runs every method; here the three kinds of loop: f-distill's
    # weighted update, the GAN term and the 4-step backward simulation
    teacher = load_teacher("mixture")
    before = [p.clone() for p in teacher.parameters()]
    ref = orr.mixture_reference(TINY.eval_n, 0)
    noise = torch.randn(TINY.eval_n, 2, generator=torch.Generator().manual_seed(0))
    for name in ("f-kl", "dmd-gan", "dmd-4step"):
        spec = orr.METHODS[name]
        out = orr.run_method(spec, teacher, 0, TINY, ref, noise)
        assert math.isfinite(out["ed"]) and len(out["ed_curve"]) == 1, name   # one checkpoint per update
        assert out["iterations"] == TINY.gen_steps * spec.ratio and out["nfe"] == spec.steps
    for p, q in zip(teacher.parameters(), before):   # the teacher is never trained
        assert torch.equal(p, q)


def test_claims_use_paired_differences_and_say_what_did_not_show():
    rows = [dict(method=m, seed=s, ed=e, light_mass=lm, ed_tail_sd=0.0)
            for s in range(3)
            for m, e, lm in (("dmd", 0.05 + 0.001 * s, 0.2), ("f-js", 0.06, 0.8 + 0.01 * s),
                             ("f-kl", 0.05, 0.2 + 0.1 * (s - 1)), ("dmd-gan", 0.01 + 0.001 * s, 0.3),
                             ("dmd-4step", 0.2 + 0.01 * s, 0.2), ("dmd-ratio1", 0.05, 0.2))]
    run = os_.Run(cfg=TINY, task=None, methods=os_.NAMES, seeds=(0, 1, 2))
    claims = os_._claims(run, rows)
    assert "SHOWN" in claims[0] and "NOT" not in claims[0]            # f-js keeps the light modes
    assert "NOT SHOWN (interval includes 0)" in claims[1]              # f-kl: no difference
    assert "GAN" in claims[3] and "NOT" not in claims[3]
    assert "NOT SHOWN (opposite sign)" in claims[4]                    # 4 steps worse here
    assert claims[-1].startswith("SIM vs DMD: not tested")
