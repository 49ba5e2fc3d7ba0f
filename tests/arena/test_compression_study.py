"""The compression study's pieces at a tiny size: the least-squares runs (EF plateaus only under heterogeneity),
one rank's CNN training under each hook, and (slow) the study's 2-rank CNN part through the CLI. (Its smallest
command line, the least-squares part, runs in tests/arena/test_studies.py.)"""
import json
import math

import pytest
import torch
import torch.distributed as dist

from gradwise.arena import compression_runs as cr

pytestmark = pytest.mark.usefixtures("one_thread")

KW = dict(ratio=0.1, lr_scale=0.5, noise=0.0, seed=0)


@pytest.fixture(scope="module")
def hetero():
    return cr.least_squares_problem(workers=4, dim=20, samples=80, heterogeneity=1.0, seed=0)


def test_problem_optimum_is_the_minimizer_and_local_optima_differ(hetero):
    assert float(hetero.grads(hetero.x_star).mean(0).norm()) < 1e-10  # the average gradient vanishes at x*
    assert float(hetero.grads(hetero.x_star).norm(dim=1).min()) > 1e-2  # each worker's does not
    same = cr.least_squares_problem(workers=4, dim=20, samples=80, heterogeneity=0.0, seed=0)
    assert torch.allclose(same.local_optima, same.local_optima[0].expand_as(same.local_optima))
    assert torch.allclose(same.x_star, same.local_optima[0])


def test_uncompressed_converges_and_error_feedback_plateaus_under_heterogeneity(hetero):
    runs = {m: cr.run_least_squares(hetero, m, steps=600, **KW) for m in cr.LS_METHODS}
    assert runs["ls-sgd"]["dist"] < 1e-10
    assert runs["ls-topk-ef"]["dist"] > 1e-4  # a plateau: no progress over the last third of the run
    late = [c[1] for c in runs["ls-topk-ef"]["curve"] if c[0] >= 400]
    assert max(late) / min(late) < 3
    assert runs["ls-topk"]["dist"] > runs["ls-topk-ef"]["dist"]
    assert all(not r["diverged"] for r in runs.values())


def test_error_feedback_converges_when_the_workers_share_their_optimum():
    same = cr.least_squares_problem(workers=4, dim=20, samples=80, heterogeneity=0.0, seed=0)
    assert cr.run_least_squares(same, "ls-topk-ef", steps=600, **KW)["dist"] < 1e-8


def test_bytes_per_step_are_gradwise_compressors_counts(hetero):
    dense = cr.run_least_squares(hetero, "ls-sgd", steps=3, **KW)
    topk = cr.run_least_squares(hetero, "ls-topk", steps=3, **KW)
    assert dense["bytes_per_step"] == 20 * 8 and dense["bytes_total"] == 3 * 20 * 8
    assert topk["bytes_per_step"] == 2 * (8 + 4)  # k = 0.1 * 20 values (float64) and int32 indices
    with pytest.raises(ValueError, match="Invalid method: 'nope'"):
        cr.run_least_squares(hetero, "nope", steps=3, **KW)


def test_gradient_noise_is_seeded(hetero):
    a = cr.run_least_squares(hetero, "ls-sgd", steps=20, **{**KW, "noise": 0.1})
    b = cr.run_least_squares(hetero, "ls-sgd", steps=20, **{**KW, "noise": 0.1})
    assert a["curve"] == b["curve"] and a["dist"] != cr.run_least_squares(hetero, "ls-sgd", steps=20, **KW)["dist"]


@pytest.fixture(scope="module")
def tiny_setup():
    from gradwise.arena.tasks import digits

    t = digits()
    return cr.CnnSetup(t.x_train[:160], t.y_train[:160], t.x_eval[:100], t.y_eval[:100], epochs=2, batch_size=16,
                       lr=0.1, start_iter=3, lgreco_rank=2, channels=4, hidden=16)


def test_one_rank_trains_under_every_hook_and_counts_bytes(tiny_setup, tmp_path):
    """World size 1 in this process (a gloo group of one): the hooks run, the bytes are ordered by rank."""
    from gradwise.distributed.compressors import powersgd_should_compress
    from gradwise.distributed.launch import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        out = cr.train_cnn_rank(0, 1, tiny_setup, cr.CNN_METHODS, seed=0)
    finally:
        dist.destroy_process_group()
    n_params = sum(p.numel() for p in cr.DigitsCNN(4, 16).parameters())
    steps = 2 * (160 // 16)
    for m in cr.CNN_METHODS:
        r = out[m]
        assert r["steps"] == steps and [c[0] for c in r["curve"]] == [1, 2] and 0 <= r["test_acc"] <= 1
        assert r["curve"][-1][1] == r["bytes_total"]
    assert out["cnn-dense"]["bytes_per_step"] == 4 * n_params  # float32 gradients
    per_step = [out[f"cnn-powersgd-{r}"]["bytes_per_step"] for r in (1, 2, 4)]
    assert per_step == sorted(per_step) and per_step[-1] < 4 * n_params
    compressed = [p for p in cr.DigitsCNN(4, 16).parameters()  # the layers PowerSGD compresses at rank 2
                  if p.dim() > 1 and powersgd_should_compress(p.shape[0], p[0].numel(), 2, 2)]
    assert len(out["cnn-lgreco"]["ranks"]) == len(compressed) == 3  # conv1 (4 x 9) is sent dense
    assert all(1 <= r <= 4 for r in out["cnn-lgreco"]["ranks"])
    dense = 4 * n_params
    for r in (1, 2, 4):  # 3 dense warm-up steps, then a constant message
        row = out[f"cnn-powersgd-{r}"]
        assert row["bytes_total"] == 3 * dense + (steps - 3) * row["bytes_per_step"]


@pytest.mark.slow
def test_cnn_part_on_two_ranks_through_the_cli(tmp_path, capsys):
    from gradwise.cli import main

    out = tmp_path / "run"
    assert main(["arena", "compression", "--seeds", "1", "--cnn-epochs", "2", "--methods",
                 "cnn-dense,cnn-powersgd-1,cnn-lgreco", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in doc["runs"]}
    assert set(rows) == {"cnn-dense", "cnn-powersgd-1", "cnn-lgreco"}
    assert rows["cnn-powersgd-1"]["bytes_per_step"] < rows["cnn-dense"]["bytes_per_step"]
    assert all(r["test_acc"] > 0.5 for r in rows.values())
    assert not math.isnan(doc["summary"][0]["test_acc_mean"])
    assert "EControl" in capsys.readouterr().out
