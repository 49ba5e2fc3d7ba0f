"""DMM: the datamodel estimators recover linear effects, the prediction subtracts the forget points' weights
(all, or only each point's own), and the matching fine-tunes on the authors' set (forget points, then
3x as many retain points) towards the predicted outputs; bad input is refused by name."""
import pytest
import torch
from torch import nn

from gradwise.registry import get
from gradwise.unlearning import datamodel_matching, fit_datamodels, predict_retrain_outputs, subset_masks


def test_subset_masks_have_the_asked_size_and_follow_the_generator():
    a = subset_masks(10, 6, alpha=0.3, generator=torch.Generator().manual_seed(1))
    b = subset_masks(10, 6, alpha=0.3, generator=torch.Generator().manual_seed(1))
    assert a.dtype == torch.bool and a.shape == (6, 10) and torch.equal(a, b)
    assert a.sum(1).tolist() == [3] * 6 and len({tuple(r.tolist()) for r in a}) > 1


def test_ridge_without_penalty_recovers_exact_linear_outputs_and_difference_a_single_effect():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(40, 6, generator=g) < 0.5
    w, b = torch.randn(6, 3, 2, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64)
    out = b + torch.einsum("mn,nkc->mkc", masks.double(), w)
    got_w, got_b = fit_datamodels(masks, out, ridge=0.0)
    assert got_w.shape == (6, 3, 2) and float((got_w - w).abs().max()) < 1e-9 and float((got_b - b).abs().max()) < 1e-9
    shrunk = fit_datamodels(masks, out, ridge=100.0)[0]
    assert float(shrunk.abs().sum()) < float(w.abs().sum())  # the penalty pulls towards 0
    # one point: the difference of means is the exact effect
    one = masks[:, :1]
    d_w, d_b = fit_datamodels(one, 2.0 + 3.0 * one.double(), estimator="difference")
    assert float(d_w) == pytest.approx(3.0, abs=1e-12) and float(d_b) == pytest.approx(2.0, abs=1e-12)
    always = fit_datamodels(torch.tensor([[1, 1], [0, 1]], dtype=torch.bool), torch.tensor([[1.0], [5.0]]),
                            estimator="difference")[0]
    assert always.flatten().tolist() == [-4.0, 0.0]  # point 1 is in every subset: no evidence, weight 0


def test_prediction_subtracts_the_forget_weights_or_only_each_own():
    w = torch.arange(4 * 4 * 2, dtype=torch.float64).view(4, 4, 2)
    orig = torch.ones(4, 2, dtype=torch.float32)
    f = torch.tensor([1, 3])
    got = predict_retrain_outputs(orig, w, f, multiplier=0.5)
    assert got.dtype == torch.float32 and torch.allclose(got.double(), 1 - 0.5 * (w[1] + w[3]))
    diag = predict_retrain_outputs(orig, w, f, diagonal_only=True)
    want = orig.double().clone()
    want[1] -= w[1, 1]
    want[3] -= w[3, 3]
    assert torch.equal(diag.double(), want)


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 2)
        self.seen = []

    def forward(self, x):
        self.seen.append(x[:, 0].long().tolist())
        return self.lin(x)


def test_matching_sees_the_forget_points_then_three_times_as_many_retain_points_and_moves_to_the_targets():
    n = 40
    x = torch.arange(n, dtype=torch.float32)[:, None]
    forget = torch.tensor([3, 7, 11, 20, 21])
    model = Recorder()
    target = torch.stack([x[:, 0] * 0.05, -x[:, 0] * 0.05], 1)
    with torch.no_grad():
        before = float(((model.lin(x) - target) ** 2).mean())
    datamodel_matching(model, forget, target, x, epochs=40, lr=0.05, batch_size=8, generator=torch.Generator().manual_seed(0))
    epoch = sum(model.seen[:3], [])  # 5 + 15 points in batches of 8: 3 batches an epoch
    assert len(model.seen) == 120 and epoch[:5] == forget.tolist() and len(epoch) == 20
    retain = epoch[5:]
    assert len(set(retain)) == 15 and not set(retain) & set(forget.tolist())
    assert sum(model.seen[3:6], []) == epoch  # no shuffling: the same order every epoch
    with torch.no_grad():
        assert float(((model.lin(x) - target) ** 2).mean()) < 0.1 * before
    # forget_multiplier 1.6: the forget set, then its first int(5 * 0.6) = 3 points again
    model = Recorder()
    datamodel_matching(model, forget, target, x, epochs=1, batch_size=100, forget_multiplier=1.6, retain_multiplier=0)
    assert model.seen == [forget.tolist() + forget[:3].tolist()]
    r = get("datamodel_matching")
    assert r.paper == "Attribute-to-Delete: Machine Unlearning via Datamodel Matching" and "DMM" in r.aliases


@pytest.mark.parametrize("kwargs, arg", [
    (dict(model="m"), "model"), (dict(forget_idx=torch.tensor([0.5])), "forget_idx"),
    (dict(forget_idx=torch.tensor([1, 1])), "forget_idx"), (dict(forget_idx=torch.tensor([10])), "forget_idx"),
    (dict(predicted_outputs=torch.zeros(9, 2)), "predicted_outputs"),
    (dict(predicted_outputs=torch.full((10, 2), float("inf"))), "predicted_outputs"),
    (dict(retain_idx=torch.tensor([0, 5])), "retain_idx"), (dict(epochs=0), "epochs"), (dict(lr=0.0), "lr"),
    (dict(optimizer="lion"), "optimizer"), (dict(loss="l1"), "loss"), (dict(retain_multiplier=5.0), "retain_multiplier"),
    (dict(forget_multiplier=-1.0), "forget_multiplier"), (dict(wd_lambda=-1.0), "wd_lambda"),
])
def test_bad_matching_input_names_the_argument(kwargs, arg):
    model = nn.Linear(3, 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    args = dict(model=model, forget_idx=torch.tensor([0, 1]), predicted_outputs=torch.zeros(10, 2),
                inputs=torch.randn(10, 3)) | kwargs
    with pytest.raises(ValueError, match=f"Invalid {arg}"):
        datamodel_matching(**args)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # nothing was changed


def test_bad_datamodel_input_names_the_argument():
    masks = torch.tensor([[1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    with pytest.raises(ValueError, match="Invalid masks"):
        fit_datamodels(masks[:1], torch.zeros(1, 2))
    with pytest.raises(ValueError, match="Invalid masks"):
        fit_datamodels(masks.float() * 2, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="Invalid outputs"):
        fit_datamodels(masks, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="Invalid estimator"):
        fit_datamodels(masks, torch.zeros(3, 2), estimator="lasso")
    with pytest.raises(ValueError, match="Invalid weights"):
        predict_retrain_outputs(torch.zeros(4, 2), torch.zeros(4, 3, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="Invalid alpha"):
        subset_masks(5, 2, alpha=0.0)
