"""DynLin-UCB / LinUCB throughput: rounds per second, gradwise against the authors' loop (issue 19: >= 10x).

    REF_PYTHON=/tmp/bandits-venv/bin/python DLB_REPO=/path/to/their/git/dir \
        python benchmarks/bandit_step.py [--horizon 20000] [--trials 10] [--repeats 3] [--threads N]
                                         [--markdown PATH] [--json PATH]

Workload: the authors' synthetic instance (6 budget arms, sigma 0.01), ``horizon`` rounds. Candidates, per agent
(DynLin-UCB lambda 1 and LinUCB lambda 1):

* ``authors``: their ``DynLinUCBAgent`` / ``LinUCBAgent`` and ``DynLinEnvironment`` (marcomussi/DLB@7fb103ec)
  stepped by their ``Runner``'s loop (pull_arm, env.step, update), one trial. Their code needs numpy < 2, so it
  runs in a subprocess under ``REF_PYTHON`` (a venv with ``numpy<2``), reading ``dynlinucb/`` from ``DLB_REPO``
  (a git directory of theirs) at that commit; without them this row and the ratios are left out;
* ``gradwise step``: :class:`gradwise.bandits.DynLinUCB` / :class:`LinUCB` and ``DynamicalLinearBanditEnv.step``
  stepped by hand (select, step, update), one trial;
* ``gradwise run_trials``: :func:`gradwise.bandits.run_trials` over ``trials`` trials (the noise response
  included); rounds/s counts trial-rounds (trials x horizon / seconds).

Each candidate runs ``repeats`` times, alternating (authors, step, run_trials, authors, ...) so machine noise
falls on all alike; the median time is kept. Ratio = candidate rounds/s / the authors' rounds/s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # harness.py sits beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402

TARGET = 10.0
COMMIT = "7fb103ec"

REF = r'''
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from dynlinucb.experimental.agents import DynLinUCBAgent, LinUCBAgent
from dynlinucb.experimental.environment import DynLinEnvironment
from dynlinucb.core.utils import spectr
T, which = int(sys.argv[2]), sys.argv[3]
A = np.diag([0.2, 0, 0.1]); B = np.diag([0.45, 0, 0.1]); C = np.diag([1.0, 0, 0.1]); D = np.diag([0, 0.5, 0.1])
arms = np.array([[0, .5, 1], [0, 1, .5], [.5, 0, 1], [.5, 1, 0], [1, 0, .5], [1, .5, 0]])
om = np.ones((1, 3))
np.random.seed(1)
noise = np.random.normal(0, 0.01, (1, T, 3)); out_noise = np.random.normal(0, 0.01, (1, T, 3))
rho = max(np.linalg.eigvals(A)); omega = np.linalg.norm(om @ C, 2); theta = np.linalg.norm(om @ D, 2)
u = max(np.linalg.norm(a) for a in arms); b = np.linalg.norm(B, 2); phi = spectr(A)
if which == "dyn":
    agent = DynLinUCBAgent(6, 3, arms, T, 1, rho, omega, theta, u, b, phi, 0.01 ** 2)
else:
    agent = LinUCBAgent(6, 3, arms, T, 1, theta, 1.5, 0.01)
env = DynLinEnvironment(A, B, C, D, 3, 3, 3, T, noise, out_noise, 1, om)
t0 = time.perf_counter()
for t in range(T):  # their Runner._run_simulation, without the bookkeeping
    a = agent.pull_arm()
    r = env.step(a.reshape(3, 1))
    agent.update(r[0, 0])
print(json.dumps({"seconds": time.perf_counter() - t0}))
'''


def _reference_dir() -> tuple[str, str] | None:
    py, repo = os.environ.get("REF_PYTHON"), os.environ.get("DLB_REPO")
    if not py or not repo:
        return None
    tmp = tempfile.mkdtemp()
    subprocess.run(f"git -C {repo} archive {COMMIT} dynlinucb | tar -x -C {tmp}", shell=True, check=True)
    Path(tmp, "ref_loop.py").write_text(REF)
    return py, tmp


def _authors(ref: tuple[str, str], horizon: int, which: str) -> float:
    py, tmp = ref
    out = subprocess.run([py, str(Path(tmp, "ref_loop.py")), tmp, str(horizon), which], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def _agent(which: str, horizon: int, seed: int = 0):
    from gradwise.bandits import DynLinUCB, LinUCB, budget_arms

    arms = budget_arms(3, 1.5, 1.0)
    if which == "dyn":
        return DynLinUCB(arms, horizon, rho=0.2, omega_norm=1.01 ** 0.5, theta_norm=0.26 ** 0.5, u_max=1.25 ** 0.5,
                         b_norm=0.45, phi_a=1.0, noise_var=1e-4, seed=seed)
    return LinUCB(arms, horizon, theta_norm=0.26 ** 0.5, max_norm=1.5, seed=seed)


def _env(horizon: int):
    from gradwise.bandits import SYNTHETIC_INSTANCE as S
    from gradwise.bandits import DynamicalLinearBanditEnv

    return DynamicalLinearBanditEnv(S["A"], S["B"], S["C"], S["D"], 0.01, horizon, seed=0)


def _step(horizon: int, which: str) -> float:
    agent, env = _agent(which, horizon), _env(horizon)
    arms = agent.arms
    t0 = time.perf_counter()
    for _ in range(horizon):
        k = agent.select()
        agent.update(k, env.step(arms[k]))
    return time.perf_counter() - t0


def _batched(horizon: int, which: str, trials: int) -> float:
    from gradwise.bandits import run_trials

    agent, env = _agent(which, horizon), _env(horizon)
    t0 = time.perf_counter()
    run_trials(agent, env, trials)
    return time.perf_counter() - t0


def run(horizon: int, trials: int, repeats: int) -> dict:
    ref = _reference_dir()
    load = harness.load_average()
    rows, notes = [], []
    if ref is None:
        notes.append("REF_PYTHON / DLB_REPO not set: the authors' loop was not timed, no ratios")
    for which, name in (("dyn", "DynLin-UCB (lambda 1)"), ("lin", "LinUCB (lambda 1)")):
        times: dict[str, list[float]] = {"authors": [], "step": [], "run_trials": []}
        _step(min(horizon, 500), which)  # warm-up
        for _ in range(repeats):
            if ref is not None:
                times["authors"].append(_authors(ref, horizon, which))
            times["step"].append(_step(horizon, which))
            times["run_trials"].append(_batched(horizon, which, trials))
        med = {k: statistics.median(v) for k, v in times.items() if v}
        rate = {"authors": horizon / med["authors"] if "authors" in med else None,
                "step": horizon / med["step"], "run_trials": trials * horizon / med["run_trials"]}
        ratio = {k: (rate[k] / rate["authors"] if rate["authors"] else None) for k in ("step", "run_trials")}
        rows.append(dict(agent=name, seconds=med, rounds_per_s=rate, ratio=ratio,
                         verdict=None if ratio["run_trials"] is None else
                         ("PASS" if ratio["run_trials"] >= TARGET else "MISS")))
    return dict(rows=rows, notes=notes, horizon=horizon, trials=trials, repeats=repeats,
                **harness.cpu_run_fields(load))


def to_markdown(res: dict) -> str:
    def f(x, fmt):
        return "" if x is None else format(x, fmt)

    lines = [
        "## Bandit agents: rounds per second",
        "",
        "Written by `python benchmarks/bandit_step.py --markdown PATH` (issue 19); every number below is from that "
        "one run.",
        "",
        *harness.cpu_run_lines(res),
        f"- Workload: the authors' synthetic instance (6 budget arms, sigma 0.01), {res['horizon']:,} rounds. "
        "`authors`: marcomussi/DLB@7fb103ec's agent and environment stepped by their Runner's loop (numpy < 2, in a "
        "subprocess); `step`: gradwise's agent and `DynamicalLinearBanditEnv.step` stepped by hand; `run_trials`: "
        f"`gradwise.bandits.run_trials` over {res['trials']} trials (trial-rounds per second, the noise response "
        "included)",
        f"- Method: {res['repeats']} alternating repeats per candidate, median time; ratio = rounds/s over the "
        f"authors'; target: run_trials >= {TARGET:g}x (PASS/MISS)",
        "",
        *harness.markdown_table(
            ("agent", "authors rounds/s", "step rounds/s", "step ratio", "run_trials rounds/s", "run_trials ratio",
             "target"),
            ((r["agent"], f(r["rounds_per_s"]["authors"], ",.0f"), f(r["rounds_per_s"]["step"], ",.0f"),
              f(r["ratio"]["step"], ".1f"), f(r["rounds_per_s"]["run_trials"], ",.0f"),
              f(r["ratio"]["run_trials"], ".1f"), r["verdict"] or "") for r in res["rows"])),
    ]
    busy = harness.busy_note(res["loadavg"])
    for note in res["notes"] + ([busy] if busy else []):
        lines += ["", f"Note: {note}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--horizon", type=int, default=20000)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    harness.add_output_args(p)
    args = p.parse_args(argv)
    harness.apply_threads(args.threads)
    res = run(args.horizon, args.trials, args.repeats)
    for r in res["rows"]:
        print(r["agent"], {k: None if v is None else round(v) for k, v in r["rounds_per_s"].items()},
              {k: None if v is None else round(v, 1) for k, v in r["ratio"].items()}, r["verdict"])
    for note in res["notes"]:
        print("note:", note)
    harness.save(res, args, "bandit_step", to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
