"""AdaNPC against the authors' code (tests/data/adanpc_golden.pt), bad input, reset, state_dict, deepcopy."""
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from gradwise.registry import get
from gradwise.tta import AdaNPC, knn_vote

GOLDEN = torch.load(Path(__file__).resolve().parents[1] / "data" / "adanpc_golden.pt", weights_only=False)


def golden_model(case):
    c = case["num_classes"]
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, c)).double()
    model.load_state_dict(case["state_dict"])
    return model


@pytest.mark.parametrize("case", GOLDEN, ids=[c["name"] for c in GOLDEN])
def test_matches_authors_code_step_by_step(case):
    model = golden_model(case).train()  # AdaNPC reads features in eval mode, as the authors' cache
    adapted = AdaNPC(model, case["source_feats"], case["source_labels"], **case["hparams"])
    for i, x in enumerate(case["batches"]):
        with torch.no_grad():
            scores = adapted(x)
        torch.testing.assert_close(scores, case["scores"][i], rtol=0, atol=1e-12)
        assert torch.equal(adapted.memory_labels, case["memory_labels"][i])
        torch.testing.assert_close(adapted.memory, case["memory"][i], rtol=0, atol=1e-13)
        if i == case["reset_after"]:
            adapted.reset()
    assert model.training  # the mode is restored
    torch.testing.assert_close(model.state_dict(), case["state_dict"], rtol=0, atol=0)


def test_knn_vote_matches_the_first_golden_call():
    case = GOLDEN[1]
    adapted = AdaNPC(golden_model(case), case["source_feats"], case["source_labels"], **case["hparams"])
    feats = adapted.features(case["batches"][0])
    h = case["hparams"]
    scores = knn_vote(feats, case["source_feats"], case["source_labels"], case["num_classes"], k=h["k"],
                      temperature=h["temperature"])
    torch.testing.assert_close(scores, case["scores"][0], rtol=0, atol=1e-12)


def test_knn_vote_by_hand():
    memory = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[2.0, 0.1]], dtype=torch.float64)
    s = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(memory, dim=1).T
    top = s[0, [0, 2]]  # the two most similar rows
    w = (top / 0.5).softmax(0)
    expected = torch.tensor([[w[0] + 1e-5, w[1] + 1e-5, 1e-5]], dtype=torch.float64)
    torch.testing.assert_close(knn_vote(q, memory, labels, 3, k=2, temperature=0.5), expected, rtol=0, atol=1e-15)
    # k = 1 votes for the nearest row's label alone: 1 + 1e-5 is clipped to 1
    assert knn_vote(q, memory, labels, 3, k=1, temperature=0.5).tolist() == [[1.0, 1e-5, 1e-5]]


def small(num_classes=3, n=12, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, num_classes)).double()
    return model, torch.randn(n, 5, dtype=torch.float64), torch.arange(n) % num_classes


def test_registered_under_the_seed_title_with_authors_defaults():
    rec = get("AdaNPC")
    assert rec.paper == "AdaNPC: Exploring Non-Parametric Classifier for Test-Time Adaptation"
    assert rec.kind == "test-time-adaptation" and rec.arxiv == "2304.12566" and rec.load() is AdaNPC
    model, feats, labels = small(n=100)
    a = AdaNPC(model, feats, labels)
    assert (a.k, a.temperature, a.beta, a.num_classes) == (100, 0.1, 0.1, 3)


def test_confident_samples_grow_the_memory_and_reset_restores_it():
    model, feats, labels = small()
    a = AdaNPC(model, feats, labels, k=3, beta=0.0)
    source = a.memory.clone()
    scores = a(torch.randn(5, 4, dtype=torch.float64))
    assert a.num_added == 5 and a.memory.shape == (17, 5)
    assert torch.equal(a.memory_labels[12:], scores.argmax(1))
    torch.testing.assert_close(a.memory[12:].norm(dim=1), torch.ones(5, dtype=torch.float64))
    a.reset()
    assert a.num_added == 0 and torch.equal(a.memory, source) and torch.equal(a.memory_labels, labels)
    frozen = AdaNPC(model, feats, labels, k=3, beta=1.1)
    frozen(torch.randn(5, 4, dtype=torch.float64))
    assert frozen.num_added == 0


def test_added_rows_change_later_votes():
    model, feats, labels = small()
    a = AdaNPC(model, feats, labels, k=1, beta=0.0)
    x = torch.randn(3, 4, dtype=torch.float64)
    a(x)
    # each sample now finds itself (similarity 1) as its single nearest neighbour
    assert torch.equal(a(x).argmax(1), a.memory_labels[12:15])
    # one batch of one sample is accepted
    assert a(x[:1]).shape == (1, 3)


