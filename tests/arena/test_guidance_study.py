"""The guidance study's pieces at a tiny size: the measures, the guided sampler, the sweeps' rules and the
claims' verdicts. (Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses
import math

import pytest
import torch

pytest.importorskip("diffusers")

from gradwise.arena import guidance_runs as gr  # noqa: E402
from gradwise.arena import guidance_study as gs  # noqa: E402
from gradwise.arena.study import Run  # noqa: E402

torch.set_num_threads(1)
TINY = dataclasses.replace(gs.Config(), seeds=2, per_class=1, steps=4, val_per_class=1, scales=(1.0, 8.0),
                           apg_momenta=(0.0,), apg_thresholds=(1.0, 8.0), ag_gammas=(0.99, 0.9999))


@pytest.fixture(scope="module")
def task():
    return gr.load_task()


def test_measures_on_the_data(task):
    from gradwise.diffusion.toy import digits_8x8
    x, y = digits_8x8("test")
    m = gr.measure(task, x[:200], y[:200], x[:200])
    assert m["oor"] == 0 and m["dist"] == 0 and m["acc"] >= 0.95
    assert math.isclose(gr.measure(task, 1.5 * torch.ones(1, 1, 8, 8), y[:1])["oor"], 0.5)
    assert math.isnan(gr.measure(task, x[:2], y[:2])["dist"])


def test_guided_sampler_passes_and_scales(task):
    y, noise = gr.labels_and_noise(1, 0)
    x1, n1 = gr.sample(task, gr.cfg_guider(1.0), y, noise, steps=4)
    xa, na = gr.sample(task, gr.apg_guider(1.0, 0.0, 0.0), y, noise, steps=4)
    x8, n8 = gr.sample(task, gr.cfg_guider(8.0), y, noise, steps=4)
    assert n1 == na == 4 and n8 == 8
    torch.testing.assert_close(x1, xa)  # w = 1: no guidance, one pass, either guider
    # CFG at a high scale leaves the data range and grows the norm; APG with a norm threshold much less
    xp, _ = gr.sample(task, gr.apg_guider(8.0, 0.0, 1.0), y, noise, steps=4)
    m1, m8, mp = (gr.measure(task, x, y) for x in (x1, x8, xp))
    assert m8["oor"] > mp["oor"] and m8["norm"] > mp["norm"] > 0


def test_ag_saves_passes_and_the_sweep_keeps_its_rule(task):
    ag = gr.tune_ag(task, TINY)
    assert ag["gamma_bar"] in TINY.ag_gammas
    chosen = next(t for t in ag["tried"] if t["gamma_bar"] == ag["gamma_bar"])
    ok = [t for t in ag["tried"] if t["dist"] <= TINY.ag_tolerance * ag["cond_dist"]]
    assert chosen == (ok[0] if ok else min(ag["tried"], key=lambda t: t["dist"]))
    rows = gr.ag_rows(task, TINY, 0, 0.99)
    by = {r["method"]: r for r in rows}
    assert by["CFG w=4 (full)"]["nfe"] == 8 and by["conditional only"]["nfe"] == 4
    assert 4 < by["AG w=4"]["nfe"] <= 8 and by["CFG w=4 (full)"]["dist"] == 0


def test_apg_sweep_picks_the_least_out_of_range_among_the_accurate(task):
    apg = gr.tune_apg(task, TINY)
    ok = [t for t in apg["tried"] if t["acc"] >= apg["cfg"]["acc"] - TINY.apg_acc_slack]
    best = min(ok, key=lambda t: (t["oor"], -t["acc"]))
    assert (apg["momentum"], apg["norm_threshold"]) == (best["momentum"], best["norm_threshold"])


def test_claims_report_paired_verdicts():
    rows = []
    for seed in range(3):
        rows += [{"method": "CFG w=1", "seed": seed, "oor": 0.0, "norm": 6.0, "acc": 0.9},
                 {"method": "CFG w=8", "seed": seed, "oor": 0.5 + 0.01 * seed, "norm": 9.0, "acc": 1.0},
                 {"method": "APG w=8", "seed": seed, "oor": 0.1, "norm": 7.0 + 0.01 * seed, "acc": 1.0},
                 {"method": "DC-Solver NFE=5", "seed": seed, "dist": 0.5 + 0.1 * seed},
                 {"method": "UniPC NFE=5", "seed": seed, "dist": 0.5}]
    cfg = dataclasses.replace(TINY, solver_nfes=(5,))
    out = gs.claims(Run(cfg=cfg, task=None, methods=gs.NAMES, seeds=(0, 1, 2)), rows)
    assert "(SHOWN)" in out[0] and "(SHOWN)" in out[1]  # CFG's mass and norm grow with w
    assert out[2].count("(SHOWN)") == 2  # APG below CFG at w = 8
    assert "(NOT SHOWN)" in out[-1]  # DC-Solver not closer than UniPC here
    assert gs._verdict((1.0, math.inf), True) == "(one seed: no interval)"


def test_solver_rows_tiny(task):
    cfg = dataclasses.replace(TINY, solver_nfes=(5,), reference_steps=10)
    rows = gr.solver_rows(task, cfg, 0)
    assert [r["method"] for r in rows] == ["UniPC NFE=5", "DC-Solver NFE=5"]
    assert len(rows[1]["ratios"]) == 5 and rows[1]["ratios"][:2] == [1.0, 1.0]
    assert all(r["dist"] > 0 and math.isfinite(r["dist"]) for r in rows)


def test_summary_over_seeds_leaves_untaken_measures_nan():
    def row(label, s):
        return {"method": label, "part": "scale", "seed": s, "acc": 0.9, "oor": 0.01 * s, "norm": 6.0, "nfe": 4,
                "dist": math.nan}
    rows = [{"method": "CFG", "seed": s, "settings": [row("CFG w=1", s), row("CFG w=8", s)]} for s in range(3)]
    one, head = gs._summarize(Run(cfg=TINY, task=None, methods=("CFG",), seeds=(0, 1, 2)), rows)
    assert math.isnan(one["dist_mean"]) and math.isclose(one["oor_mean"], 0.01) and one["runs"] == 3
    assert gs.COLUMNS[-1].cell(one) == "—"
    # the driver ranks one row per method: the headline setting (w nearest tune_w) carries the method's name
    assert (one["method"], one["rank"]) == ("CFG w=1", None) and (head["method"], head["rank"]) == ("CFG", 1)
    assert head["label"] == "CFG w=8"
