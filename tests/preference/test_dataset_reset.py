"""DR-PO (seed 217): dataset_reset_mask in distribution against tril's RollinProcessor.create_mask @ 045d036,
generate(forced_prefixes=...) against its teacher forcing, ppo_clip_loss against drpo @ bd825df's loss lines
(tests/data/drpo_golden.pt, tools/golden/make_drpo_golden.py); bad input."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gradwise.preference import dataset_reset_mask, forced_prefixes, generate, ppo_clip_loss
from gradwise.registry import get

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "drpo_golden.pt", weights_only=True)


@pytest.mark.parametrize("beta", [1.0, 0.6, 0.0])
def test_mask_distribution_matches_theirs(beta):
    theirs = GOLDEN["mask_counts"][beta]
    lengths = sorted(theirs)
    lens = torch.tensor(lengths).repeat_interleave(4000)
    mask = dataset_reset_mask(lens, 10, beta=beta, generator=torch.Generator().manual_seed(1))
    k = mask.sum(1)
    # every row is a prefix of ones (theirs too)
    assert torch.equal(mask, torch.arange(10)[None] < k[:, None]) and GOLDEN["mask_rows_are_prefixes"]
    for L in lengths:
        ours = torch.bincount(k[lens == L], minlength=10).double() / 4000
        ref = torch.tensor(theirs[L], dtype=torch.float64) / 4000
        assert (ours[ref == 0] == 0).all(), f"length {L}: a prefix length theirs never draws"
        sd = torch.sqrt(ref * (1 - ref) * 2 / 4000).clamp(min=1e-3)
        assert ((ours - ref).abs() <= 5 * sd).all(), f"length {L}: {ours.tolist()} vs {ref.tolist()}"


def test_mask_rules_exactly():
    g = torch.Generator().manual_seed(0)
    m = dataset_reset_mask([5, 1, 0, 2, 3], 6, beta=1.0, generator=g)
    k = m.sum(1).tolist()
    assert k[1] == 0 and k[2] == 0 and k[3] == 1 and 1 <= k[0] <= 4 and 1 <= k[4] <= 2
    assert not dataset_reset_mask([5, 4], 6, beta=0.0).any()
    a = dataset_reset_mask([9] * 8, 9, beta=0.5, generator=torch.Generator().manual_seed(4))
    b = dataset_reset_mask([9] * 8, 9, beta=0.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and a.dtype == torch.bool and a.shape == (8, 9)


class TinyLM(nn.Module):
    def __init__(self, params):
        super().__init__()
        self.emb = nn.Parameter(params["emb"].clone())
        self.pos = nn.Parameter(params["pos"].clone())

    def forward(self, ids):
        return self.emb[ids] + self.pos[: ids.shape[1]]


def test_forced_generation_matches_their_rollin_processor():
    f = GOLDEN["forcing"]
    lm = TinyLM(f["params"])
    forced = forced_prefixes(f["refs"], f["mask"])
    out = generate(lm, f["prompts"].tolist(), max_new_tokens=6, temperature=0, forced_prefixes=forced)
    assert out == f["tokens"].tolist()


def test_forced_sampling_keeps_prefix_and_consumes_generator_alike():
    lm = TinyLM(GOLDEN["forcing"]["params"])
    prompts = [[1, 2], [3, 4], [5, 6]]
    forced = [[9, 9, 9], None, []]
    a = generate(lm, prompts, max_new_tokens=5, forced_prefixes=forced, generator=torch.Generator().manual_seed(2))
    b = generate(lm, prompts, max_new_tokens=5, generator=torch.Generator().manual_seed(2))
    assert a[0][:3] == [9, 9, 9] and a[1:] == b[1:]  # unforced rows: the same samples as without forcing
    eos = generate(lm, [[1, 2]], max_new_tokens=5, eos_token_id=9, forced_prefixes=[[3, 9, 4]])
    assert eos == [[3, 9]]


@pytest.mark.parametrize("i", range(len(GOLDEN["pg_loss"])))
def test_ppo_clip_loss_matches_theirs(i):
    c = GOLDEN["pg_loss"][i]
    logps = c["logps"].clone().requires_grad_(True)
    loss = ppo_clip_loss(logps, c["old_logps"], c["advantages"], ~c["rollin"])
    torch.testing.assert_close(loss, c["loss"], rtol=1e-12, atol=1e-12)
    loss.backward()
    assert (logps.grad[c["rollin"]] == 0).all()  # forced tokens leave the policy loss


def test_ppo_clip_loss_sequence_advantages_and_nan():
    lp = torch.zeros(2, 3)
    adv = torch.tensor([1.0, -2.0])
    m = torch.ones(2, 3, dtype=torch.bool)
    assert math.isclose(float(ppo_clip_loss(lp, lp, adv, m)), 0.5, rel_tol=1e-6)
    assert math.isnan(float(ppo_clip_loss(lp, lp, adv, torch.zeros(2, 3, dtype=torch.bool))))


@pytest.mark.parametrize("args, kwargs, match", [
    (([3, 4], 5), {"beta": 1.5}, "beta"), (([3, 4], 5), {"beta": -0.1}, "beta"),
    (([3, 6], 5), {}, "ref_lengths"), (([], 5), {}, "ref_lengths"), ((torch.ones(2, 2, dtype=torch.long), 5), {},
                                                                     "ref_lengths"),
    ((torch.tensor([1.5]), 5), {}, "ref_lengths"), (([3], 0), {}, "max_len"),
])
def test_mask_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dataset_reset_mask(*args, **kwargs)


def test_bad_forced_prefixes_and_loss_shapes():
    lm = TinyLM(GOLDEN["forcing"]["params"])
    with pytest.raises(ValueError, match="forced_prefixes"):
        generate(lm, [[1], [2]], max_new_tokens=3, forced_prefixes=[[1]])
    with pytest.raises(ValueError, match=r"forced_prefixes\[0\]"):
        generate(lm, [[1]], max_new_tokens=2, forced_prefixes=[[1, 2, 3]])
    lp = torch.zeros(2, 3)
    m = torch.ones(2, 3, dtype=torch.bool)
    for args, match in (((lp, torch.zeros(2, 4), lp, m), "old_logps"), ((lp, lp, torch.zeros(3), m), "advantages"),
                        ((lp, lp, lp, m.float()), "mask"), ((torch.zeros(2), lp, lp, m), "logps")):
        with pytest.raises(ValueError, match=match):
            ppo_clip_loss(*args)
    with pytest.raises(ValueError, match="clip_range"):
        ppo_clip_loss(lp, lp, lp, m, clip_range=0.0)
    with pytest.raises(ValueError, match="refs"):
        forced_prefixes([[1, 2]], torch.zeros(2, 2, dtype=torch.bool))


def test_registered_with_seed_title():
    for name in ("dataset_reset_mask", "ppo_clip_loss"):
        rec = get(name)
        assert rec.paper == "Dataset Reset Policy Optimization for RLHF" and rec.arxiv == "2404.08495"
        assert rec.family == "preference" and rec.seed
