"""DBPM: the authors' loop, the weighting rules, state round trip, no host reads, validation."""
import copy
import math

import pytest
import torch

from gradwise.data_weighting import DBPM, dbpm_weights


# ----------------------------------------------------------------------------------------------- DBPM


def _dbpm_authors_replay(losses, batches, max_epochs, warm, cut_np, cut_fp):
    """The authors' fit loop (models/dbpm_model.py) on given per-pair losses, with dicts and lists."""
    memory = {k: [] for k in range(max(max(b) for e in batches for b in e) + 1)}
    out = []
    for epoch, epoch_batches in enumerate(batches):
        if epoch >= warm:
            ew = [(1 + i) / max_epochs for i in range(epoch)]
            means = {k: sum(v_ * w_ for v_, w_ in zip(v, ew)) / len(v) for k, v in memory.items()}
            vals = list(means.values())
            mu = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
            np_idx = {k for k, v in means.items() if v <= mu - cut_np * sd}
            fp_idx = {k for k, v in means.items() if v >= mu + cut_fp * sd}
        for b, index in enumerate(epoch_batches):
            pos = [float(x) for x in losses[epoch][b]]
            for i, k in enumerate(index):
                memory[k].append(pos[i])
            if epoch >= warm:
                for i, k in enumerate(index):
                    if k in np_idx or k in fp_idx:
                        pos[i] *= math.exp(-0.5 * ((pos[i] - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
            out.append(sum(pos) / len(pos))
    return out


def test_dbpm_matches_the_authors_loop():
    g = torch.Generator().manual_seed(11)
    n, bs, max_epochs, warm = 24, 6, 7, 3
    base = torch.rand(n, generator=g, dtype=torch.float64) * 2 + 1
    base[3], base[17], base[8] = 0.01, 9.0, 8.5  # a noisy (too easy) and two faulty (too hard) pairs
    batches, losses = [], []
    for _ in range(max_epochs):
        perm = torch.randperm(n, generator=g).tolist()
        batches.append([perm[i:i + bs] for i in range(0, n, bs)])
        losses.append([base[perm[i:i + bs]] + 0.05 * torch.rand(bs, generator=g, dtype=torch.float64)
                       for i in range(0, n, bs)])
    expect = _dbpm_authors_replay(losses, batches, max_epochs, warm, cut_np=1.0, cut_fp=1.5)
    dbpm = DBPM(n, max_epochs, warm_epochs=warm, cut_np=1.0, cut_fp=1.5)
    got, flagged = [], 0
    for epoch in range(max_epochs):
        for index, l in zip(batches[epoch], losses[epoch]):
            got.append(float(dbpm(l, torch.tensor(index), epoch)))
            flagged += int((dbpm.weights(l, torch.tensor(index)) != 1).sum()) if epoch >= warm else 0
    assert flagged > 0
    for a, b in zip(got, expect):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


def test_dbpm_weights_rules():
    all_means = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 30.0], dtype=torch.float64)
    mu, sd = float(all_means.mean()), float(all_means.std(correction=0))
    loss = torch.tensor([0.5, 2.0, 30.0, 3.0], dtype=torch.float64)
    sample_mean = torch.tensor([mu - 0.2 * sd, mu, 30.0, mu + 0.5 * sd], dtype=torch.float64)
    w = dbpm_weights(loss, sample_mean, all_means, cut_np=0.2, cut_fp=0.5)  # boundaries are inclusive
    pdf = torch.exp(-0.5 * ((loss - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    torch.testing.assert_close(w, torch.stack([pdf[0], torch.tensor(1.0, dtype=torch.float64), pdf[2], pdf[3]]))
    # no outliers possible when every mean is equal; no history (NaN) means weight 1
    flat = dbpm_weights(loss, torch.full((4,), 2.0, dtype=torch.float64), torch.full((6,), 2.0, dtype=torch.float64))
    assert bool((flat == 1).all())
    nan = dbpm_weights(loss, torch.full((4,), math.nan, dtype=torch.float64), all_means, cut_np=0.0, cut_fp=0.0)
    assert bool((nan == 1).all())


def test_dbpm_weights_are_constants_and_warmup_is_plain_mean():
    dbpm = DBPM(4, 3, warm_epochs=1, cut_np=0.0, cut_fp=0.0, reduction="none")
    l0 = torch.tensor([1.0, 2.0, 3.0, 10.0], requires_grad=True)
    out0 = dbpm(l0, torch.arange(4), 0)
    assert torch.equal(out0, l0)  # warm-up: weight 1
    l1 = torch.tensor([1.0, 2.0, 3.0, 10.0], requires_grad=True)
    out1 = dbpm(l1, torch.arange(4), 1)
    out1.sum().backward()
    w = dbpm.weights(l1.detach(), torch.arange(4))
    torch.testing.assert_close(l1.grad, w)  # d(w * l)/dl = w: no gradient through the density
    assert bool((w != 1).all())  # cut 0: every pair is on one side of mu


def test_dbpm_state_dict_round_trip():
    g = torch.Generator().manual_seed(12)
    a = DBPM(10, 5, warm_epochs=2)
    steps = [(torch.rand(5, generator=g), torch.randperm(10, generator=g)[:5], e) for e in range(5) for _ in range(2)]
    for l, i, e in steps[:5]:
        a(l, i, e)
    b = DBPM(10, 5, warm_epochs=2)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for l, i, e in steps[5:]:
        assert torch.equal(a(l, i, e), b(l, i, e))


def test_dbpm_loading_an_older_state_recomputes_its_statistics():
    g = torch.Generator().manual_seed(13)
    steps = [(torch.rand(5, generator=g), torch.randperm(10, generator=g)[:5], e) for e in range(5) for _ in range(2)]
    older, newer = DBPM(10, 5, warm_epochs=2), DBPM(10, 5, warm_epochs=2)
    for l, i, e in steps[:4]:      # epochs 0, 1
        older(l, i, e)
    for l, i, e in steps[:8]:      # epochs 0 .. 3: holds the statistics of epoch 3
        newer(l, i, e)
    newer.load_state_dict(copy.deepcopy(older.state_dict()))
    fresh = DBPM(10, 5, warm_epochs=2)
    fresh.load_state_dict(copy.deepcopy(older.state_dict()))
    l, i, _ = steps[8]
    l = l * 10                      # outliers, so the statistics in use show in the weights
    assert torch.equal(newer(l, i, 3), fresh(l, i, 3))
    assert int(newer.stats_epoch) == 3


def test_dbpm_reads_no_tensor_values_with_validate_false(monkeypatch):
    d = DBPM(10, 4, warm_epochs=1, validate=False)
    g = torch.Generator().manual_seed(14)
    d(torch.rand(5, generator=g), torch.arange(5), 0)
    reads = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        orig = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=orig, _n=name: reads.append(_n) or _o(self, *a))
    for _ in range(2):              # the first call of epoch 1 computes the statistics, the second reuses them
        d(torch.rand(5, generator=g), torch.arange(5, 10), 1)
    assert reads == []
    monkeypatch.undo()
    assert int(d.stats_epoch) == 1 and torch.isfinite(d.sd)


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_samples=0), "num_samples"), (dict(max_epochs=0), "max_epochs"), (dict(warm_epochs=0), "warm_epochs"),
    (dict(cut_np=-1.0), "cut_np"), (dict(cut_fp=math.inf), "cut_fp"), (dict(reduction="avg"), "reduction"),
])
def test_dbpm_rejects_bad_arguments(kwargs, name):
    kw = dict(num_samples=10, max_epochs=5, warm_epochs=2) | kwargs
    with pytest.raises(ValueError, match=name):
        DBPM(kw.pop("num_samples"), kw.pop("max_epochs"), **kw)
    d = DBPM(10, 5, warm_epochs=2)
    with pytest.raises(ValueError, match="index"):
        d(torch.rand(3), torch.tensor([0, 1, 10]), 0)
    with pytest.raises(ValueError, match="epoch"):
        d(torch.rand(3), torch.tensor([0, 1, 2]), 5)
    with pytest.raises(ValueError, match="pair_loss"):
        d(torch.rand(3, 1), torch.tensor([0, 1, 2]), 0)
    with pytest.raises(ValueError, match="sample_mean"):
        dbpm_weights(torch.rand(3), torch.rand(2), torch.rand(5))
