"""docs/rl_d3rlpy.md: the recipe that drops RIQL's losses into d3rlpy 2.8.1's IQL runs as written.

d3rlpy is not a gradwise dependency (its gymnasium==1.0.0 pin conflicts with the ``rl`` extra), so CI
skips this test; it runs in a separate venv with d3rlpy 2.8.1 (the command is in the doc)."""
from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import pytest
import torch

d3rlpy = pytest.importorskip("d3rlpy")
pytest.importorskip("gymnasium")

from gradwise.rl import awr_weights, ensemble_quantile, riql_q_loss, riql_value_loss  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "rl_d3rlpy.md"


def _recipe() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "docs/rl_d3rlpy.md should hold one python block"
    return blocks[0]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    ns: dict = {"__name__": "rl_d3rlpy_recipe"}
    out = io.StringIO()
    with contextlib.chdir(tmp_path_factory.mktemp("d3rlpy")), contextlib.redirect_stdout(out):
        exec(compile(_recipe(), str(DOC), "exec"), ns)  # noqa: S102 - our own doc
    return ns


class _Batch:  # the fields of d3rlpy's TorchMiniBatch that the overridden methods read
    def __init__(self, g: torch.Generator, b: int = 32):
        self.observations = torch.randn(b, 3, generator=g)
        self.actions = torch.rand(b, 1, generator=g) * 4 - 2
        self.rewards = torch.randn(b, 1, generator=g)
        self.next_observations = torch.randn(b, 3, generator=g)
        self.terminals = (torch.rand(b, 1, generator=g) < 0.2).float()
        self.intervals = torch.ones(b, 1)


def test_recipe_fits_with_the_overridden_losses(ran):
    algo, metrics = ran["algo"], ran["metrics"]
    assert type(algo.impl).__name__ == "RIQLImpl"
    assert len(metrics) == 2  # 20 steps, 10 per epoch
    # compute_value_loss runs once per critic update (20 updates); _compute_weight does not call it
    assert ran["RIQLImpl"].calls == 20
    for _, m in metrics:
        for key in ("q_loss", "v_loss", "actor_loss", "critic_loss"):
            assert math.isfinite(m[key]), (key, m)
        assert m["critic_loss"] == pytest.approx(m["q_loss"] + m["v_loss"], rel=1e-5)
    obs = ran["data"]["obs"][:8]
    act = algo.predict(obs)  # the action scaler maps the squashed mean back to Pendulum's [-2, 2]
    assert act.shape == (8, 1) and ((act >= -2) & (act <= 2)).all()


def test_overridden_methods_equal_gradwise_on_one_batch(ran):
    impl = ran["algo"].impl
    batch = _Batch(torch.Generator().manual_seed(0))
    with torch.no_grad():
        v = impl._modules.value_func(batch.observations).squeeze(-1)
        next_v = impl._modules.value_func(batch.next_observations)
        q = torch.stack([f(batch.observations, batch.actions).q_value.squeeze(-1)
                         for f in impl._modules.q_funcs])
        tq = torch.stack([f(batch.observations, batch.actions).q_value.squeeze(-1)
                          for f in impl._modules.targ_q_funcs])
        assert q.shape == tq.shape == (5, 32)

        v_loss = impl.compute_value_loss(batch)
        want_v = riql_value_loss(v, tq, quantile=0.25, expectile=0.7)
        torch.testing.assert_close(v_loss, want_v, rtol=1e-6, atol=0)
        # the override matters: d3rlpy's own IQL value loss (min over target critics) differs
        iql_v = type(impl).__mro__[1].compute_value_loss(impl, batch)
        assert not torch.isclose(v_loss, iql_v, rtol=1e-4)

        loss = impl.compute_critic_loss(batch, next_v)
        want_q = riql_q_loss(q, batch.rewards.squeeze(-1), batch.terminals.squeeze(-1),
                             next_v.squeeze(-1), discount=0.99, delta=1.0)
        torch.testing.assert_close(loss.q_loss, want_q, rtol=1e-6, atol=0)
        torch.testing.assert_close(loss.critic_loss, want_q + want_v, rtol=1e-6, atol=0)

        w = impl._compute_weight(batch)
        want_w = awr_weights(ensemble_quantile(tq, 0.25) - v, beta=3.0, max_weight=100.0)
        assert w.shape == (32, 1)
        torch.testing.assert_close(w.squeeze(-1), want_w, rtol=1e-6, atol=0)
