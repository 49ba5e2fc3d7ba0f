"""ODICE: value updates equal the authors' odice.py (tests/data/odice_golden.pt, float64: gradients, c,
residuals, policy weights, parameters after their Adam + EMA, 7 cases x 3 steps), plus the contract:
accumulation into .grad, no host sync, NaN propagation, bad input raising before any .grad is written."""
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from gradwise.registry import get
from gradwise.rl import (dice_f_star, odice_policy_weights, odice_value_backward, orthogonal_backward)
from gradwise.rl._common import polyak_update

pytestmark = pytest.mark.usefixtures("one_thread")
GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "odice_golden.pt", weights_only=True)
F_NAME = {"Pearson_chi_square": "chi2", "Reverse_KL": "kl"}


def mlp(s, h, ln):
    layers = []
    for a, b in ((s, h), (h, h)):
        layers += [nn.Linear(a, b)] + ([nn.LayerNorm(b)] if ln else []) + [nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(h, 1), nn.Flatten(0))


class V(nn.Module):
    def __init__(self, s, h, ln):
        super().__init__()
        self.v = mlp(s, h, ln)

    def forward(self, x):
        return self.v(x)


class TwinV(nn.Module):
    def __init__(self, s, h, ln):
        super().__init__()
        self.v1, self.v2 = mlp(s, h, ln), mlp(s, h, ln)

    def both(self, x):
        return torch.stack([self.v1(x), self.v2(x)])

    def forward(self, x):
        return self.both(x).min(0).values


def close(a, b, rtol=1e-10, atol=1e-12):
    a, b = a.detach(), b.detach()
    assert a.shape == b.shape, (a.shape, b.shape)
    err = float((a - b).abs().max()) if a.numel() else 0.0
    assert err <= atol + rtol * float(b.abs().max()), err


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_matches_authors_updates(case):
    vf = (TwinV if case["twin"] else V)(GOLDEN["S"], GOLDEN["H"], case["ln"]).double()
    vf.load_state_dict(case["init"])
    target = copy.deepcopy(vf).requires_grad_(False)
    opt = torch.optim.Adam(vf.parameters(), lr=GOLDEN["value_lr"])
    f = F_NAME[case["f"]]
    value_fn = (lambda m, x: m.both(x)) if case["twin"] else None
    for st in case["steps"]:
        opt.zero_grad(set_to_none=True)
        out = odice_value_backward(vf, target, st["obs"], st["next_obs"], st["reward"], st["done"].bool(),
                                   mode=case["mode"], discount=GOLDEN["discount"], lam=case["lam"],
                                   eta=case["eta"], f=f, value_fn=value_fn)
        for p, g in zip(vf.parameters(), st["grads"]):
            close(p.grad, g)
        close(out.residual, st["residual"])
        close(odice_policy_weights(out.residual, f=f), st["weights"])
        if case["mode"] == "orthogonal":
            close(out.parallel_coef, st["c"].reshape(()))
        else:
            assert torch.isnan(out.parallel_coef)
        opt.step()
        polyak_update(target, vf, GOLDEN["beta"])
        for p, q in zip(vf.parameters(), st["params"]):
            close(p, q)
        for p, q in zip(target.parameters(), st["target_params"]):
            close(p, q)


def test_flat_guard_case_has_zero_forward_gradient():
    case = next(c for c in GOLDEN["cases"] if c["name"] == "v_chi2_flat_guard")
    assert all(float(s["residual"].max()) < -2 for s in case["steps"])
    assert all(float(s["c"]) == 0.0 for s in case["steps"])


def _setup(seed=0, b=8):
    torch.manual_seed(seed)
    vf = V(3, 6, False).double()
    target = copy.deepcopy(vf).requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(b, 3, generator=g, dtype=torch.float64)
    return vf, target, obs, obs + 0.1, torch.randn(b, generator=g, dtype=torch.float64), torch.zeros(b)


def test_update_adds_to_existing_grad_and_c_is_a_tensor():
    vf, target, obs, nxt, r, d = _setup()
    odice_value_backward(vf, target, obs, nxt, r, d)
    once = [p.grad.clone() for p in vf.parameters()]
    out = odice_value_backward(vf, target, obs, nxt, r, d)
    for p, g in zip(vf.parameters(), once):
        close(p.grad, 2 * g)
    assert isinstance(out.parallel_coef, torch.Tensor) and out.parallel_coef.dim() == 0


def test_orthogonal_backward_projects_out_forward_direction():
    w = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    c = orthogonal_backward((w * torch.tensor([1.0, 0.0], dtype=torch.float64)).sum(),
                            (w * torch.tensor([-2.0, 3.0], dtype=torch.float64)).sum(), [w])
    # g_f = (1, 0), g_b = (-2, 3): c = -2, update = 3 g_f + g_b = (1, 3)
    assert float(c) == -2.0 and w.grad.tolist() == [1.0, 3.0]


def test_f_star_values():
    x = torch.tensor([-3.0, 0.0, 2.0], dtype=torch.float64)
    close(dice_f_star(x, "chi2"), torch.tensor([-1.0, 0.0, 3.0], dtype=torch.float64))
    close(dice_f_star(x, "kl"), torch.exp(x - 1))


def test_nan_reward_propagates():
    vf, target, obs, nxt, r, d = _setup()
    r[0] = float("nan")
    out = odice_value_backward(vf, target, obs, nxt, r, d)
    assert torch.isnan(out.loss) and any(torch.isnan(p.grad).any() for p in vf.parameters())


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="full"), "mode"), (dict(f="js"), "f"), (dict(lam=1.5), "lam"), (dict(eta=-1.0), "eta"),
    (dict(discount=2.0), "discount"), (dict(short_reward=True), "batch sizes"), (dict(reward2d=True), "reward")])
def test_bad_input_raises_before_grad(kwargs, match):
    vf, target, obs, nxt, r, d = _setup()
    if kwargs.pop("short_reward", False):
        r = r[:-1]
    if kwargs.pop("reward2d", False):
        r = r[:, None]
    with pytest.raises(ValueError, match=match):
        odice_value_backward(vf, target, obs, nxt, r, d, **kwargs)
    assert all(p.grad is None for p in vf.parameters())


def test_registered_with_seed_title():
    rec = get("ODICE")
    assert rec.family == "rl" and rec.kind == "rl-objective" and rec.arxiv == "2402.00348"
