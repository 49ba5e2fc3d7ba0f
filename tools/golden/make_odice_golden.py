"""Golden ODICE value updates, made by running the authors' ``ODICE`` class.

Source: github.com/maoliyuan/ODICE-Pytorch at commit 1692507c (``odice.py``, ``util.py``,
``value_functions.py``, extracted with ``git show`` into a temporary folder by ``authors_code.extract``).
Their methods ``orthogonal_true_g_update``, ``true_g_update`` and ``semi_g_update`` run unchanged on
seeded tiny float64 networks (their ``ValueFunction``/``TwinV`` built with their ``mlp``, converted
with ``.double()``) with their Adam and their EMA target update. Stubbed is only what is not math:
``wandb`` (an empty module). What their code keeps inside is read without changing it:

* ``torch`` inside ``odice.py`` is a proxy that forwards every name to torch and records the results
  of ``torch.dot`` (``<g_f, g_b>`` then ``<g_f, g_f>``, so ``c = dot1 / max(dot2, 1e-10)``) and of
  ``torch.clamp_max`` (the policy weights);
* a step pre-hook on their value Adam records the gradients the step is about to apply;
* ``f_star`` is wrapped to record the forward residual (their ``pi_residual``);
* ``terminals`` is a float64 tensor whose ``.float()`` returns it unchanged: their
  ``(1. - terminals.float()) * self.discount`` would otherwise round the discount to float32
  (``float32(0.99)``), a 1e-8 relative change the issue asks gradwise not to copy.

Cases (7 x 3 steps): V and TwinV, chi2 and KL, eta != 1, the flat-f* guard (rewards so low that every
forward residual is below -2 with chi2: ``g_f = 0``), the true- and semi-gradient updates.

    ODICE_REPO=/work/.mirror/maoliyuan+ODICE-Pytorch/repo PYTHONPATH=src python tools/golden/make_odice_golden.py

Writes tests/data/odice_golden.pt (float64).
"""
import os
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from authors_code import extract  # noqa: E402

REPO = os.environ.get("ODICE_REPO", "/work/.mirror/maoliyuan+ODICE-Pytorch/repo")
COMMIT = "1692507c"
OUT = Path(__file__).parents[2] / "tests" / "data" / "odice_golden.pt"

CASES = [
    dict(name="v_chi2_orth", twin=False, f="Pearson_chi_square", mode="orthogonal", lam=0.6, eta=1.0, ln=False, rshift=0.0),
    dict(name="twin_chi2_orth_ln", twin=True, f="Pearson_chi_square", mode="orthogonal", lam=0.8, eta=1.0, ln=True, rshift=0.0),
    dict(name="v_kl_orth_eta", twin=False, f="Reverse_KL", mode="orthogonal", lam=0.6, eta=0.5, ln=False, rshift=0.0),
    dict(name="twin_kl_orth_eta", twin=True, f="Reverse_KL", mode="orthogonal", lam=0.7, eta=1.5, ln=False, rshift=0.0),
    dict(name="v_chi2_flat_guard", twin=False, f="Pearson_chi_square", mode="orthogonal", lam=0.6, eta=1.0, ln=False, rshift=-10.0),
    dict(name="v_chi2_true", twin=False, f="Pearson_chi_square", mode="true", lam=0.6, eta=1.0, ln=False, rshift=0.0),
    dict(name="twin_chi2_semi", twin=True, f="Pearson_chi_square", mode="semi", lam=0.6, eta=1.0, ln=False, rshift=0.0),
]
S, H, B, STEPS = 3, 8, 16, 3


class _KeepF64(torch.Tensor):
    def float(self):  # their terminals.float(): keep float64
        return self.as_subclass(torch.Tensor)


class _Policy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(S, 1)

    def forward(self, obs):
        return torch.distributions.Normal(self.lin(obs).squeeze(-1), 1.0)


def main():
    extract(REPO, COMMIT, ["odice.py", "util.py", "value_functions.py"])
    sys.modules["wandb"] = types.ModuleType("wandb")
    import odice as their
    from value_functions import TwinV, ValueFunction

    rec = {}

    class Proxy:
        def __getattr__(self, name):
            return getattr(torch, name)

        def dot(self, a, b):
            out = torch.dot(a, b)
            rec.setdefault("dots", []).append(out.detach().clone())
            return out

        def clamp_max(self, x, m):
            out = torch.clamp_max(x, m)
            rec["weights"] = out.detach().clone()
            return out

    their.torch = Proxy()
    f_star = their.f_star

    def f_star_rec(residual, name="Pearson_chi_square"):
        rec.setdefault("f_star_inputs", []).append(residual.detach().clone())
        return f_star(residual, name)
    their.f_star = f_star_rec

    cases = []
    for k, case in enumerate(CASES):
        torch.manual_seed(100 + k)
        net = (TwinV if case["twin"] else ValueFunction)(S, layer_norm=case["ln"], hidden_dim=H, n_hidden=2).double()
        init = {n: t.clone() for n, t in net.state_dict().items()}
        agent = their.ODICE(net, _Policy().double(), max_steps=10, f_name=case["f"], Lambda=case["lam"],
                            eta=case["eta"], use_twin_v=case["twin"], value_lr=1e-2, policy_lr=1e-3,
                            discount=0.99, beta=0.05)
        grads_seen = []
        agent.v_optimizer.register_step_pre_hook(
            lambda opt, a, kw: grads_seen.append([p.grad.detach().clone() for p in agent.vf.parameters()]))
        update = {"orthogonal": agent.orthogonal_true_g_update, "true": agent.true_g_update,
                  "semi": agent.semi_g_update}[case["mode"]]
        gen = torch.Generator().manual_seed(200 + k)
        steps = []
        for _ in range(STEPS):
            obs = torch.randn(B, S, generator=gen, dtype=torch.float64)
            next_obs = obs + 0.1 * torch.randn(B, S, generator=gen, dtype=torch.float64)
            act = torch.randn(B, 1, generator=gen, dtype=torch.float64).squeeze(-1)
            reward = torch.randn(B, generator=gen, dtype=torch.float64) + case["rshift"]
            done = (torch.rand(B, generator=gen) < 0.2).to(torch.float64)
            rec.clear()
            grads_seen.clear()
            update(obs, act, next_obs, reward, done.as_subclass(_KeepF64))
            step = dict(obs=obs, next_obs=next_obs, reward=reward, done=done,
                        grads=grads_seen[0], residual=rec["f_star_inputs"][0], weights=rec["weights"],
                        params=[p.detach().clone() for p in agent.vf.parameters()],
                        target_params=[p.detach().clone() for p in agent.vf_target.parameters()])
            if case["mode"] == "orthogonal":
                fb, ff = rec["dots"]
                step["c"] = fb / max(ff, torch.tensor(1e-10, dtype=ff.dtype))
            steps.append(step)
        cases.append(dict(case, init=init, steps=steps))
        print(case["name"], [float(s.get("c", float("nan"))) for s in steps])
    torch.save(dict(commit=COMMIT, S=S, H=H, B=B, value_lr=1e-2, beta=0.05, discount=0.99, cases=cases), OUT)
    print("wrote", OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
