from pathlib import Path

import pytest
import torch

from gradwise.continual import knn_affinity, laplacian_kmeans_energy, transductive_clustering
from gradwise.continual.transductive import _bound_update
from gradwise.registry import get

GOLDEN = Path(__file__).parents[1] / "data" / "transductive_clustering_golden.pt"


def _golden():
    return torch.load(GOLDEN, weights_only=True)


def test_matches_authors_slk():
    for c in _golden()["cases"]:
        pred = transductive_clustering(c["support"], c["support_labels"], c["query"], lam=c["lam"], knn=c["knn"])
        assert pred.dtype == torch.int64
        assert torch.equal(pred, c["labels"]), (c["lam"], c["knn"])


def test_bound_update_and_affinity_match_authors():
    b = _golden()["bound"]
    torch.testing.assert_close(knn_affinity(b["x"], 3), b["w"], rtol=0, atol=0)
    y = _bound_update(b["unary"], b["y0"].clone(), b["w"], b["lam"], 600)
    torch.testing.assert_close(y, b["y"], rtol=1e-10, atol=1e-12)


def test_bound_fixed_point_is_eq2():
    """At convergence Z = softmax(-a + lam W Z) (Eq. 2), each row a distribution."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    c = torch.randn(3, 4, generator=g, dtype=torch.float64)
    a = torch.cdist(x, c).square()
    w = knn_affinity(x, 4)
    assert torch.equal(w.sum(1), torch.full((30,), 3.0, dtype=torch.float64)) and w.diagonal().sum() == 0
    z = _bound_update(a, torch.softmax(-a, 1), w, 0.5, 2000)
    torch.testing.assert_close(z, torch.softmax(-a + 0.5 * (w @ z), 1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.sum(1), torch.ones(30, dtype=torch.float64))
    # Eq. (1) by hand on hard assignments
    l = z.argmax(1)
    hard = torch.nn.functional.one_hot(l, 3).double()
    by_hand = sum(((x[p] - c[l[p]]) ** 2).sum() for p in range(30)) - 0.5 * sum(
        float(w[p, q]) for p in range(30) for q in range(30) if l[p] == l[q])
    torch.testing.assert_close(laplacian_kmeans_energy(x, c, hard, w, 0.5), torch.as_tensor(by_hand))


def _episode(seed, way=5, shot=1, n_query=15, dim=16):
    g = torch.Generator().manual_seed(seed)
    centres = 1.2 * torch.randn(way, dim, generator=g, dtype=torch.float64)
    support = centres.repeat_interleave(shot, 0) + torch.randn(way * shot, dim, generator=g, dtype=torch.float64)
    labels = torch.arange(way).repeat_interleave(n_query)
    query = centres[labels] + torch.randn(way * n_query, dim, generator=g, dtype=torch.float64)
    return support, torch.arange(way).repeat_interleave(shot), query, labels


def test_beats_prototype_classifier_on_one_shot_toy():
    """1-shot 5-way Gaussian episodes: clustering the query with the support beats the nearest class mean."""
    proto_acc, clus_acc = [], []
    for seed in range(20):
        s, sl, q, ql = _episode(seed)
        means = torch.stack([s[sl == k].mean(0) for k in range(5)])
        proto_acc.append((torch.cdist(q, means).argmin(1) == ql).double().mean())
        clus_acc.append((transductive_clustering(s, sl, q, shift_query=False) == ql).double().mean())
    proto, clus = torch.stack(proto_acc).mean(), torch.stack(clus_acc).mean()
    assert clus > proto + 0.05, (float(proto), float(clus))


def test_float32_agrees_and_lam_changes_the_answer():
    s, sl, q, _ = _episode(3, shot=5)
    p64 = transductive_clustering(s, sl, q, lam=0.0)
    assert torch.equal(transductive_clustering(s.float(), sl, q.float(), lam=0.0), p64)
    changed = [not torch.equal(transductive_clustering(*_episode(seed)[:3], lam=0.0),
                               transductive_clustering(*_episode(seed)[:3], lam=1.0)) for seed in range(5)]
    assert any(changed)


@pytest.mark.parametrize("kwargs, name", [
    (dict(lam=-1.0), "lam"), (dict(iters=0), "iters"), (dict(knn=1), "knn"), (dict(knn=10_000), "knn"),
    (dict(bound_iters=0), "bound_iters"), (dict(shift_query="yes"), "shift_query"),
])
def test_bad_arguments(kwargs, name):
    s, sl, q, _ = _episode(0)
    with pytest.raises(ValueError, match=name):
        transductive_clustering(s, sl, q, **kwargs)


def test_bad_tensors():
    s, sl, q, _ = _episode(0)
    with pytest.raises(ValueError, match="support"):
        transductive_clustering(s[0], sl, q)
    with pytest.raises(ValueError, match="query"):
        transductive_clustering(s, sl, q[:, :3])
    with pytest.raises(ValueError, match="query"):
        transductive_clustering(s, sl, q.float())
    with pytest.raises(ValueError, match="support_labels"):
        transductive_clustering(s, sl.double(), q)
    with pytest.raises(ValueError, match="support_labels"):
        transductive_clustering(s, torch.tensor([0, 1, 2, 4, 4]), q)  # class 3 has no support sample


def test_registered_under_exact_title():
    rec = get("transductive_clustering")
    assert rec.paper == "Transductive Few-Shot Learning: Clustering is All You Need?"
    assert rec.arxiv == "2106.09516" and rec.load() is transductive_clustering
