"""The tta study's pieces at a tiny size: the methods table, the streams, one seed of every method, RWS.
(Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses

import pytest
import torch

from gradwise.arena import tta_runs as tr
from gradwise.arena import tta_study as ts

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    d = tr.digits_images()
    # a small slice: enough for a source model that beats chance, fast enough for the default suite
    return tr.DigitsImages(d.x_train[:300], d.y_train[:300], d.x_val[:24], d.y_val[:24], d.x_test[:16],
                           d.y_test[:16])


TINY = dataclasses.replace(ts.Config(), seeds=1, test_limit=16, loops=2, source_epochs=3, npc_k=5, rws=0,
                           severities=(2,), rws_epochs=1)


def test_the_methods_table_is_the_study_s_list():
    assert tuple(tr.METHODS) == ts.NAMES
    assert not set(tr.NOT_YET_IN) & set(tr.METHODS)  # alpha-bn: one entry when it lands
    assert ts.STUDY.methods() == ts.NAMES


def test_streams_have_the_orders_and_loops(data):
    x, y = data.x_test, data.y_test
    s = tr._streams(x, y, 2, 0, TINY)
    n = len(y) * len(tr.KINDS)
    assert set(s) == set(tr.ORDERS)
    assert len(s["iid"][1]) == len(s["label"][1]) == n and len(s["continual"][1]) == TINY.loops * n
    # continual: the loops repeat the same sequence; label: each domain sorted by label
    xc, yc = s["continual"]
    assert torch.equal(xc[:n], xc[n:]) and torch.equal(yc[:n], yc[n:])
    for d in range(len(tr.KINDS)):
        part = s["label"][1][d * len(y):(d + 1) * len(y)]
        assert torch.equal(part, part.sort().values)
    # i.i.d. and continual hold the same samples, in another order
    assert torch.equal(s["iid"][1].sort().values, yc[:n].sort().values)


def test_one_seed_of_every_method(data):
    source = tr.train_source(data, 0, epochs=TINY.source_epochs)
    rows = tr.run_seed(ts.NAMES, data, TINY, 0, source)
    by = {r["method"]: r for r in rows}
    assert list(by) == list(ts.NAMES)
    samples = 16 * len(tr.KINDS) * (2 + TINY.loops)  # i.i.d. + label + continual loops, one severity
    for r in rows:
        for k in ("err_iid", "err_continual", "err_label", "clean_after"):
            assert 0.0 <= r[k] <= 1.0, (r["method"], k)
        assert len(r["loop_errs"]) == TINY.loops
        assert r["d_margin"] in tr.D_MARGINS and r["beta"] in tr.BETAS
    # methods that change no weight: the same error in every loop, no clean drop, no backward pass
    for m in ("source", "test-bn", "lame"):
        assert by[m]["loop_rise"] == 0.0 and by[m]["backward"] == 0, m
    assert by["source"]["clean_drop"] == 0.0 and by["lame"]["clean_drop"] == 0.0
    # the source model sees the same samples in every order: i.i.d. and continual errors agree
    assert by["source"]["err_iid"] == pytest.approx(by["source"]["err_continual"])
    assert by["tent"]["backward"] == samples
    assert 0 <= by["eata"]["backward"] <= samples and 0 <= by["eta"]["backward"] <= samples


def test_rws_patches_a_copy_and_reports_accuracies(data):
    source = tr.train_source(data, 0, epochs=TINY.source_epochs)
    before = {k: v.clone() for k, v in source.state_dict().items()}
    got = tr.rws_check(data, TINY, 0, source)
    assert set(got) == {"rws_noisy_clean_model", "rws_noisy_robust_model", "rws_noisy_patched",
                        "rws_clean_clean_model", "rws_clean_patched"}
    assert all(0.0 <= v <= 1.0 for v in got.values())
    assert all(torch.equal(before[k], v) for k, v in source.state_dict().items())  # the clean model is kept


def test_notes_state_the_claims_and_what_is_not_yet_in():
    s = {"err_avg", "err_iid", "err_continual", "err_label", "loop_rise", "clean_drop", "backward"}
    summary = [{"method": m, **{f"{k}_mean": 0.1 for k in s}, **{f"{k}_ci": 0.01 for k in s},
                "loop_errs_mean": [0.1, 0.2]} for m in ts.NAMES]
    run = ts.Run(cfg=ts.Config(), task=None, methods=ts.NAMES, seeds=(0,), state={"tuned": {"0": {"d_margin": 0.4}}})
    notes = ts._notes(run, summary)
    assert "EATA vs Tent" in notes and "LAME label-shift" in notes and "Tent's continual error per loop" in notes
    assert "RMT's continual error per loop" in notes
    assert "not yet in: alpha-BN (issue 17)" in notes and "RMT" not in notes.split("not yet in")[1]
    assert "d_margin" in notes
