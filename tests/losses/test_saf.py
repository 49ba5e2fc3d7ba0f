"""SAF and MESA (Sharpness-Aware Training for Free): against the authors' training step (golden data), the memory's
epoch lag, the start/end window, checkpoints, the EMA teacher, bad input, and the index-returning dataset."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradwise.data_weighting import IndexedDataset
from gradwise.losses import MESALoss, SAFLoss, kd_loss, mesa_loss, saf_loss

torch.set_num_threads(1)
GOLDEN = torch.load(Path(__file__).resolve().parents[1] / "data" / "saf_golden.pt")
TOL = dict(rtol=1e-10, atol=1e-12)


def _model(run) -> nn.Module:
    bn = run["config"]["bn"]
    model = nn.Sequential(*([nn.Linear(6, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.Tanh(), nn.Linear(16, 5)]))
    model = model.double()
    model.load_state_dict(run["init"])
    return model


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _replay(run, make_reg):
    """Their loop (SGD momentum 0.9, lr 0.1, mean cross-entropy + the regularizer), step by step against the
    golden values: per-sample KL terms, the loss, the gradient and the weights after every step."""
    cfg = run["config"]
    model = _model(run)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    reg, call = make_reg(model, cfg)
    x, y, bs = run["x"], run["y"], cfg["batch_size"]
    step = 0
    for epoch, order in enumerate(run["orders"]):
        model.train()
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            out = model(x[idx])
            per = call(reg, out, idx, x[idx], epoch)  # coef * T^2 * KL per sample, 0 while off
            want_kl = run["kl_per_sample"][step]
            if torch.isnan(want_kl).all():
                assert not reg.active(epoch) and (per == 0).all()
            else:
                assert reg.active(epoch)
                torch.testing.assert_close(per / cfg["reinforce"], want_kl, **TOL)
            loss = F.cross_entropy(out, y[idx]) + per.mean()
            torch.testing.assert_close(loss.item(), float(run["step_loss"][step]), **TOL)
            opt.zero_grad()
            loss.backward()
            torch.testing.assert_close(_flat(p.grad for p in model.parameters()), run["grads"][step], **TOL)
            opt.step()
            if hasattr(reg, "update"):
                reg.update(model)
            torch.testing.assert_close(_flat(model.parameters()), run["params"][step], **TOL)
            step += 1
        if "ema_states" in run:
            for k, v in reg.teacher.state_dict().items():
                if v.is_floating_point():
                    torch.testing.assert_close(v, run["ema_states"][epoch][k], **TOL)
    assert step == len(run["params"])
    return reg


@pytest.mark.parametrize("name", ["saf", "saf_drop"])
def test_saf_matches_the_authors_training_step(name):
    run = GOLDEN["runs"][name]

    def make(model, cfg):
        reg = SAFLoss(cfg["n"], 5, lag=cfg["minus_epoch"], start_epoch=cfg["kl_start_epoch"],
                      end_epoch=cfg["kl_end_epoch"], coef=cfg["reinforce"], temperature=cfg["temperature"],
                      reduction="none", dtype=torch.float64)
        return reg, lambda r, out, idx, xb, epoch: r(out, idx, epoch)

    reg = _replay(run, make)
    # the memory ends as theirs: every slot, including the zeros and stale rows of samples left out of epochs
    torch.testing.assert_close(reg.memory, run["memory"], **TOL)


def test_mesa_matches_the_authors_training_step_and_ema():
    run = GOLDEN["runs"]["mesa"]

    def make(model, cfg):
        reg = MESALoss(model, decay=cfg["ema_decay"], start_epoch=cfg["kl_start_epoch"],
                       end_epoch=cfg["kl_end_epoch"], coef=cfg["reinforce"], temperature=cfg["temperature"],
                       reduction="none")
        return reg, lambda r, out, idx, xb, epoch: r(out, xb, epoch)

    _replay(run, make)


def test_golden_runs_exercise_both_sides_of_the_window():
    for run in GOLDEN["runs"].values():
        on = ~torch.isnan(run["kl_per_sample"]).any(1)
        assert on.any() and (~on).any()
    saf = GOLDEN["runs"]["saf"]  # start 3, end 7: epochs 4, 5, 6 of 9, 3 steps each
    assert torch.nonzero(~torch.isnan(saf["kl_per_sample"]).any(1)).flatten().tolist() == list(range(12, 21))


# ---------------------------------------------------------------- the memory and the window


def test_memory_returns_each_samples_logits_from_exactly_lag_epochs_earlier():
    n, c, lag = 10, 3, 3
    saf = SAFLoss(n, c, lag=lag, start_epoch=lag - 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    written = {}
    for epoch in range(9):
        order = torch.randperm(n, generator=g)
        for idx in order.split(4):
            logits = torch.randn(len(idx), c, generator=g, dtype=torch.float64, requires_grad=True)
            if epoch >= lag:
                past = torch.stack([written[(epoch - lag, int(i))] for i in idx])
                torch.testing.assert_close(saf.past_logits(idx, epoch), past, rtol=0, atol=0)
                got = saf(logits, idx, epoch)
                torch.testing.assert_close(got, saf_loss(logits, past), rtol=1e-14, atol=0)
            else:
                saf(logits, idx, epoch)
            for i, row in zip(idx.tolist(), logits.detach()):
                written[(epoch, i)] = row
    assert saf.memory.shape == (n, lag + 1, c)


def test_no_loss_outside_the_window():
    saf = SAFLoss(4, 3, lag=1, start_epoch=2, end_epoch=5)
    idx = torch.arange(4)
    x = torch.randn(4, 3, requires_grad=True)
    got = {}
    for epoch in range(7):
        logits = x * (epoch + 1)  # the logits change, so the KL to the past is not 0
        got[epoch] = saf(logits, idx, epoch)
    assert [e for e in got if float(got[e]) != 0.0] == [3, 4]  # the authors' strict window: 2 < epoch < 5
    assert got[0].shape == () and got[0].dtype == x.dtype and not got[0].requires_grad
    assert got[3].requires_grad and float(got[3]) > 0
    none = SAFLoss(4, 3, start_epoch=2, reduction="none")(x, idx, 0)
    assert none.shape == (4,) and (none == 0).all()


def test_state_dict_resumes_bit_identically():
    def run(saf, epochs, g):
        out = []
        for epoch in epochs:
            for idx in torch.randperm(8, generator=g).split(3):
                logits = torch.randn(len(idx), 4, generator=g)
                out.append(saf(logits, idx, epoch))
        return out

    a = SAFLoss(8, 4, lag=2, start_epoch=1)
    ga = torch.Generator().manual_seed(1)
    run(a, range(3), ga)
    b = SAFLoss(8, 4, lag=2, start_epoch=1)
    b.load_state_dict(a.state_dict())
    gb = torch.Generator().manual_seed(0)
    gb.set_state(ga.get_state())
    later_a, later_b = run(a, range(3, 6), ga), run(b, range(3, 6), gb)
    assert all(torch.equal(p, q) for p, q in zip(later_a, later_b)) and any(float(v) > 0 for v in later_a)
    assert set(a.state_dict()) == {"memory"}


def test_mesa_state_dict_holds_the_teacher():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    mesa = MESALoss(model, decay=0.5, start_epoch=0)
    with torch.no_grad():
        model.weight.add_(1.0)
    mesa.update(model)
    other = MESALoss(nn.Linear(3, 2), decay=0.5, start_epoch=0)
    other.load_state_dict(mesa.state_dict())
    x = torch.randn(5, 3)
    assert torch.equal(other.teacher_logits(x), mesa.teacher_logits(x))


# ---------------------------------------------------------------- the trajectory divergence


def test_saf_loss_is_kd_with_coef_and_its_gradient():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    past = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t, coef = 5.0, 0.3
    got = saf_loss(z, past, coef=coef, temperature=t)
    torch.testing.assert_close(got, coef * kd_loss(z, past.detach(), temperature=t), rtol=1e-14, atol=0)
    gz, gp = torch.autograd.grad(got, (z, past), allow_unused=True)
    # d/dz [T^2 KL(p_past || softmax(z/T))] = T (softmax(z/T) - softmax(past/T)); mean over the batch
    want = coef * t * (F.softmax(z / t, 1) - F.softmax(past / t, 1)) / 6
    torch.testing.assert_close(gz, want.detach(), rtol=1e-12, atol=1e-15)
    assert gp is None  # the past gets no gradient
    assert float(saf_loss(z, z.detach())) == pytest.approx(0.0, abs=1e-15)
    torch.testing.assert_close(mesa_loss(z, past), saf_loss(z, past, coef=0.8))


def test_large_logits_stay_finite():
    z = torch.tensor([[2000.0, -2000.0, 0.0]], requires_grad=True)
    past = torch.tensor([[-2000.0, 2000.0, 0.0]])
    v = saf_loss(z, past, temperature=1.0)
    assert torch.isfinite(v) and float(v) > 0
    assert torch.isfinite(torch.autograd.grad(v, z)[0]).all()
    half = saf_loss(z.detach().half(), past.half())
    assert half.dtype == torch.float16 and torch.isfinite(half)


# ---------------------------------------------------------------- MESA's teacher


def test_mesa_teacher_is_an_eval_mode_ema_and_runs_only_in_the_window():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    mesa = MESALoss(model, decay=0.9, start_epoch=1)
    calls = []
    mesa.teacher.register_forward_hook(lambda *a: calls.append(1))
    mesa.train()
    assert not mesa.teacher.training and all(not p.requires_grad for p in mesa.teacher.parameters())
    before = {k: v.clone() for k, v in mesa.teacher.state_dict().items()}
    x = torch.randn(8, 3)
    model(x)  # moves the BatchNorm running statistics
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    mesa.update(model)
    for k, v in mesa.teacher.state_dict().items():
        m = model.state_dict()[k]
        want = 0.9 * before[k] + 0.1 * m if v.is_floating_point() else m
        torch.testing.assert_close(v, want, rtol=1e-6, atol=1e-7)
    assert int(mesa.teacher[1].num_batches_tracked) == 1
    logits = model(x)
    assert float(mesa(logits, x, 1)) == 0.0 and not calls  # off (1 is not > 1): the teacher is not run
    v = mesa(logits, x, 2)
    assert len(calls) == 1 and float(v) > 0
    v.backward()
    assert model[0].weight.grad is not None and mesa.teacher[0].weight.grad is None
    torch.testing.assert_close(v, mesa_loss(logits, mesa.teacher_logits(x)))  # KL to the teacher's eval logits


# ---------------------------------------------------------------- bad input


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="Invalid lag"):
        SAFLoss(4, 3, lag=0)
    with pytest.raises(ValueError, match="Invalid num_classes"):
        SAFLoss(4, 0)
    with pytest.raises(ValueError, match="Invalid end_epoch"):
        SAFLoss(4, 3, start_epoch=5, end_epoch=6)  # no epoch is strictly between
    with pytest.raises(ValueError, match="Invalid temperature"):
        SAFLoss(4, 3, temperature=0.0)
    with pytest.raises(ValueError, match="Invalid coef"):
        saf_loss(torch.zeros(2, 3), torch.zeros(2, 3), coef=-1.0)
    with pytest.raises(ValueError, match="Invalid dtype"):
        SAFLoss(4, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="Invalid reduction"):
        SAFLoss(4, 3, reduction="avg")
    saf = SAFLoss(4, 3)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="Invalid index"):
        saf(x, torch.tensor([0.0, 1.0]), 0)
    with pytest.raises(ValueError, match=r"Invalid index: 4 out of range"):
        saf(x, torch.tensor([0, 4]), 0)
    with pytest.raises(ValueError, match="Invalid index: expected shape"):
        saf(x, torch.tensor([0, 1, 2]), 0)
    with pytest.raises(ValueError, match="Invalid logits"):
        saf(torch.zeros(2, 4), torch.tensor([0, 1]), 0)
    with pytest.raises(ValueError, match="Invalid epoch"):
        saf(x, torch.tensor([0, 1]), -1)
    with pytest.raises(ValueError, match="Invalid epoch"):
        saf(x, torch.tensor([0, 1]), True)
    with pytest.raises(ValueError, match="Invalid past_logits"):
        saf_loss(x, torch.zeros(3, 3))
    with pytest.raises(TypeError, match="Invalid model"):
        MESALoss("resnet")
    with pytest.raises(ValueError, match="Invalid decay"):
        MESALoss(nn.Linear(2, 2), decay=1.5)
    mesa = MESALoss(nn.Linear(2, 3), start_epoch=0)
    with pytest.raises(ValueError, match="Invalid model"):
        mesa.update(nn.Sequential(nn.Linear(2, 3)))
    with pytest.raises(ValueError, match="Invalid inputs"):
        mesa(torch.zeros(4, 2), torch.zeros(4, 2), 1)  # the teacher gives [4, 3]
    with pytest.raises(TypeError, match="Invalid dataset"):
        IndexedDataset(42)


# ---------------------------------------------------------------- the index-returning dataset


def test_indexed_dataset_with_a_shuffling_loader_yields_each_samples_index():
    x = torch.arange(30.0).reshape(10, 3)
    y = torch.arange(10) * 7
    ds = IndexedDataset(TensorDataset(x, y))
    assert len(ds) == 10 and ds[4][0] == 4 and torch.equal(ds[4][1], x[4])
    loader = DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        seen = []
        for index, xb, yb in loader:
            assert index.dtype == torch.int64
            assert torch.equal(xb, x[index]) and torch.equal(yb, y[index])
            seen += index.tolist()
        assert sorted(seen) == list(range(10)) and seen != list(range(10))
    bare = IndexedDataset([torch.tensor(1.0), torch.tensor(2.0)])
    assert bare[1] == (1, torch.tensor(2.0))
