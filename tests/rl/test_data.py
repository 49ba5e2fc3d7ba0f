"""gradwise.rl.data.collect: shapes and dtypes, determinism given the seed, a callable policy,
terminal vs time-limit flags, bad input."""
import pytest
import torch

pytest.importorskip("gymnasium")
from gradwise.rl.data import FIELDS, collect  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


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


@pytest.mark.parametrize("kwargs, match", [(dict(policy="medium"), "policy"), (dict(n_steps=0), "n_steps"),
                                           (dict(seed=-1), "seed"), (dict(env_id=""), "env_id")])
def test_bad_input(kwargs, match):
    args = dict(env_id="Pendulum-v1", policy="random", n_steps=5, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        collect(**args)


def test_medium_replay_is_a_seeded_sac_buffer_cached_by_config(tmp_path, monkeypatch):
    from gradwise.rl import _sac

    import gradwise.rl.data as data
    small = lambda env_id, n, seed, kw=None: _sac.SACConfig(env_id, n, seed, kw, hidden=8, batch=16,  # noqa: E731
                                                           learning_starts=40)
    monkeypatch.setattr(data, "SACConfig", small)
    a = collect("Pendulum-v1", "medium-replay", 60, seed=5, cache_dir=tmp_path)
    files = list(tmp_path.glob("sac_Pendulum-v1_*.pt"))
    assert len(files) == 1 and a["obs"].shape == (60, 3) and tuple(a) == FIELDS
    b = collect("Pendulum-v1", "medium-replay", 60, seed=5, cache_dir=False)  # recomputed, not read
    for k in FIELDS:
        assert torch.equal(a[k], b[k]), k
    r = collect("Pendulum-v1", "random", 40, seed=5)
    assert torch.equal(a["action"][:40], r["action"])  # the first learning_starts steps are uniform-random
    assert not torch.equal(a["action"][40:], collect("Pendulum-v1", "random", 60, seed=5)["action"][40:])
    e = collect("Pendulum-v1", "expert", 30, seed=5, sac_steps=60, cache_dir=tmp_path)
    assert e["action"].shape == (30, 1) and float(e["action"].abs().max()) <= 2.0
    assert len(list(tmp_path.glob("*.pt"))) == 1  # the expert reused the cached 60-step run
