"""The unlearning study's pieces at a tiny size: the loss-threshold MIA against a brute-force search, the forget
splits, each method of the table (DMM included) on a small job, one seed of the study with its KLoM columns and
its claim verdicts. (Its smallest
command line runs in tests/arena/test_studies.py.)"""
import copy
import json
import math

import pytest
import torch

from gradwise.arena import unlearning_study as us
from gradwise.arena.study import Run

pytestmark = pytest.mark.usefixtures("one_thread")


def _brute_force(member, nonmember, target):
    best_tau, best = -math.inf, 0.5
    for tau in sorted(set(torch.cat([member, nonmember]).tolist())):
        bal = (float((member <= tau).double().mean()) + float((nonmember > tau).double().mean())) / 2
        if bal > best + 1e-12:
            best_tau, best = tau, bal
    return float((target <= best_tau).double().mean()), best_tau


def test_mia_threshold_is_the_best_balanced_accuracy_one():
    rate, tau = us.loss_threshold_mia(torch.tensor([0.0, 0.1]), torch.tensor([1.0, 2.0]), torch.tensor([0.05, 1.5]))
    assert tau == pytest.approx(0.1) and rate == 0.5
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # ties included: losses on a coarse grid
        m = torch.randint(0, 8, (30,), generator=g).float() / 4
        n = torch.randint(2, 12, (17,), generator=g).float() / 4
        t = torch.randint(0, 12, (9,), generator=g).float() / 4
        assert us.loss_threshold_mia(m, n, t) == pytest.approx(_brute_force(m, n, t))


def test_mia_calls_nothing_a_member_when_no_threshold_separates():
    assert us.loss_threshold_mia(torch.ones(4), torch.ones(3), torch.zeros(2)) == (0.0, -math.inf)
    assert us.loss_threshold_mia(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.0]))[0] == 0.0
    with pytest.raises(ValueError, match="Invalid losses: an empty set"):
        us.loss_threshold_mia(torch.ones(2), torch.ones(0), torch.ones(2))


def test_forget_splits_partition_the_training_set():
    y = torch.arange(200) % 10
    f, r = us.forget_split(y, us.Config(forget_fraction=0.1), seed=0)
    assert len(f) == 20 and len(r) == 180 and sorted(torch.cat([f, r]).tolist()) == list(range(200))
    assert torch.equal(f, us.forget_split(y, us.Config(), seed=0)[0])
    assert not torch.equal(f, us.forget_split(y, us.Config(), seed=1)[0])
    f, r = us.forget_split(y, us.Config(forget_class=3), seed=0)
    assert bool((y[f] == 3).all()) and bool((y[r] != 3).all()) and len(f) == 20
    with pytest.raises(ValueError, match="Invalid forget set"):
        us.forget_split(torch.zeros(5, dtype=torch.long), us.Config(forget_class=3), seed=0)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    x = torch.randn(120, 8)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    cfg = us.Config(epochs=10, unlearn_epochs=2, batch_size=16, hidden=(16,), lr=0.1)
    idx = torch.arange(120)
    return x, y, cfg, us.train_model(x, y, idx, 4, cfg, seed=0), idx[:12], idx[12:]


