"""A small plain-torch SAC (continuous actions) whose replay buffer is the "medium-replay" dataset of
``gradwise.rl.data`` and whose final actor is its "expert". Not a method of the library: data only.

Soft actor-critic (Haarnoja et al. 2018, with the automatic entropy temperature): a tanh-squashed
Gaussian actor, twin Q critics with Polyak targets (τ 0.005), γ 0.99, Adam (actor 3e-4, critics 1e-3,
temperature 3e-4), target entropy −dim(A), ``learning_starts`` uniform-random steps first, then one
update per environment step on a batch of 256 (CleanRL's continuous SAC defaults). All randomness
comes from ``seed``: the networks are built under ``torch.random.fork_rng`` (the caller's global RNG
is untouched), noise and replay indices come from a private generator, the environment and its
action space are seeded once.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise.rl._common import FIELDS, require_gymnasium

__all__ = ["SACConfig", "train_sac", "cache_dir", "cache_file", "load_actor"]

VERSION = 1  # bump when the training code changes: cached buffers of another version are not reused


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where buffers are cached: ``path``, else ``$GRADWISE_CACHE/rl``, else ``$XDG_CACHE_HOME/gradwise/rl``
    (``~/.cache/gradwise/rl``). Never inside the repository."""
    if path is not None:
        return Path(path)
    if os.environ.get("GRADWISE_CACHE"):
        return Path(os.environ["GRADWISE_CACHE"]) / "rl"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gradwise" / "rl"


def SACConfig(env_id: str, n_steps: int, seed: int, env_kwargs: dict | None = None, hidden: int = 256,
              batch: int = 256, learning_starts: int = 1000) -> dict[str, Any]:
    """The configuration a buffer is cached under (its hash names the file)."""
    return dict(env_id=env_id, env_kwargs=dict(sorted((env_kwargs or {}).items())), n_steps=int(n_steps),
                seed=int(seed), hidden=int(hidden), batch=int(batch), learning_starts=int(learning_starts),
                gamma=0.99, tau=0.005, actor_lr=3e-4, q_lr=1e-3, alpha_lr=3e-4, version=VERSION)


def _mlp(i: int, o: int, h: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, o))


