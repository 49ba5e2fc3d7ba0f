"""Golden RIQL losses, training steps and random corruption, made by running the authors' code.

Source: github.com/YangRui2015/RIQL at commit cc07d812 (``RIQL.py``, ``RIQL_config.py``, ``attack.py``,
extracted with ``git show`` into a temporary folder by ``authors_code.extract``). Stubbed is only what
is not math and is not installed here: ``d4rl``, ``gym`` (``gym.make`` returns an object with the
spaces' shapes), ``pyrallis``, ``wandb``. Their config is their ``TrainConfig`` class, whose
``quantile`` and ``sigma`` class attributes their methods read; each case sets them.

The authors' ``.float()`` casts (``terminals.float()`` and the expectile weight ``(u < 0).float()``)
round γ and τ to float32; the issue asks gradwise to keep float64, so while their code runs here
``Tensor.float`` returns float64 for float64 and bool tensors (every other dtype as torch does).
Nothing else in their code is changed.

Cases:

* ``value`` (6): their ``ImplicitQLearning._update_v`` with ``q_target`` returning a fixed ``[K, B]``
  tensor and ``vf`` a parameter vector: K 1/3/5, quantile 0.1-0.5, iql_tau 0.7/0.9. Recorded: their
  ``value_loss``, the advantage they return and the gradient their Adam is about to apply.
* ``q`` (5): their ``_update_q`` with ``qf`` a ``[K, B]`` parameter: K 1/3/5, sigma 0.1-3, targets
  beyond the (-100, 1000) clip in two cases. Recorded: ``q_loss`` and the gradient.
* ``train`` (2 x 3 steps): their ``ImplicitQLearning.train`` on their ``VectorizedQ`` (K 5,
  deterministic actor) and (K 3, Gaussian actor) float64 networks with their Adam optimizers (lr 1e-3)
  and actor cosine schedule: initial state dicts, batches and every network's parameters after each step.
* ``attack`` (3): their ``Attack`` in random mode on a seeded float64 dataset (obs, act; reward;
  next_obs, i.e. dynamics) with seed 7: the dataset before and after, and their index draw and uniform
  draws re-made from ``np.random.RandomState(7)`` in their order (checked here against their output).

    RIQL_REPO=/work/.mirror/YangRui2015+RIQL/repo PYTHONPATH=src python tools/golden/make_riql_golden.py

Writes tests/data/riql_golden.pt (float64).
"""
import copy
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from authors_code import extract  # noqa: E402

REPO = os.environ.get("RIQL_REPO", "/work/.mirror/YangRui2015+RIQL/repo")
COMMIT = "cc07d812"
OUT = Path(__file__).parents[2] / "tests" / "data" / "riql_golden.pt"
S, A, H, B = 4, 2, 8, 12


def _stubs():
    for name in ("d4rl", "pyrallis", "wandb"):
        sys.modules[name] = types.ModuleType(name)
    gym = types.ModuleType("gym")

    class _Space:
        def __init__(self, n):
            self.shape = (n,)
            self.high = np.ones(n)

    class _Env:
        observation_space, action_space = _Space(S), _Space(A)

        def close(self):
            pass
    gym.make = lambda name: _Env()
    gym.Env = object
    sys.modules["gym"] = gym
    tq = types.ModuleType("tqdm")
    tq.trange = range
    sys.modules.setdefault("tqdm", tq)


_float = torch.Tensor.float


def _keep_f64(self, *a, **k):
    return self.double() if self.dtype in (torch.float64, torch.bool) else _float(self, *a, **k)


class _Param(torch.nn.Module):
    def __init__(self, x):
        super().__init__()
        self.p = torch.nn.Parameter(x.clone())

    def forward(self, *args):
        return self.p


