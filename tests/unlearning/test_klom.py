"""KLoM equals the authors' kl_from_margins and get_margin (tests/data/klom_golden.pt, float64), with their
histogram quirks, and refuses bad input by name."""
from pathlib import Path

import pytest
import torch

from gradwise.registry import get
from gradwise.unlearning import klom, margins

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "klom_golden.pt", weights_only=True)


def close(got, want):
    assert got.dtype == torch.float64 and got.shape == want.shape
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert float((got - want).abs().nan_to_num().max()) <= 1e-10 * max(1.0, float(want.nan_to_num().abs().max()))


@pytest.mark.parametrize("i", range(len(GOLDEN["cases"])))
def test_klom_equals_the_authors(i):
    c = GOLDEN["cases"][i]
    close(klom(c["unlearned"], c["oracle"], **c["kwargs"]), c["result"])


def test_nan_where_no_unlearned_margin_is_counted_and_zero_for_equal_samples():
    want = GOLDEN["cases"][2]["result"]
    assert torch.isnan(want[0]) and torch.isnan(want[2]) and float(want[1]) == 0.0  # the golden's own quirks
    same = torch.randn(16, 5, dtype=torch.float64)
    assert float(klom(same, same).abs().max()) < 1e-12


def test_margins_equal_the_authors_and_klom_takes_logits():
    close(margins(GOLDEN["logits"], GOLDEN["labels"]), GOLDEN["margins"])
    c = GOLDEN["cases"][0]
    lg = GOLDEN["logits"]
    got = klom(lg, lg.flip(0) * 2, GOLDEN["labels"])
    close(got, klom(margins(lg, GOLDEN["labels"]), margins(lg.flip(0) * 2, GOLDEN["labels"])))
    assert get("klom").arxiv == "2410.23232" and c["result"].numel() == 12


@pytest.mark.parametrize("kwargs, arg", [
    (dict(unlearned_outputs=torch.zeros(3)), "unlearned_outputs"),
    (dict(retrain_outputs=torch.zeros(3, 5)), "retrain_outputs"),
    (dict(retrain_outputs=torch.zeros(3, 4, dtype=torch.long)), "retrain_outputs"),
    (dict(unlearned_outputs=torch.zeros(2, 4, 3)), "labels"),
    (dict(unlearned_outputs=torch.full((2, 4), float("nan"))), "unlearned_outputs"),
    (dict(bins=0), "bins"), (dict(eps=0.0), "eps"), (dict(clip_max=-200.0), "clip_max"),
])
def test_bad_input_names_the_argument(kwargs, arg):
    args = dict(unlearned_outputs=torch.zeros(3, 4), retrain_outputs=torch.zeros(3, 4)) | kwargs
    with pytest.raises(ValueError, match=f"Invalid {arg}"):
        klom(**args)
    with pytest.raises(ValueError, match="Invalid labels"):
        margins(torch.zeros(2, 4, 3), torch.tensor([0, 1, 2, 3]))