class _Actor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int, low: np.ndarray, high: np.ndarray):
        super().__init__()
        self.net = _mlp(obs_dim, 2 * act_dim, hidden)
        self.register_buffer("scale", torch.as_tensor((high - low) / 2, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor((high + low) / 2, dtype=torch.float32))

    def forward(self, obs: Tensor, gen: torch.Generator | None = None, deterministic: bool = False):
        mean, log_std = self.net(obs).chunk(2, -1)
        log_std = torch.tanh(log_std)
        log_std = -5 + 0.5 * (2 - (-5)) * (log_std + 1)  # CleanRL's squash of log std into [-5, 2]
        std = log_std.exp()
        if deterministic:
            return torch.tanh(mean) * self.scale + self.bias, None
        eps = torch.randn(mean.shape, generator=gen, dtype=mean.dtype)
        x = mean + std * eps
        y = torch.tanh(x)
        log_prob = (-0.5 * eps ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - torch.log(self.scale * (1 - y ** 2) + 1e-6).sum(-1)
        return y * self.scale + self.bias, log_prob


def _file(config: dict[str, Any], root: Path) -> Path:
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"sac_{config['env_id']}_{key}.pt"


def cache_file(config: dict[str, Any], cache: str | os.PathLike | None = None) -> Path:
    """The file the run of ``config`` is (or would be) cached in, under :func:`cache_dir` ``(cache)``: lets a
    caller check for a cached buffer without starting a run (the arena's odice study)."""
    return _file(config, cache_dir(cache))


def train_sac(config: dict[str, Any], *, cache: str | os.PathLike | None | bool = None) -> dict[str, Any]:
    """Run SAC for ``config["n_steps"]`` steps; returns ``{"buffer": {field: tensor}, "actor": state_dict,
    "returns": [episode returns]}``. Cached (``cache=False`` turns it off) under :func:`cache_dir`.
    Runs on one torch thread (restored after): on the shared 2-core machine two threads made these
    small updates several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_sac(config, cache)
    finally:
        torch.set_num_threads(threads)


def _train_sac(config: dict[str, Any], cache) -> dict[str, Any]:
    path = None if cache is False else _file(config, cache_dir(None if cache in (None, True) else cache))
    if path is not None and path.exists():
        return torch.load(path, weights_only=True)
    gym = require_gymnasium()
    env = gym.make(config["env_id"], **config["env_kwargs"])
    if not isinstance(env.action_space, gym.spaces.Box):
        env.close()
        raise ValueError(f"SAC data needs a continuous (Box) action space; {config['env_id']} has {env.action_space}")
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    seed, h = config["seed"], config["hidden"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        actor = _Actor(obs_dim, act_dim, h, low, high)
        qs = nn.ModuleList([_mlp(obs_dim + act_dim, 1, h) for _ in range(2)])
    q_target = copy.deepcopy(qs).requires_grad_(False)
    log_alpha = torch.zeros((), requires_grad=True)
    a_opt = torch.optim.Adam(actor.parameters(), lr=config["actor_lr"])
    q_opt = torch.optim.Adam(qs.parameters(), lr=config["q_lr"])
    al_opt = torch.optim.Adam([log_alpha], lr=config["alpha_lr"])
    gen = torch.Generator().manual_seed(seed)
    gamma, tau, batch, target_entropy = config["gamma"], config["tau"], config["batch"], -float(act_dim)

    n = config["n_steps"]
    o_buf, o2_buf = np.zeros((n, obs_dim), np.float32), np.zeros((n, obs_dim), np.float32)
    a_buf, r_buf = np.zeros((n, act_dim), np.float32), np.zeros(n, np.float32)
    d_buf, to_buf = np.zeros(n, bool), np.zeros(n, bool)
    returns, ep_ret = [], 0.0
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    q_params, qt_params = list(qs.parameters()), list(q_target.parameters())
    for t in range(n):
        if t < config["learning_starts"]:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                action = actor(torch.as_tensor(obs, dtype=torch.float32)[None], gen)[0][0].numpy()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        o_buf[t], a_buf[t], r_buf[t], o2_buf[t], d_buf[t], to_buf[t] = obs, action, reward, next_obs, terminated, truncated
        ep_ret += float(reward)
        obs = next_obs
        if terminated or truncated:
            returns.append(ep_ret)
            ep_ret = 0.0
            obs, _ = env.reset()
        if t + 1 >= config["learning_starts"] and t + 1 >= batch:
            idx = torch.randint(0, t + 1, (batch,), generator=gen).numpy()
            s, a, r = torch.from_numpy(o_buf[idx]), torch.from_numpy(a_buf[idx]), torch.from_numpy(r_buf[idx])
            s2, d = torch.from_numpy(o2_buf[idx]), torch.from_numpy(d_buf[idx].astype(np.float32))
            alpha = log_alpha.exp().detach()
            with torch.no_grad():
                a2, lp2 = actor(s2, gen)
                sa2 = torch.cat([s2, a2], -1)
                q_next = torch.min(q_target[0](sa2), q_target[1](sa2)).squeeze(-1) - alpha * lp2
                y = r + gamma * (1 - d) * q_next
            sa = torch.cat([s, a], -1)
            q_loss = F.mse_loss(qs[0](sa).squeeze(-1), y) + F.mse_loss(qs[1](sa).squeeze(-1), y)
            q_opt.zero_grad(set_to_none=True)
            q_loss.backward()
            q_opt.step()
            pi, lp = actor(s, gen)
            spi = torch.cat([s, pi], -1)
            a_loss = (alpha * lp - torch.min(qs[0](spi), qs[1](spi)).squeeze(-1)).mean()
            a_opt.zero_grad(set_to_none=True)
            a_loss.backward()
            a_opt.step()
            al_loss = -(log_alpha * (lp.detach() + target_entropy)).mean()
            al_opt.zero_grad(set_to_none=True)
            al_loss.backward()
            al_opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(qt_params, q_params, tau)
    env.close()
    buffer = dict(obs=torch.from_numpy(o_buf), action=torch.from_numpy(a_buf), reward=torch.from_numpy(r_buf),
                  next_obs=torch.from_numpy(o2_buf), done=torch.from_numpy(d_buf), timeout=torch.from_numpy(to_buf))
    result = {"buffer": {k: buffer[k] for k in FIELDS}, "actor": actor.state_dict(),
              "returns": torch.tensor(returns, dtype=torch.float64),
              "dims": torch.tensor([obs_dim, act_dim, h])}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(result, tmp)
        tmp.replace(path)
    return result


def load_actor(result: dict[str, Any], env) -> _Actor:
    """The trained actor of a :func:`train_sac` result, for ``env``'s action bounds."""
    obs_dim, act_dim, h = (int(x) for x in result["dims"])
    actor = _Actor(obs_dim, act_dim, h, env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64))
    actor.load_state_dict(result["actor"])
    return actor.eval()
