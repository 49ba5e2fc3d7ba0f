"""gradwise.rl.data.collect: shapes and dtypes, determinism given the seed, a callable policy,
terminal vs time-limit flags, bad input."""
import pytest
import torch

pytest.importorskip("gymnasium")
from gradwise.rl.data import FIELDS, collect  # noqa: E402


def test_pendulum_random_is_deterministic_and_shaped():
    a = collect("Pendulum-v1", "random", 250, seed=3)
    b = collect("Pendulum-v1", "random", 250, seed=3)
    c = collect("Pendulum-v1", "random", 250, seed=4)
    assert tuple(a) == FIELDS
    assert a["obs"].shape == (250, 3) and a["action"].shape == (250, 1) and a["reward"].shape == (250,)
    assert a["obs"].dtype == torch.float32 and a["done"].dtype == torch.bool
    for k in FIELDS:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["obs"], c["obs"])
    # Pendulum never terminates; its 200-step time limit cuts once in 250 steps
    assert not a["done"].any() and int(a["timeout"].sum()) == 1
    i = int(a["timeout"].nonzero()[0, 0])
    assert torch.equal(a["next_obs"][:i], a["obs"][1:i + 1])


def test_cartpole_callable_policy_discrete_actions():
    d = collect("CartPole-v1", lambda o: int(o[2] > 0), 300, seed=0, dtype=torch.float64)
    assert d["action"].dtype == torch.int64 and set(d["action"].tolist()) <= {0, 1}
    assert d["obs"].dtype == torch.float64 and d["done"].any()
    assert torch.equal(d["action"], (d["obs"][:, 2] > 0).long())


def test_env_kwargs_change_dynamics():
    a = collect("Pendulum-v1", "random", 20, seed=1)
    b = collect("Pendulum-v1", "random", 20, seed=1, env_kwargs={"g": 14.0})
    assert torch.equal(a["obs"][0], b["obs"][0]) and not torch.equal(a["next_obs"], b["next_obs"])


@pytest.mark.parametrize("kwargs, match", [(dict(policy="expert"), "policy"), (dict(n_steps=0), "n_steps"),
                                           (dict(seed=-1), "seed"), (dict(env_id=""), "env_id")])
def test_bad_input(kwargs, match):
    args = dict(env_id="Pendulum-v1", policy="random", n_steps=5, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        collect(**args)
