"""Golden data for the constrained-RLHF Lagrange multipliers (seed 55), made by running the authors' code.

Repository: github.com/tedmoskovitz/ConstrainedRL4LMs, commit 11ac8fe (file
``rl4lms/algorithms/constrained_ppo/constrained_ppo.py``). RL4LMs does not import without its GPU/NLP stack,
so the four multiplier blocks of ``ConstrainedPPO`` are cut from the file (by their first and last lines, see
BLOCKS) and executed verbatim on a stand-in ``self``: the set-up in ``__init__`` (squash function, initial
multipliers, their ``SGD(momentum=0.1)``), the mixed advantages and the Lagrangian loss in ``train`` and the
multiplier update (``clip_grad_norm_``, step, clamp at 0 when unsquashed). The only edit is
``dtype=th.float32`` -> ``th.float64`` so the comparison can be tight. Needs numpy and torch only; from the
repository root:

    REPO=/path/to/ConstrainedRL4LMs PYTHONPATH=src .venv/bin/python tools/golden/make_lagrange_golden.py

(REPO: a git directory of theirs, a clone or the mirror the search tool's ``fetch`` brings.) Writes
tests/data/lagrange_golden.pt: 6 runs of 10 updates each (sigmoid N=2, tanh/equality N=2, unsquashed N=1 with
the clamp at 0 hit, sigmoid N=3 with large violations so the grad-norm clipping acts, fixed N=1, sigmoid N=3
small lr) with, per step, the returns, the advantages, their mixed advantages (before the update), the loss
and the multipliers after the update; and 3 contract cases: their unsquashed mixing with N=3 raises (the
``lagrange[1:]`` shape bug), with N=2 it uses lambda[1] for both columns, and their default squashed init is
one draw shared by all multipliers. Also ``nelder_mead``: their Nelder-Mead loop of
``NelderMeadTrainer.train_and_eval`` (from ``num_vars = simplex.shape[1]`` to its convergence check) and their
``NelderMeadFunc`` class, cut from ``rl4lms/envs/text_generation/training_utils.py`` @ 11ac8fe and run verbatim
on a quadratic with a stand-in trainer whose iteration counter advances once per iteration (``log_simplex``):
3 cases (2 cache tolerances, 2 start simplices), the final simplex and the number of evaluations.
"""
import os
import subprocess
import textwrap
import types

import numpy as np
import torch as th

COMMIT = "11ac8fe"
PATH = "rl4lms/algorithms/constrained_ppo/constrained_ppo.py"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "lagrange_golden.pt")

# (first line, last line) of each block, matched on stripped text
BLOCKS = {
    "init": ("self.constraint_thresholds = th.tensor(", "self.fixed_lagrange = fixed_lagrange"),
    "mix": ("lagrange = self.squash_fn(self.lagrange)",
            "mixed_advantages = kl_advantages + th.sum(self.lagrange[1:] * constraint_advantages, axis=-1)"),
    "loss": ("constraint_violations = rollout_data.ep_constraint_reward_togo.mean(axis=0) - self.constraint_thresholds",
             "lagrange_loss = th.sum(lagrange * constraint_violations.detach())"),
    "update": ("if not self.fixed_lagrange:", "self.lagrange.data = th.clamp(self.lagrange.data, min=0)"),
}


def cut_blocks(src: str) -> dict:
    lines = src.splitlines()
    out = {}
    for name, (first, last) in BLOCKS.items():
        i = next(k for k, l in enumerate(lines) if l.strip() == first)
        j = next(k for k in range(i, len(lines)) if lines[k].strip() == last)
        code = textwrap.dedent("\n".join(lines[i:j + 1])).replace("dtype=th.float32", "dtype=th.float64")
        out[name] = compile(code, f"{PATH}:{name}", "exec")
    return out


class Theirs:
    """A stand-in ``self`` running the cut blocks."""

    def __init__(self, blocks, thresholds, squash, equality, lr, init, fixed, max_grad_norm=0.5):
        self.b = blocks
        self.device = "cpu"
        self.max_grad_norm = max_grad_norm
        exec(blocks["init"], {"th": th, "np": np}, {"self": self, "constraint_thresholds": thresholds,
                                                      "squash_lagrange": squash, "equality_constraints": equality,
                                                      "lagrange_init": init, "lagrange_lr": lr,
                                                      "fixed_lagrange": fixed})

    def mix(self, kl_adv, c_adv):
        ns = {"self": self, "kl_advantages": kl_adv, "constraint_advantages": c_adv}
        exec(self.b["mix"], {"th": th}, ns)
        return ns["mixed_advantages"].detach()

    def update(self, returns):
        ns = {"self": self, "rollout_data": types.SimpleNamespace(ep_constraint_reward_togo=returns)}
        exec(self.b["loss"], {"th": th}, ns)
        exec(self.b["update"], {"th": th}, ns)
        return ns["lagrange_loss"].detach()


RUNS = [  # name, N, squash, equality, lr, init, fixed, returns scale, thresholds
    ("sigmoid", 2, True, False, 1e-2, 0.3, False, 1.0, [0.2, 0.6]),
    ("tanh", 2, True, True, 5e-2, -0.2, False, 1.0, [0.4, 0.1]),
    ("unsquashed_clamp", 1, False, False, 0.5, 0.05, False, 1.0, [-0.5]),
    ("sigmoid_clipped", 3, True, False, 1e-1, 0.0, False, 50.0, [0.0, 1.0, -1.0]),
    ("fixed", 1, True, False, 1e-2, 0.7, True, 1.0, [0.3]),
    ("sigmoid_n3", 3, True, False, 1e-2, -0.4, False, 1.0, [0.5, 0.2, 0.1]),
]


