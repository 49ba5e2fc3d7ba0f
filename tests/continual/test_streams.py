import pytest
import torch

from gradwise.continual import corrupt, corruption_stream, split_stream


def _data(n=60, classes=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.arange(n) % classes
    return x, y


def test_split_stream_given_order():
    x, y = _data()
    tasks = split_stream(x, y, 3, class_order=[0, 1, 2, 3, 4, 5])
    assert [sorted(set(t[1].tolist())) for t in tasks] == [[0, 1], [2, 3], [4, 5]]
    for xk, yk in tasks:
        idx = torch.nonzero(torch.isin(y, torch.unique(yk))).flatten()
        assert torch.equal(xk, x[idx]) and torch.equal(yk, y[idx])  # all samples, original order and labels
    assert sum(t[1].numel() for t in tasks) == y.numel()
    tasks = split_stream(x, y, 2, class_order=[5, 3, 1, 0, 2, 4])
    assert [sorted(set(t[1].tolist())) for t in tasks] == [[1, 3, 5], [0, 2, 4]]


def test_split_stream_seeded_order():
    x, y = _data()
    a = [sorted(set(t[1].tolist())) for t in split_stream(x, y, 3, seed=1)]
    b = [sorted(set(t[1].tolist())) for t in split_stream(x, y, 3, seed=1)]
    assert a == b and sorted(sum(a, [])) == list(range(6))
    orders = {tuple(map(tuple, (sorted(set(t[1].tolist())) for t in split_stream(x, y, 3, seed=s))))
              for s in range(6)}
    assert len(orders) > 1  # the seed decides the order
    # labels that are not 0..C-1 keep their values
    tasks = split_stream(x, y * 10 + 7, 6, class_order=[7, 17, 27, 37, 47, 57])
    assert [t[1].unique().tolist() for t in tasks] == [[7], [17], [27], [37], [47], [57]]


@pytest.mark.parametrize("args, kwargs, word", [
    ((torch.rand(6, 2), torch.arange(5)), {"n_tasks": 1}, "y"),
    ((torch.rand(6, 2), torch.rand(6)), {"n_tasks": 1}, "y"),
    ((torch.rand(0, 2), torch.arange(0)), {"n_tasks": 1}, "x"),
    ((torch.rand(6, 2), torch.arange(6) % 3), {"n_tasks": 2}, "n_tasks"),
    ((torch.rand(6, 2), torch.arange(6) % 3), {"n_tasks": 0}, "n_tasks"),
    ((torch.rand(6, 2), torch.arange(6) % 3), {"n_tasks": 4}, "n_tasks"),
    ((torch.rand(6, 2), torch.arange(6) % 3), {"n_tasks": 3, "class_order": [0, 1, 1]}, "class_order"),
    ((torch.rand(6, 2), torch.arange(6) % 3), {"n_tasks": 3, "class_order": [0, 1, 3]}, "class_order"),
    ((torch.rand(6, 2), torch.arange(6) % 3), {"n_tasks": 3, "seed": -1}, "seed"),
])
def test_split_stream_bad_input(args, kwargs, word):
    with pytest.raises(ValueError, match=f"Invalid {word}"):
        split_stream(*args, **kwargs)


def test_corruption_stream_continual_and_iid():
    x, y = _data(30, 3)
    kinds = ["clean", "noise", "rotation"]
    xs, ys, dom = corruption_stream(x, y, kinds, 2, "continual", seed=5)
    assert xs.shape == (90, 1, 6, 6) and ys.shape == dom.shape == (90,)
    assert dom.tolist() == [0] * 30 + [1] * 30 + [2] * 30
    # the clean domain holds every sample once, shuffled; labels travel with their images
    clean = xs[:30]
    match = (clean.flatten(1)[:, None] == x.flatten(1)[None]).all(-1).double().argmax(1)
    assert sorted(match.tolist()) == list(range(30)) and torch.equal(ys[:30], y[match])
    assert not torch.equal(match, torch.arange(30))
    again = corruption_stream(x, y, kinds, 2, "continual", seed=5)
    assert all(torch.equal(a, b) for a, b in zip((xs, ys, dom), again))
    xi, yi, di = corruption_stream(x, y, kinds, 2, "iid", seed=5)
    assert sorted(di.tolist()) == sorted(dom.tolist())
    assert (di[:30] != 0).any() and (di[:30] == 0).any()  # mixed
    # the noise domain is the noise corruption of its images
    noisy = corruption_stream(x, y, "noise", 3, "continual")[0]
    assert not torch.equal(noisy, corruption_stream(x, y, "clean", 3, "continual")[0])
    assert float((noisy - corrupt(x, "clean", 1)).std()) > 0.2


def test_corruption_stream_label_shift():
    x, y = _data(40, 4)
    xs, ys, dom = corruption_stream(x, y, ["contrast", "smooth"], 1, "label-shift")
    assert ys[:40].tolist() == sorted(y.tolist()) and ys[40:].tolist() == sorted(y.tolist())
    assert dom.tolist() == [0] * 40 + [1] * 40
    # Dirichlet: a small alpha keeps classes in few runs, a large one mixes them
    x, y = _data(400, 4)

    def runs(alpha):
        _, ys, _ = corruption_stream(x, y, "clean", 1, "label-shift", alpha=alpha, seed=0)
        assert sorted(ys.tolist()) == sorted(y.tolist())
        return int((ys[1:] != ys[:-1]).sum())

    assert runs(0.01) < 40 < runs(100.0)


@pytest.mark.parametrize("args, kwargs, word", [
    ((torch.rand(4, 2), torch.arange(4), "noise", 1), {}, "x"),
    ((torch.rand(4, 5, 5), torch.arange(3), "noise", 1), {}, "y"),
    ((torch.rand(4, 5, 5), torch.arange(4), "fog", 1), {}, "kinds"),
    ((torch.rand(4, 5, 5), torch.arange(4), [], 1), {}, "kinds"),
    ((torch.rand(4, 5, 5), torch.arange(4), "noise", 5), {}, "severity"),
    ((torch.rand(4, 5, 5), torch.arange(4), "noise", 1, "sorted"), {}, "order"),
    ((torch.rand(4, 5, 5), torch.arange(4), "noise", 1, "label-shift"), {"alpha": 0.0}, "alpha"),
    ((torch.rand(4, 5, 5), torch.arange(4), "noise", 1, "iid"), {"alpha": 1.0}, "alpha"),
    ((torch.rand(4, 5, 5), torch.arange(4), "noise", 1), {"seed": 1.5}, "seed"),
])
def test_corruption_stream_bad_input(args, kwargs, word):
    with pytest.raises(ValueError, match=f"Invalid {word}"):
        corruption_stream(*args, **kwargs)
