"""RL step-time benchmark: one ODICE orthogonal-gradient update, or one RIQL update, with gradwise vs the
authors' own update.

    python benchmarks/rl_step.py [--obs 17] [--hidden 256] [--batch 256] [--rounds 15] [--reps 3]
                                 [--threads N] [--markdown PATH] [--json PATH]
    python benchmarks/rl_step.py riql [--obs 17] [--act 6] [--critics 5] [--hidden 256] [--batch 256] ...

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

``riql``: the authors' ``ImplicitQLearning.train`` from YangRui2015/RIQL at cc07d812 (``RIQL.py`` run
unchanged from a temporary copy with ``d4rl``/``gym``/``pyrallis``/``wandb`` stubbed as in
``tools/golden/make_riql_golden.py``; checkout at ``$RIQL_REPO``) on their ``VectorizedQ`` (``--critics``
critics, one batched matmul per layer), ``ValueFunction`` and ``DeterministicPolicy`` with their Adam (lr
3e-4), against ``gradwise.arena.riql_runs.train_step`` (the same update order and network sizes, the critics as
one ``EnsembleMLP``, :mod:`gradwise.rl`'s losses, foreach Adam and ``polyak_update``, no ``.item()``), float32,
their defaults (quantile 0.25, sigma 1). Target <= 1.1; ``--markdown`` writes the section ``rl_step_riql``.
"""
from __future__ import annotations

import copy
import dataclasses
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
RIQL_TARGET = 1.1
RIQL_REF = "authors' ImplicitQLearning.train"
RIQL_REPO = os.environ.get("RIQL_REPO", "/work/.mirror/YangRui2015+RIQL/repo")


class _Policy(nn.Module):
    def __init__(self, obs, act):
        super().__init__()
        self.lin = nn.Linear(obs, act)

    def forward(self, x):
        return torch.distributions.Independent(torch.distributions.Normal(self.lin(x), 1.0), 1)


def _ratio_rows(cands: dict, ref_name: str, target: float) -> list[dict]:
    """Median ms/step of each candidate that ran, its ratio to ``ref_name``'s and PASS/MISS against ``target``."""
    timed = {name: statistics.median(c.samples_ms) for name, c in cands.items() if not c.error}
    ref = timed[ref_name]
    return [dict(name=name, ms=ms, ratio=ms / ref,
                 verdict="" if name == ref_name else ("PASS" if ms / ref <= target else "MISS"))
            for name, ms in timed.items()]


def _table(res: dict) -> list[str]:
    """The markdown table of ``res["rows"]`` and its notes."""
    return [*harness.markdown_table(("step", "ms", "ratio to authors'", "target"),
                                    ((r["name"], f"{r['ms']:.3f}", f"{r['ratio']:.2f}", r["verdict"])
                                     for r in res["rows"]), left=(0, 3)),
            *[line for note in res["notes"] for line in ("", f"Note: {note}.")]]


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
    rows = _ratio_rows(cands, REF, TARGET)
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
        *_table(res),
    ]
    return "\n".join(lines) + "\n"


DEFAULTS = dict(obs=17, hidden=256, batch=256, rounds=15, reps=3)


def _riql_authors():
    golden = str(Path(__file__).resolve().parents[1] / "tools" / "golden")
    sys.path.insert(0, golden)
    import make_riql_golden as mk
    from authors_code import extract

    extract(RIQL_REPO, mk.COMMIT, ["RIQL.py", "RIQL_config.py", "attack.py"])
    before = {n: sys.modules.get(n) for n in ("d4rl", "gym", "pyrallis", "wandb", "tqdm")}
    mk._stubs()
    try:
        import RIQL
    finally:  # stubs (no __spec__) left in sys.modules break later find_spec calls: take them out again
        for n, m in before.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return RIQL