NM_PATH = "rl4lms/envs/text_generation/training_utils.py"
NM_TARGET = np.array([0.3, -0.2])


def nelder_mead_cases(src: str):
    import ast

    tree = ast.parse(src)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "NelderMeadFunc")
    lines = src.splitlines()
    i = next(k for k, l in enumerate(lines) if l.strip() == "num_vars = simplex.shape[1]  # Number of variables")
    j = next(k for k in range(i, len(lines)) if l_strip(lines[k]).startswith("if np.std([func(v) for v in simplex])"))
    loop = textwrap.dedent("\n".join(lines[i:j + 2]))
    cases = []
    for simplex0, iters, tol in (([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], 25, 5e-3),
                                 ([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], 25, 1e-9),
                                 ([[2.0, 1.0], [1.5, -1.0], [-1.0, 0.5]], 15, 5e-3)):
        ns = {"np": np}
        exec(compile(ast.Module([cls], []), NM_PATH, "exec"), ns)
        calls = []

        def evaluate(x, calls=calls):
            calls.append(1)
            return float(((np.asarray(x) - NM_TARGET) ** 2).sum())

        state = {"current_iter": 0}

        class Tracker:
            def log_metrics(self, *a):
                pass

            def log_simplex(self, *a):
                state["current_iter"] += 1

        me = types.SimpleNamespace(_trainer_state=state, _n_iters=iters, _tracker=Tracker(),
                                   evaluate_thresholds=evaluate,
                                   _nelder_mead_config={"alpha": 1.0, "gamma": 2.0, "rho": 0.5, "sigma": 0.5,
                                                        "tol": -1.0})
        NelderMeadFunc = ns["NelderMeadFunc"]
        code = loop.replace("func = NelderMeadFunc(self.evaluate_thresholds)",
                            f"func = NelderMeadFunc(self.evaluate_thresholds, tolerance={tol!r})")
        loc = {**ns, "self": me, "simplex": np.array(simplex0), "NelderMeadFunc": NelderMeadFunc}
        exec(compile(code, NM_PATH + ":train_and_eval", "exec"), loc)  # one namespace: their comprehension
        cases.append({"simplex0": simplex0, "iters": iters, "cache_tol": tol,
                      "simplex": th.tensor(np.array(loc["simplex"]), dtype=th.float64), "evaluations": len(calls)})
    return cases


def l_strip(line):
    return line.strip()


def main():
    repo = os.environ["REPO"]
    src = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:{PATH}"], check=True, capture_output=True,
                         text=True).stdout
    blocks = cut_blocks(src)
    gen = th.Generator().manual_seed(55)
    runs = []
    for name, n, squash, equality, lr, init, fixed, scale, thr in RUNS:
        t = Theirs(blocks, thr, squash, equality, lr, init, fixed)
        steps = []
        for _ in range(10):
            B = 6
            returns = th.randn(B, n, generator=gen, dtype=th.float64) * scale + 0.3
            kl_adv = th.randn(B, generator=gen, dtype=th.float64)
            c_adv = th.randn(B, n, generator=gen, dtype=th.float64)
            mixed = t.mix(kl_adv, c_adv) if squash else None
            loss = t.update(returns)
            steps.append({"returns": returns, "task_adv": kl_adv, "constraint_adv": c_adv, "mixed": mixed,
                          "loss": loss, "multipliers": t.lagrange.detach().clone()})
        if name == "unsquashed_clamp":
            assert any(float(s["multipliers"].min()) == 0.0 for s in steps), "the clamp must be hit"
        runs.append({"name": name, "n": n, "squash": ("tanh" if equality else "sigmoid") if squash else None,
                     "lr": lr, "init": init, "fixed": fixed, "thresholds": thr, "steps": steps})
    # contract 1: unsquashed mixing, N = 3 -> shape error (lagrange[1:] has 2 entries for 3 columns)
    t3 = Theirs(blocks, [0.1, 0.2, 0.3], False, False, 1e-2, 0.5, False)
    try:
        t3.mix(th.zeros(4, dtype=th.float64), th.zeros(4, 3, dtype=th.float64))
        raises_n3 = False
    except RuntimeError:
        raises_n3 = True
    # contract 2: unsquashed mixing, N = 2 uses lambda[1] on both columns, lambda[0] never
    t2 = Theirs(blocks, [0.1, 0.2], False, False, 1e-2, 0.5, False)
    t2.lagrange.data = th.tensor([2.0, 3.0], dtype=th.float64)
    c = th.tensor([[1.0, 10.0]], dtype=th.float64)
    mixed_n2 = t2.mix(th.zeros(1, dtype=th.float64), c)
    # contract 3: default squashed init, one N(0, 0.01) draw shared by all multipliers
    np.random.seed(0)
    t_init = Theirs(blocks, [0.1, 0.2, 0.3], True, False, 1e-2, None, False)
    contract = {"unsquashed_n3_raises": raises_n3, "unsquashed_n2_lambda": [2.0, 3.0], "unsquashed_n2_adv": c,
                "unsquashed_n2_mixed": mixed_n2, "default_init": t_init.lagrange.detach().clone()}
    nm_src = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:{NM_PATH}"], check=True, capture_output=True,
                            text=True).stdout
    nm = nelder_mead_cases(nm_src)
    th.save({"commit": COMMIT, "path": PATH, "runs": runs, "contract": contract, "nelder_mead": nm}, OUT)
    print(f"wrote {OUT}: {len(runs)} runs, {sum(len(r['steps']) for r in runs)} updates")


if __name__ == "__main__":
    main()
