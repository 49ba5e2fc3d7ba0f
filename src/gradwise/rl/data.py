"""Offline transition data generated locally with gymnasium (the optional ``rl`` extra): no dataset
downloads. ``collect`` rolls a policy in a gymnasium environment and returns the transitions as tensors.

Determinism: the environment is reset with ``seed`` once (later resets continue its generator, as
gymnasium intends), the action space is seeded with ``seed`` (so ``"random"`` is reproducible), and
the caller's policy sees only the observations. Two calls with the same arguments return equal tensors.

``done`` is gymnasium's ``terminated`` (a true terminal state, D4RL's ``terminals``), not the time
limit: a time-limit cut is recorded in ``timeout`` and is not a terminal for bootstrapping.

Policies (continuous actions for the SAC ones; the issue's Pendulum datasets):

* ``"random"``: uniform samples of the seeded action space;
* ``"medium-replay"``: the whole replay buffer of an ``n_steps``-step SAC run (``gradwise.rl._sac``;
  its first 1000 steps are uniform-random, then the learning policy's samples): D4RL's
  "medium-replay" recipe at CPU scale. Measured 2026-12-07 on the shared 2-core AMD EPYC (load
  average 8-11, one thread): a 20k-step Pendulum-v1 run, seed 0, took 1833 s; its episode returns
  went from about -1000 to -1500 (first five) to a mean of -178 over the last ten (best -0.4);
* ``"expert"``: ``n_steps`` steps of the deterministic (mean) actor of a ``sac_steps``-step SAC run;
* a callable ``obs -> action``.

SAC runs are cached by the hash of their configuration under ``cache_dir`` (default
``$GRADWISE_CACHE/rl`` or ``~/.cache/gradwise/rl``; ``cache_dir=False`` turns caching off), never in
the repository.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradwise._validate import check_int
from gradwise.rl._common import FIELDS, require_gymnasium
from gradwise.rl._sac import SACConfig, load_actor, train_sac

__all__ = ["collect", "FIELDS", "POLICIES"]

POLICIES = ("random", "medium-replay", "expert")


def collect(env_id: str, policy: str | Callable[[Tensor], Any] = "random", n_steps: int = 10_000, seed: int = 0,
            *, env_kwargs: Mapping[str, Any] | None = None, dtype: torch.dtype = torch.float32,
            sac_steps: int = 20_000, cache_dir: str | None | bool = None) -> dict[str, Tensor]:
    """Roll ``policy`` for ``n_steps`` environment steps in ``gymnasium.make(env_id, **env_kwargs)``.

    ``policy``: ``"random"`` (uniform samples of the seeded action space), ``"medium-replay"``,
    ``"expert"`` (SAC data, see the module docstring; ``sac_steps`` is the expert's training length)
    or a callable taking the observation as a ``dtype`` tensor and returning an action (tensor, array
    or int). Returns a dict of
    tensors with ``n_steps`` rows: ``obs``, ``action`` (``int64`` for discrete spaces), ``reward``,
    ``next_obs``, ``done`` (terminated, bool) and ``timeout`` (truncated, bool)."""
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env_id must be a gymnasium environment id (str), got {env_id!r}")
    if not (policy in POLICIES or callable(policy)):
        raise ValueError(f"policy must be one of {POLICIES} or a callable obs -> action, got {policy!r}")
    n_steps = check_int("n_steps", n_steps, lo=1)
    seed = check_int("seed", seed, lo=0)
    sac_steps = check_int("sac_steps", sac_steps, lo=1)
    if policy == "medium-replay":
        run = train_sac(SACConfig(env_id, n_steps, seed, dict(env_kwargs or {})), cache=cache_dir)
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in run["buffer"].items()}
    gym = require_gymnasium()
    env = gym.make(env_id, **dict(env_kwargs or {}))
    if policy == "expert":
        run = train_sac(SACConfig(env_id, sac_steps, seed, dict(env_kwargs or {})), cache=cache_dir)
        actor = load_actor(run, env)
        policy = lambda o: actor(o.float()[None], deterministic=True)[0][0]  # noqa: E731
    try:
        discrete = isinstance(env.action_space, gym.spaces.Discrete)
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        rows: dict[str, list] = {k: [] for k in FIELDS}
        for _ in range(n_steps):
            if policy == "random":
                action = env.action_space.sample()
            else:
                with torch.no_grad():
                    out = policy(torch.as_tensor(np.asarray(obs), dtype=dtype))
                action = out.detach().cpu().numpy() if isinstance(out, Tensor) else np.asarray(out)
                action = int(action) if discrete else action.astype(env.action_space.dtype).reshape(env.action_space.shape)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            for k, v in zip(FIELDS, (obs, action, reward, next_obs, terminated, truncated)):
                rows[k].append(v)
            obs = next_obs
            if terminated or truncated:
                obs, _ = env.reset()
    finally:
        env.close()
    out = {k: torch.as_tensor(np.asarray(rows[k]), dtype=dtype) for k in ("obs", "reward", "next_obs")}
    out["action"] = (torch.as_tensor(np.asarray(rows["action"]), dtype=torch.int64) if discrete
                     else torch.as_tensor(np.asarray(rows["action"]), dtype=dtype))
    out["done"] = torch.as_tensor(np.asarray(rows["done"]), dtype=torch.bool)
    out["timeout"] = torch.as_tensor(np.asarray(rows["timeout"]), dtype=torch.bool)
    return {k: out[k] for k in FIELDS}