def run_riql(obs: int, act: int, critics: int, hidden: int, batch: int, rounds: int, reps: int, warmup: int = 3,
             seed: int = 0) -> dict:
    from gradwise.arena.riql_runs import VARIANTS, make_agent, train_step

    their = _riql_authors()
    load = harness.load_average()
    torch.manual_seed(seed)
    qf = their.VectorizedQ(obs, act, hidden_dim=hidden, num_critics=critics)
    vf, actor = their.ValueFunction(obs, hidden_dim=hidden), their.DeterministicPolicy(obs, act, 1.0, hidden_dim=hidden)
    mk = lambda m: torch.optim.Adam(m.parameters(), lr=3e-4)  # noqa: E731
    trainer = their.ImplicitQLearning(max_action=1.0, actor=actor, actor_optimizer=mk(actor), q_network=qf,
                                      q_optimizer=mk(qf), v_network=vf, v_optimizer=mk(vf))
    agent = make_agent(dataclasses.replace(VARIANTS["RIQL"], critics=critics), obs, act, hidden=hidden)
    g = torch.Generator().manual_seed(seed)
    s, a = torch.randn(batch, obs, generator=g), torch.rand(batch, act, generator=g) * 2 - 1
    s2, r = s + 0.1 * torch.randn(batch, obs, generator=g), torch.randn(batch, generator=g)
    d = (torch.rand(batch, generator=g) < 0.05).float()
    attack = (torch.rand(batch, generator=g) < 0.3).float()
    theirs = [s, a, r[:, None], s2, d[:, None], attack]
    ours = (s[None], a[None], r[None], s2[None], d[None])
    name = f"gradwise train_step ({critics} critics, EnsembleMLP)"
    cands = {RIQL_REF: harness.Candidate(RIQL_REF, lambda: trainer.train(theirs)),
             name: harness.Candidate(name, lambda: train_step(agent, *ours))}
    notes = [n for n in (harness.busy_note(load),) if n]
    harness.interleave(cands, rounds=rounds, steps=reps, warmup=warmup, seed=seed, mode="shuffled", notes=notes)
    rows = _ratio_rows(cands, RIQL_REF, RIQL_TARGET)
    n_params = sum(p.numel() for m in (qf, vf, actor) for p in m.parameters())
    return dict(rows=rows, notes=notes, obs=obs, act=act, critics=critics, hidden=hidden, batch=batch,
                params=n_params, rounds=rounds, reps=reps, warmup=warmup, **harness.cpu_run_fields(load))


def riql_to_markdown(res: dict) -> str:
    lines = [
        "## RL step time (RIQL)",
        "",
        "Written by `python benchmarks/rl_step.py riql --threads 1 --markdown PATH`; every number below is from "
        "that one run.",
        "",
        *harness.cpu_run_lines(res),
        f"- Workload: float32, obs {res['obs']}, action {res['act']}, batch {res['batch']}; {res['critics']} critics, "
        f"value net and deterministic actor of {res['hidden']} x 2 hidden units ({res['params']:,} parameters in "
        "all); one step = value (0.25-quantile expectile) update, Huber Q update, Polyak target, AWR policy step",
        f"- Method: {res['warmup']} warm-up rounds, then {res['rounds']} rounds x {res['reps']} steps of each "
        "candidate in shuffled order; median ms/step; ratio = median / median of the authors' train; target <= "
        f"{RIQL_TARGET} (PASS/MISS)",
        "",
        *_table(res),
    ]
    return "\n".join(lines) + "\n"


RIQL_DEFAULTS = dict(obs=17, act=6, critics=5, hidden=256, batch=256, rounds=15, reps=3)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["riql"]:
        if argv is None:
            harness.reexec_with_malloc_env()
        return harness.int_options_main(args[1:], "RL step-time benchmark: one RIQL update, gradwise vs the authors'",
                                        RIQL_DEFAULTS, run_riql, riql_to_markdown, "rl_step_riql",
                                        lambda r: f"{r['name']:48s} {r['ms']:8.3f} ms  x{r['ratio']:.2f}  "
                                                  f"{r['verdict']}")
    return harness.int_options_main(argv, __doc__.splitlines()[0], DEFAULTS, run, to_markdown, "rl_step",
                                    lambda r: f"{r['name']:36s} {r['ms']:8.3f} ms  x{r['ratio']:.2f}  {r['verdict']}")


if __name__ == "__main__":
    sys.exit(main())
