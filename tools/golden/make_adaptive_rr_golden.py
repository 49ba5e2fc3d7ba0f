"""Golden data for Adaptive RR (critic FAU and the replay-ratio switch), made by running the authors' code.

Repository: github.com/Guozheng-Ma/Adaptive-Replay-Ratio, commit a1539c6a667e2c2161a37424c7a55fcc3b191cd9, files
``drqv2_adapt_rr.py`` (``Critic.forward_with_FAU``) and ``train_adapt_rr.py`` (the adaptive-RR block of
``Workspace.train``). Their files are not part of this repository: point REPO at a git directory of theirs (a
clone, or the mirror the search tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/Adaptive-Replay-Ratio .venv/bin/python tools/golden/make_adaptive_rr_golden.py

``drqv2_adapt_rr.py`` is imported from a temporary folder with stubs for ``hydra`` and their ``utils`` (the
critic only calls ``utils.weight_init`` at construction; the weights are then overwritten with seeded float64
values), and ``Critic.forward_with_FAU`` gives the FAU of seeded critics on seeded inputs (the ReLU outputs of
their four hidden layers are recorded with hooks, so the test can feed them to ``fraction_active_units``). The
block of ``train_adapt_rr.py`` from ``check_freq = self.cfg.check_freq`` to the reset after the switch is cut
from the source and run as written (in a temporary working directory: it writes ``changeRR.txt``) on a namespace
with their agent's counters, over a stream of 400 episodes whose per-update FAU values come from a seeded
random walk that flattens out; the switch episode and the agent's counters at every episode are stored.
Writes tests/data/adaptive_rr_golden.pt.
"""
import contextlib
import io
import os
import sys
import tempfile
import textwrap
import types

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_code import extract  # noqa: E402

COMMIT = "a1539c6a667e2c2161a37424c7a55fcc3b191cd9"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data",
                   "adaptive_rr_golden.pt")


def schedule_block(src: str) -> str:
    lines = src.splitlines()
    i = next(k for k, l in enumerate(lines) if "check_freq = self.cfg.check_freq" in l)
    j = next(k for k, l in enumerate(lines) if k > i and "# log stats" in l)
    return textwrap.dedent("\n".join(lines[i:j]))


def main() -> None:
    tmp = extract(os.environ["REPO"], COMMIT, ["drqv2_adapt_rr.py", "train_adapt_rr.py"])
    sys.modules["hydra"] = types.ModuleType("hydra")
    utils = types.ModuleType("utils")
    utils.weight_init = lambda m: None
    sys.modules["utils"] = utils
    import drqv2_adapt_rr as theirs
    g = torch.Generator().manual_seed(216)
    golden = {"fau": {}}
    for case, (repr_dim, feat, hid, act, b, shift) in enumerate([(32, 16, 24, 2, 20, 0.0), (40, 8, 32, 3, 12, 0.5),
                                                                 (24, 12, 16, 1, 30, -0.7)]):
        critic = theirs.Critic(repr_dim, (act,), feat, hid).double()
        with torch.no_grad():
            for p in critic.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
            for seq in (critic.Q1, critic.Q2):  # bias the hidden layers so the fraction is not near 1/2
                seq[0].bias.add_(shift)
                seq[2].bias.add_(shift)
        outs = []
        hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o.detach().clone()))
                 for m in critic.modules() if isinstance(m, nn.ReLU)]
        obs = torch.randn(b, repr_dim, generator=g, dtype=torch.float64)
        a = torch.rand(b, act, generator=g, dtype=torch.float64) * 2 - 1
        _, _, rate = critic.forward_with_FAU(obs, a)
        for h in hooks:
            h.remove()
        golden["fau"][f"case{case}"] = {"activations": outs, "rate": float(rate)}

    block = schedule_block(open(os.path.join(tmp, "train_adapt_rr.py")).read())
    cfg = types.SimpleNamespace(check_freq=50, Phi_gap=0.001)
    for name, (check_freq, gap, start_episode) in {"default": (50, 0.001, 0), "short": (7, 0.004, 3)}.items():
        cfg = types.SimpleNamespace(check_freq=check_freq, Phi_gap=gap)
        agent = types.SimpleNamespace(update_every_steps=2, replay_ratio=1, cal_init_Phi=False, init_Phi=0.0,
                                      last_average_Phi=0.0, average_Phi=0.0, sum_Phi=0.0, sum_Phi_count=0)
        me = types.SimpleNamespace(cfg=cfg, agent=agent, _global_episode=0, global_frame=0)
        walk, level, faus, trace = 0.0, 0.6, [], []
        cwd = os.getcwd()
        os.chdir(tempfile.mkdtemp())
        try:
            for ep in range(400):
                per_episode = []
                if ep >= start_episode:  # updates start after start_episode episodes (seed frames)
                    for _ in range(10):
                        walk = 0.97 * walk + float(torch.randn((), generator=g, dtype=torch.float64)) * 0.02
                        level = level - 0.002 * (level - 0.3)
                        fau = level + walk * (0.3 if ep > 150 else 1.0) * 0.05
                        per_episode.append(fau)
                        agent.sum_Phi += fau  # their update_critic
                        agent.sum_Phi_count += 1
                        if not agent.cal_init_Phi:
                            agent.init_Phi = fau
                            agent.last_average_Phi = fau
                            agent.cal_init_Phi = True
                faus.append(per_episode)
                me._global_episode += 1
                metrics = None if not agent.cal_init_Phi else {}
                if metrics is not None:
                    with contextlib.redirect_stdout(io.StringIO()):
                        exec(block, {"self": me})
                trace.append([agent.update_every_steps, agent.replay_ratio, agent.last_average_Phi])
        finally:
            os.chdir(cwd)
        golden[f"schedule_{name}"] = {"check_freq": check_freq, "phi_gap": gap, "faus": faus,
                                      "trace": torch.tensor(trace, dtype=torch.float64)}
    torch.save(golden, OUT)
    print("wrote", os.path.normpath(OUT), {k: v["trace"][:, 1].argmax().item() for k, v in golden.items()
                                           if k.startswith("schedule")})


if __name__ == "__main__":
    main()