def main():
    extract(REPO, COMMIT, ["RIQL.py", "RIQL_config.py", "attack.py"])
    _stubs()
    import attack as their_attack
    import RIQL as their
    torch.Tensor.float = _keep_f64
    gen = torch.Generator().manual_seed(0)
    rnd = lambda *shape, s=1.0: torch.randn(*shape, generator=gen, dtype=torch.float64) * s  # noqa: E731

    def trainer_with(qf, vf):
        mk = lambda m: torch.optim.Adam(m.parameters(), lr=1e-3)  # noqa: E731
        actor = their.DeterministicPolicy(S, A, 1.0, hidden_dim=H).double()
        return their.ImplicitQLearning(max_action=1.0, actor=actor, actor_optimizer=mk(actor), q_network=qf,
                                       q_optimizer=mk(qf), v_network=vf, v_optimizer=mk(vf), iql_tau=0.7,
                                       max_steps=10)

    def grad_hook(opt, box):
        opt.register_step_pre_hook(lambda o, a, k: box.append([p.grad.detach().clone()
                                                                for g in o.param_groups for p in g["params"]]))

    attack_idx = torch.tensor([1.0, 0.0] * (B // 2))
    value_cases = []
    for k, (K, qt, tau) in enumerate([(1, 0.25, 0.7), (3, 0.1, 0.7), (3, 0.5, 0.9), (5, 0.25, 0.7),
                                      (5, 0.1, 0.9), (5, 0.4, 0.7)]):
        target_q, v0 = rnd(K, B, s=2.0), rnd(B)
        tr = trainer_with(_Param(torch.zeros(K, B, dtype=torch.float64)), _Param(v0))
        tr.q_target = lambda o, a, t=target_q: t
        tr.iql_tau = tau
        their.TrainConfig.quantile = qt
        box, log = [], {}
        grad_hook(tr.v_optimizer, box)
        adv = tr._update_v(rnd(B, S), rnd(B, A), log, attack_idx)
        value_cases.append(dict(K=K, quantile=qt, expectile=tau, target_q=target_q, v=v0,
                                loss=torch.tensor(log["value_loss"], dtype=torch.float64), adv=adv.detach(),
                                grad=box[0][0]))

    q_cases = []
    for k, (K, sigma, shift) in enumerate([(1, 1.0, 0.0), (3, 0.1, 0.0), (5, 3.0, 0.0), (5, 0.5, 1500.0),
                                           (3, 1.0, -300.0)]):
        q0, next_v, reward = rnd(K, B, s=2.0), rnd(B, s=2.0), rnd(B, s=2.0) + shift
        reward[:B // 2] -= shift  # half the batch inside the clip
        done = (torch.rand(B, generator=gen) < 0.3).double()
        tr = trainer_with(_Param(q0), _Param(torch.zeros(B, dtype=torch.float64)))
        their.TrainConfig.sigma = sigma
        box, log = [], {}
        grad_hook(tr.q_optimizer, box)
        tr._update_q(next_v, rnd(B, S), rnd(B, A), reward, done, log, attack_idx)
        q_cases.append(dict(K=K, sigma=sigma, q=q0, next_v=next_v, reward=reward, done=done,
                            loss=torch.tensor(log["q_loss"], dtype=torch.float64), grad=box[0][0]))

    train_cases = []
    for k, (K, deterministic, qt, sigma) in enumerate([(5, True, 0.25, 1.0), (3, False, 0.1, 0.5)]):
        torch.manual_seed(300 + k)
        qf = their.VectorizedQ(S, A, hidden_dim=H, num_critics=K).double()
        vf = their.ValueFunction(S, hidden_dim=H).double()
        actor = (their.DeterministicPolicy if deterministic else their.GaussianPolicy)(S, A, 1.0, hidden_dim=H).double()
        init = dict(qf=copy.deepcopy(qf.state_dict()), vf=copy.deepcopy(vf.state_dict()),
                    actor=copy.deepcopy(actor.state_dict()))
        mk = lambda m: torch.optim.Adam(m.parameters(), lr=1e-3)  # noqa: E731
        tr = their.ImplicitQLearning(max_action=1.0, actor=actor, actor_optimizer=mk(actor), q_network=qf,
                                     q_optimizer=mk(qf), v_network=vf, v_optimizer=mk(vf), iql_tau=0.7,
                                     beta=3.0, max_steps=10, discount=0.99, soft_target_update_rate=0.05)
        their.TrainConfig.quantile, their.TrainConfig.sigma = qt, sigma
        steps = []
        for _ in range(3):
            batch = [rnd(B, S), rnd(B, A, s=0.5).clamp(-0.99, 0.99), rnd(B, 1), rnd(B, S),
                     (torch.rand(B, 1, generator=gen) < 0.2).double(), attack_idx]
            tr.train(batch)
            steps.append(dict(batch=batch[:5], qf=copy.deepcopy(qf.state_dict()), vf=copy.deepcopy(vf.state_dict()),
                              actor=copy.deepcopy(actor.state_dict()),
                              q_target=copy.deepcopy(tr.q_target.state_dict())))
        train_cases.append(dict(K=K, deterministic=deterministic, quantile=qt, sigma=sigma, init=init, steps=steps))

    attack_cases = []
    cfg = types.SimpleNamespace(env_name="stub-medium-v2", device="cpu", train_seed=7, corruption_rate=0.3,
                                corruption_range=1.0, corruption_mode="random")
    base = dict(observations=rnd(40, S).numpy(), actions=rnd(40, A).numpy(), rewards=rnd(40).numpy(),
                next_observations=rnd(40, S).numpy(), terminals=np.zeros(40))
    for flags in (dict(corrupt_obs=True, corrupt_acts=True), dict(corrupt_reward=True), dict(corrupt_dynamics=True)):
        c = types.SimpleNamespace(**vars(cfg), **{f: flags.get(f, False) for f in
                                                  ("corrupt_obs", "corrupt_acts", "corrupt_reward", "corrupt_dynamics")})
        data = {k: v.copy() for k, v in base.items()}
        their_attack.dataset_path = "/nonexistent_riql_golden/"
        out, _ = their_attack.attack_dataset(c, data)
        # their draws, re-made in their order: per kind, random(N) for the rows, then uniform(-s, s, shape)
        rng, draws = np.random.RandomState(7), []
        for kind, field, on in (("obs", "observations", c.corrupt_obs), ("action", "actions", c.corrupt_acts),
                                ("reward", "rewards", c.corrupt_reward),
                                ("dynamics", "next_observations", c.corrupt_dynamics)):
            if on:
                rows = rng.random(40) < 0.3
                noise = rng.uniform(-1.0, 1.0, size=(int(rows.sum()), *base[field].shape[1:]))
                draws.append(dict(kind=kind, rows=torch.from_numpy(rows), noise=torch.from_numpy(noise)))
        attack_cases.append(dict(before={k: torch.from_numpy(v) for k, v in base.items()},
                                 after={k: torch.from_numpy(np.asarray(v)) for k, v in out.items()}, draws=draws))

    torch.Tensor.float = _float
    torch.save(dict(commit=COMMIT, S=S, A=A, H=H, B=B, value=value_cases, q=q_cases, train=train_cases,
                    attack=attack_cases), OUT)
    print("wrote", OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