def _job(tiny, seed=0):
    x, y, cfg, model, forget, retain = tiny
    dm = torch.randn(120, 120, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # DMM's weights
    return us.UnlearnJob(copy.deepcopy(model), x, y, forget, retain, 4, cfg, torch.Generator().manual_seed(seed), dm)


def test_every_method_of_the_table_changes_the_model_as_it_should(tiny):
    x, y, cfg, model, forget, retain = tiny
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    moved = {}
    for name, method in us.METHODS.items():
        job = _job(tiny)
        method(job)
        after = torch.cat([p.detach().flatten() for p in job.model.parameters()])
        moved[name] = int((after != before).sum())
        assert torch.isfinite(after).all(), name
    n = before.numel()
    assert moved["FT"] == moved["RL"] == n  # every weight moves
    assert 0 < moved["SalUn"] <= n // 2  # the masked-out half stays at θ0
    loss = lambda m: float(torch.nn.functional.cross_entropy(m(x[forget]).detach(), y[forget]))  # noqa: E731
    ga = _job(tiny)
    us.METHODS["GA"](ga)
    assert loss(ga.model) > loss(model)  # ascent raises the forget loss
    a, b = _job(tiny, seed=5), _job(tiny, seed=5)  # a method's run is seeded by its generator
    us.METHODS["RL"](a), us.METHODS["RL"](b)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert us.NOT_YET == {} and "DMM" in us.METHODS and "DMM" not in us.CHEAP
    assert moved["DMM"] == n  # Adam moves every weight
    dmm = _job(tiny)
    target = model(x).detach()[forget] - dmm.datamodel[forget, forget].float()  # each forget point's own effect
    us.METHODS["DMM"](dmm)
    gap = lambda m: float(((m(x[forget]).detach() - target) ** 2).mean())  # noqa: E731
    assert gap(dmm.model) < gap(model)  # the matching moves the forget outputs towards the prediction


def _one_seed(cfg, methods=us.CHEAP):
    from gradwise.arena.tasks import digits

    return us._run_seed(Run(cfg=cfg, task=digits(eval_split="test"), methods=tuple(methods), seeds=(0,)), 0)


def test_one_seed_of_the_class_scenario():
    cfg = us.Config(forget_class=3, epochs=2, unlearn_epochs=1, dm_models=2, klom_models=2)
    out = _one_seed(cfg, ("RL", "DMM"))
    rows = {r["method"]: r for r in out}
    assert list(rows) == ["original", "retrain", "RL", "DMM"]
    assert math.isnan(rows["retrain"]["klom_forget"]) and rows["DMM"]["dm_s"] > 0 == rows["RL"]["dm_s"]
    for name in ("original", "RL", "DMM"):
        assert rows[name]["klom_forget"] >= 0.0 and rows[name]["klom_test"] >= 0.0
    assert rows["retrain"]["avg_gap"] == 0.0 and rows["retrain"]["forget_acc"] < 5.0  # never saw a 3
    assert rows["original"]["forget_acc"] > 50.0 and rows["original"]["avg_gap"] > 10.0
    for r in rows.values():
        assert r["n_forget"] + r["n_retain"] == 1347 and r["wall_s"] > 0
        assert all(0.0 <= r[k] <= 100.0 for k in us.METRICS)
        gap = sum(abs(r[k] - rows["retrain"][k]) for k in us.METRICS) / 4
        assert r["avg_gap"] == pytest.approx(gap)
    summary = us._summarize(Run(cfg=cfg, task=None, methods=("RL", "DMM"), seeds=(0,)), out)
    assert [(s["method"], s["rank"]) for s in summary][:2] == [("retrain", None), ("original", None)]
    assert {s["method"] for s in summary[2:]} == {"RL", "DMM"}


def _summary(gaps, kloms=None):
    kloms = kloms or {}
    fields = lambda m: {f"klom_{k}_{s}": v for k in ("forget", "test")  # noqa: E731
                        for s, v in zip(("mean", "ci"), kloms.get(m, (5.0, 1.0)))}
    return [{"method": "retrain", "rank": None, "avg_gap_mean": 0.0, "avg_gap_ci": 0.0}] + [
        {"method": m, "rank": 1, "avg_gap_mean": g, "avg_gap_ci": h, **fields(m)} for m, (g, h) in gaps.items()]


def test_claim_verdicts_say_shown_tied_or_not_shown():
    run = Run(cfg=us.Config(), task=None, methods=us.CHEAP, seeds=(0, 1, 2))
    claim = "SalUn has the smallest gap to retrain among the cheap methods"
    v = us.claim_verdicts(run, _summary({"SalUn": (1.0, 0.5), "FT": (3.0, 0.5)}))
    assert v[claim] == "shown (SalUn has the smallest avg gap, its interval clear of FT)"
    assert v["DMM has the lowest KLoM"].startswith("not tested")  # DMM not run
    dmm = "DMM has the lowest KLoM"
    v = us.claim_verdicts(run, _summary({"DMM": (2.0, 0.1), "FT": (1.0, 0.1)}, {"DMM": (1.0, 0.2), "FT": (4.0, 0.2)}))
    assert v[dmm].startswith("shown (DMM has the smallest KLoM on the forget set, its interval clear of FT)")
    v = us.claim_verdicts(run, _summary({"DMM": (2.0, 0.1), "FT": (1.0, 0.1)}, {"DMM": (3.0, 2.0), "FT": (4.0, 2.0)}))
    assert v[dmm].startswith("not shown (tied with FT")
    v = us.claim_verdicts(run, _summary({"FT": (1.0, 1.0), "SalUn": (2.0, 1.0), "GA": (9.0, 1.0)}))
    assert v[claim] == "not shown (tied with FT: intervals overlap; smallest mean: FT)"
    v = us.claim_verdicts(run, _summary({"GA": (1.0, 0.1), "SalUn": (2.0, 0.1)}))
    assert v[claim] == "not shown (SalUn ranks 2 of 2; smallest avg gap: GA)"
    # a method outside the cheap ones (DMM) does not enter this claim
    v = us.claim_verdicts(run, _summary({"DMM": (0.1, 0.01), "SalUn": (1.0, 0.1), "FT": (3.0, 0.1)}))
    assert v[claim].startswith("shown")
    assert us.claim_verdicts(run, _summary({"SalUn": (1.0, 0.1)}))[claim].startswith("not tested")


@pytest.mark.slow
def test_cli_reports_the_claims_and_what_is_not_yet_in(tmp_path, capsys):
    from gradwise.cli import main

    out = tmp_path / "run"
    assert main(["arena", "unlearning", "--seeds", "1", "--epochs", "2", "--unlearn-epochs", "1", "--klom-models", "2",
                 "--methods", "SalUn,GA", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert [s["method"] for s in doc["summary"]][:2] == ["retrain", "original"]
    assert {s["method"] for s in doc["summary"] if s["rank"] is not None} == {"SalUn", "GA"}
    assert doc["not_yet"] == {} and len(doc["claims"]) == 2
    assert "DMM has the lowest KLoM" in capsys.readouterr().out
