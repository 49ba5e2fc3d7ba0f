"""RL step-time benchmark: one ODICE orthogonal-gradient update with gradwise vs the authors' own update.

    python benchmarks/rl_step.py [--obs 17] [--hidden 256] [--batch 256] [--rounds 15] [--reps 3]
                                 [--threads N] [--markdown PATH] [--json PATH]

The authors' update is their ``ODICE.orthogonal_true_g_update`` from maoliyuan/ODICE-Pytorch at 1692507c,
run unchanged from a temporary copy (``tools/golden/authors_code.extract``; ``wandb`` stubbed; their
checkout at ``$ODICE_REPO``, default the local mirror): value forward on s and s', target forward, three
backward passes into ``.grad``, the flat concatenation and ``c`` via ``.item()``, Adam, EMA target update
and their weighted-BC policy step. The gradwise step does the same work with
``odice_value_backward`` (no ``.item()``), ``torch.optim.Adam``, ``polyak_update`` and
``odice_policy_weights``. Both use their ``TwinV`` (2 x ``--hidden`` x 2 layers, layer norm: their D4RL
config) in float32 and the same tiny linear Gaussian policy, so the value update dominates. Timed
interleaved in one process (see harness.py); median per step, ratio to the authors' update; target <= 1.2
(PASS/MISS). ``--markdown`` writes the section ``rl_step`` of that file.
"""
from __future__ import annotations

import copy
import os
import statistics
import sys
import types
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # harness.py sits beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

TARGET = 1.2
REF = "authors' orthogonal_true_g_update"
REPO = os.environ.get("ODICE_REPO", "/work/.mirror/maoliyuan+ODICE-Pytorch/repo")


class _Policy(nn.Module):
    def __init__(self, obs, act):
        super().__init__()
        self.lin = nn.Linear(obs, act)

    def forward(self, x):
        return torch.distributions.Independent(torch.distributions.Normal(self.lin(x), 1.0), 1)


def _authors():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "golden"))
    from authors_code import extract
    extract(REPO, "1692507c", ["odice.py", "util.py", "value_functions.py"])
    # their module imports wandb at the top: a stub serves that import and is taken out again, since a stub
    # left in sys.modules (no __spec__) breaks every later find_spec("wandb"), e.g. transformers' trainer import
    stub = "wandb" not in sys.modules
    if stub:
        sys.modules["wandb"] = types.ModuleType("wandb")
    try:
        import odice
        import value_functions
    finally:
        if stub:
            del sys.modules["wandb"]
    return odice, value_functions


def run(obs: int, hidden: int, batch: int, rounds: int, reps: int, warmup: int = 3, seed: int = 0) -> dict:
    from gradwise.rl import odice_policy_weights, odice_value_backward
    from gradwise.rl._common import polyak_update

    their, vfs = _authors()
    load = harness.load_average()
    act = 6
    torch.manual_seed(seed)
    base_v, base_pi = vfs.TwinV(obs, layer_norm=True, hidden_dim=hidden, n_hidden=2), _Policy(obs, act)
    g = torch.Generator().manual_seed(seed)
    s, a = torch.randn(batch, obs, generator=g), torch.randn(batch, act, generator=g)
    s2, r = s + 0.1 * torch.randn(batch, obs, generator=g), torch.randn(batch, generator=g)
    d = (torch.rand(batch, generator=g) < 0.05).float()
    lam, eta, lr, beta = 0.6, 1.0, 2e-4, 0.005

    agent = their.ODICE(copy.deepcopy(base_v), copy.deepcopy(base_pi), max_steps=10, Lambda=lam, eta=eta,
                        use_twin_v=True, value_lr=lr, policy_lr=lr, beta=beta)
    vf, pi = copy.deepcopy(base_v), copy.deepcopy(base_pi)
    target = copy.deepcopy(vf).requires_grad_(False)
    v_opt = torch.optim.Adam(vf.parameters(), lr=lr)
    pi_opt = torch.optim.Adam(pi.parameters(), lr=lr, weight_decay=1e-5)
    both = lambda m, x: m.both(x)  # noqa: E731

    def gradwise_step():
        v_opt.zero_grad(set_to_none=True)
        out = odice_value_backward(vf, target, s, s2, r, d, lam=lam, eta=eta, value_fn=both)
        v_opt.step()
        polyak_update(target, vf, beta)
        w = odice_policy_weights(out.residual)
        loss = torch.mean(w * -pi(s).log_prob(a))
        pi_opt.zero_grad(set_to_none=True)
        loss.backward()
        pi_opt.step()

    cands = {REF: harness.Candidate(REF, lambda: agent.orthogonal_true_g_update(s, a, s2, r, d)),
             "gradwise odice_value_backward": harness.Candidate("gradwise odice_value_backward", gradwise_step)}
    notes = [n for n in (harness.busy_note(load),) if n]
    harness.interleave(cands, rounds=rounds, steps=reps, warmup=warmup, seed=seed, mode="shuffled", notes=notes)
    timed = {name: statistics.median(c.samples_ms) for name, c in cands.items() if not c.error}
    ref = timed[REF]
    rows = [dict(name=name, ms=ms, ratio=ms / ref,
                 verdict="" if name == REF else ("PASS" if ms / ref <= TARGET else "MISS"))
            for name, ms in timed.items()]
    n_params = sum(p.numel() for p in base_v.parameters())
    return dict(rows=rows, notes=notes, obs=obs, hidden=hidden, batch=batch, params=n_params, rounds=rounds,
                reps=reps, warmup=warmup, **harness.cpu_run_fields(load))


def to_markdown(res: dict) -> str:
    lines = [
        "## RL step time (ODICE)",
        "",
        "Written by `python benchmarks/rl_step.py --threads 1 --markdown PATH`; every number below is from that one run.",
        "",
        *harness.cpu_run_lines(res),
        f"- Workload: the authors' float32 TwinV ({res['obs']}-{res['hidden']}-{res['hidden']}-1 x 2 heads, layer "
        f"norm; {res['params']:,} parameters), batch {res['batch']}; one step = their orthogonal-gradient value "
        "update, Adam, EMA target update and a weighted-BC step of a tiny linear Gaussian policy",
        f"- Method: {res['warmup']} warm-up rounds, then {res['rounds']} rounds x {res['reps']} steps of each "
        "candidate in shuffled order; median ms/step; ratio = median / median of the authors' update; target <= "
        f"{TARGET} (PASS/MISS)",
        "",
        *harness.markdown_table(("step", "ms", "ratio to authors'", "target"),
                                ((r["name"], f"{r['ms']:.3f}", f"{r['ratio']:.2f}", r["verdict"])
                                 for r in res["rows"]), left=(0, 3)),
        *[line for note in res["notes"] for line in ("", f"Note: {note}.")],
    ]
    return "\n".join(lines) + "\n"


DEFAULTS = dict(obs=17, hidden=256, batch=256, rounds=15, reps=3)


def main(argv: list[str] | None = None) -> int:
    return harness.int_options_main(argv, __doc__.splitlines()[0], DEFAULTS, run, to_markdown, "rl_step",
                                    lambda r: f"{r['name']:36s} {r['ms']:8.3f} ms  x{r['ratio']:.2f}  {r['verdict']}")


if __name__ == "__main__":
    sys.exit(main())