def test_state_dict_resizes_and_continues_identically():
    model, feats, labels = small()
    a = AdaNPC(model, feats, labels, k=4, beta=0.0)
    a(torch.randn(6, 4, dtype=torch.float64))
    model2, _, _ = small(seed=1)
    b = AdaNPC(model2, feats, labels, k=4, beta=0.0)
    b.load_state_dict(a.state_dict())
    assert b.num_added == 6 and torch.equal(b.memory, a.memory) and torch.equal(b.memory_labels, a.memory_labels)
    x = torch.randn(5, 4, dtype=torch.float64)
    assert torch.equal(a(x), b(x)) and torch.equal(a.memory, b.memory)
    b.reset()
    assert b.num_added == 0


def test_deepcopy_is_independent():
    model, feats, labels = small()
    a = AdaNPC(model, feats, labels, k=4, beta=0.0)
    a(torch.randn(4, 4, dtype=torch.float64))
    b = copy.deepcopy(a)
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(a(x), b(x))  # the copy's hook feeds the copy
    b(x)
    assert a.num_added == 7 and b.num_added == 10


def test_head_argument_and_inference_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    feats6 = torch.randn(9, 6, dtype=torch.float64)
    a = AdaNPC(model, feats6, torch.arange(9) % 3, k=2, head=model[2])  # features = input of model[2]
    assert a.num_classes == 3  # from the last nn.Linear, not the head
    with torch.inference_mode():
        x = torch.randn(4, 4, dtype=torch.float64)
    with torch.inference_mode():
        assert a(x).shape == (4, 3)
    with pytest.raises(ValueError, match="Invalid head: not a submodule"):
        AdaNPC(model, feats6, torch.arange(9) % 3, k=2, head=nn.Linear(6, 3))


@pytest.mark.parametrize("kwargs, match", [
    ({"memory_feats": torch.zeros(0, 5)}, "Invalid memory_feats: an empty memory"),
    ({"memory_feats": torch.zeros(12)}, "Invalid memory_feats: expected a 2-D"),
    ({"memory_feats": torch.zeros(12, 4)}, "Invalid memory_feats: rows of width 4, but the head takes 5"),
    ({"memory_labels": torch.zeros(11, dtype=torch.long)}, "Invalid memory_labels: 11 labels for 12"),
    ({"memory_labels": torch.zeros(12)}, "Invalid memory_labels: expected a 1-D integer"),
    ({"memory_labels": torch.full((12,), 3)}, r"Invalid memory_labels: labels outside \[0, 3\)"),
    ({"k": 0}, "Invalid k"),
    ({"k": 13}, "Invalid k: 13 neighbours from a memory of 12 rows"),
    ({"temperature": 0.0}, "Invalid temperature"),
    ({"temperature": -1.0}, "Invalid temperature"),
    ({"beta": float("nan")}, "Invalid beta"),
    ({"num_classes": 0}, "Invalid num_classes"),
])
def test_bad_construction_is_refused(kwargs, match):
    model, feats, labels = small()
    args = {"memory_feats": feats.float(), "memory_labels": labels, "k": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        AdaNPC(model, **args)


def test_bad_batches_and_models_are_refused():
    model, feats, labels = small()
    a = AdaNPC(model, feats, labels, k=3)
    with pytest.raises(ValueError, match="Invalid x: .*at least one sample"):
        a(torch.zeros(0, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="Invalid x"):
        a([1.0, 2.0])
    with pytest.raises(ValueError, match="Invalid head: None and the model has no nn.Linear"):
        AdaNPC(nn.Sequential(nn.ReLU()), feats, labels, k=3)
    with pytest.raises(TypeError, match="Invalid model"):
        AdaNPC(lambda x: x, feats, labels, k=3)
    with pytest.raises(ValueError, match="Invalid feats"):
        knn_vote(torch.zeros(2, 4), feats, labels, 3, k=3)
    with pytest.raises(ValueError, match="Invalid memory_feats: an empty memory"):
        knn_vote(torch.zeros(2, 5), feats[:0], labels[:0], 3, k=1)


def test_num_classes_needed_without_a_linear():
    class Head(nn.Module):
        def forward(self, z):
            return z[:, :3]

    model = nn.Sequential(nn.Conv1d(1, 1, 1), nn.Flatten(), Head())
    feats = torch.randn(6, 5)
    with pytest.raises(ValueError, match="Invalid num_classes: None and the model has no nn.Linear"):
        AdaNPC(model, feats, torch.arange(6) % 3, k=2, head=model[2])
    a = AdaNPC(model, feats, torch.arange(6) % 3, k=2, head=model[2], num_classes=3)
    assert a(torch.randn(4, 1, 5)).shape == (4, 3)


@pytest.mark.slow
def test_compiled_model_gives_the_same_votes():
    model, feats, labels = small()
    a = AdaNPC(model, feats, labels, k=3, beta=0.0)
    b = AdaNPC(torch.compile(model, backend="eager"), feats, labels, k=3, beta=0.0)  # hook on the inner head
    for _ in range(2):
        x = torch.randn(6, 4, dtype=torch.float64)
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=1e-12)
    assert torch.equal(a.memory_labels, b.memory_labels) and b.num_added == 12
