"""PV-Tuning on scalar codebooks: whole runs equal the authors' StraightThroughAdamW in PV mode
(tests/data/pv_tuning_golden.pt, made by tools/golden/make_pv_tuning_golden.py from Vahe1994/AQLM@e79a896 on CPU,
float64): codes exactly, codebook, scales and weights within 1e-10."""
from pathlib import Path

import pytest
import torch

from gradwise.compression import ScalarCodebookWeight, pv_tuning_step

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: intra-op threads only wait
GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "pv_tuning_golden.pt", weights_only=True)
TOL = dict(rtol=1e-10, atol=1e-12)


def _from_theirs(init):
    return ScalarCodebookWeight(init["codes"][..., 0], init["codebook"].reshape(-1), init["scales"].reshape(-1, 1))


@pytest.mark.parametrize("run", GOLDEN["runs"],
                         ids=lambda r: f"{r['settings']['nbits']}bit-tr{r['settings']['trust_ratio']}")
def test_runs_equal_the_authors_pv_optimizer(run):
    st = run["settings"]
    qw = _from_theirs(run["init"])
    state = {}
    x, y = run["x"], run["y"]
    for t in range(len(run["codes"])):
        w = qw().detach().requires_grad_()
        loss = 0.5 * (x @ w.T - y).square().sum() / x.shape[0]
        loss.backward()
        torch.testing.assert_close(w.grad, run["grad"][t], **TOL)
        pv_tuning_step(qw, w.grad, state, lr=st["lr"], code_lr=st["code_lr"], betas=st["betas"],
                       code_betas=st["code_betas"], eps=st["eps"], max_code_change=st["max_code_change"],
                       trust_ratio=st["trust_ratio"])
        assert torch.equal(qw.codes, run["codes"][t][..., 0].long()), f"step {t}"
        torch.testing.assert_close(qw.codebook.detach(), run["codebook"][t].reshape(-1), **TOL)
        torch.testing.assert_close(qw.scales.detach(), run["scales"][t].reshape(-1, 1), **TOL)
        torch.testing.assert_close(qw().detach(), run["weight"][t], **TOL)


def test_subspace_limit_and_trust_ratio_bound_the_code_changes():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=gen, dtype=torch.float64)
    g = torch.randn(8, 16, generator=gen, dtype=torch.float64)
    for frac, most in ((0.05, 7), (0.25, 32), (1.0, 128)):
        qw = ScalarCodebookWeight.from_weight(w, 2)
        assert pv_tuning_step(qw, g, {}, code_lr=5.0, code_betas=(0.0, 0.0), max_code_change=frac) <= most
    qw = ScalarCodebookWeight.from_weight(w, 2)
    assert pv_tuning_step(qw, g, {}, code_lr=5.0, code_betas=(0.0, 0.0), max_code_change=1.0, trust_ratio=1e-9) == 1


def test_v_step_moves_codes_against_the_gradient_and_lowers_the_loss():
    # a 1-bit quadratic from a random start: the codes move towards the target's signs
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(4, 32, generator=gen, dtype=torch.float64)
    qw = ScalarCodebookWeight.from_weight(torch.randn(4, 32, generator=gen, dtype=torch.float64), 1)
    state, losses = {}, []
    for _ in range(30):
        w = qw().detach()
        losses.append(float(0.5 * (w - target).square().sum()))
        pv_tuning_step(qw, w - target, state, lr=1e-2, code_lr=1.0, code_betas=(0.0, 0.0), max_code_change=0.1)
    assert losses[-1] < 0.5 * losses[0]
    agree = (torch.sign(qw().detach()) == torch.sign(target)).double().mean()
    assert agree > 0.75  # the 1-bit codes follow the target's signs


def test_from_weight_quantizes_to_the_nearest_of_two_or_four_values():
    w = torch.randn(5, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for bits in (1, 2):
        qw = ScalarCodebookWeight.from_weight(w, bits)
        assert qw.bits == bits and qw.codebook.numel() == 2 ** bits
        err = (qw() - w).square().sum()
        assert err < w.square().sum() * (0.5 if bits == 1 else 0.2)
        z = (w / qw.scales.detach()).unsqueeze(-1)
        assert torch.equal(qw.codes, (z - qw.codebook.detach()).abs().argmin(-1))


@pytest.mark.parametrize("kw, match", [(dict(max_code_change=0.0), "max_code_change"),
                                       (dict(max_code_change=1.5), "max_code_change"),
                                       (dict(trust_ratio=0.0), "trust_ratio"), (dict(lr=-1.0), "lr"),
                                       (dict(code_betas=(1.0, 0.9)), "code_betas")])
def test_bad_settings_raise_before_anything_changes(kw, match):
    qw = ScalarCodebookWeight.from_weight(torch.randn(3, 4, dtype=torch.float64), 1)
    before = [t.detach().clone() for t in (qw.codes, qw.codebook, qw.scales)]
    state = {}
    with pytest.raises(ValueError, match=match):
        pv_tuning_step(qw, torch.ones(3, 4, dtype=torch.float64), state, **kw)
    assert state == {} and all(torch.equal(a, b.detach()) for a, b in zip(before, (qw.codes, qw.codebook, qw.scales)))


def test_bad_representation_raises():
    with pytest.raises(ValueError, match="bits"):
        ScalarCodebookWeight.from_weight(torch.randn(3, 4), 3)
    with pytest.raises(ValueError, match="codebook"):
        ScalarCodebookWeight(torch.zeros(3, 4, dtype=torch.long), torch.zeros(8), torch.ones(3, 1))
    with pytest.raises(ValueError, match="codes"):
        ScalarCodebookWeight(torch.full((3, 4), 2, dtype=torch.long), torch.zeros(2), torch.ones(3, 1))
    qw = ScalarCodebookWeight.from_weight(torch.randn(3, 4), 1)
    with pytest.raises(ValueError, match="grad"):
        pv_tuning_step(qw, torch.ones(4, 3), {})
