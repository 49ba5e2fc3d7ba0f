"""Golden data for DynLinUCB / LinUCB, made by running the authors' code.

Repository: github.com/marcomussi/DLB, commit 7fb103ec ("Update README.rst"). Their code needs numpy < 2 (and
tqdm for their ``Runner``); make a separate venv for it and run from the repository root:

    python3 -m venv /tmp/bandits-venv && /tmp/bandits-venv/bin/pip install "numpy<2" tqdm
    REPO=/path/to/their/git/dir REF_PYTHON=/tmp/bandits-venv/bin/python \
        .venv/bin/python tools/golden/make_dynlinucb_golden.py

It extracts ``dynlinucb/`` at that commit with ``git archive`` into a temporary folder and runs, under
``REF_PYTHON``, the driver below: the setup of their ``scripts/main.py`` (noise from ``np.random.seed(1)``,
``np.random.normal(0, sigma, (n_trials, T, n))`` then the same for the output noise; arms from the budget
permutations, ``np.unique``; rho = max eigenvalue of A, omega = ||1^T C||, theta = ||1^T D||, u = max arm norm,
b = ||B||_2, phi = their ``spectr(A)``) and their ``Runner`` loop, with the environment's ``step`` wrapped to keep
the rewards. Agents: ``DynLinUCBAgent`` (lambda 1, their "DynLin-UCB (lambda=1)"), ``LinearAgent(dynlinucb=True)``
with lambda = log T and delta = 1/T, ``LinUCBAgent`` (lambda 1, max_global 1.5). Runs (T = 10,000):

* the synthetic instance, sigma 0.01, trials 0 and 1 (6 runs); sigma 0.1, trial 0 (3 runs);
* a seeded random instance (n 3, p = m 2, A with spectral radius 0.7, 5 random arms), sigma 0.05, trial 0, with
  lambda 2.5 for DynLinUCBAgent and 0.5 for LinUCBAgent (3 runs).

Each run keeps the arm index of every round (int8), the final ``hat_h_vect`` and ``V_t``, the sum and first 8 of
the rewards (the test replays the rewards from the same NumPy noise, so they are not stored), and the constants.
Contract cases: their ``t_estimate`` epoch lengths for rho 0.2, 0.7, 0.95 (T 10,000), their ``_beta_t`` of
``LinearAgent(dynlinucb=True)`` and ``_beta_t_fun_linucb`` at several rounds, and a 300-round run with rho 1e-7
(their every-round branch) fed seeded rewards. Writes tests/data/dynlinucb_golden.pt.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

COMMIT = "7fb103ec"
here = os.path.dirname(os.path.abspath(__file__))
repo = os.environ["REPO"]
ref_python = os.environ.get("REF_PYTHON", "/tmp/bandits-venv/bin/python")
tmp = tempfile.mkdtemp()
subprocess.run(f"git -C {repo} archive {COMMIT} dynlinucb | tar -x -C {tmp}", shell=True, check=True)

DRIVER = r'''
import json, math, sys, itertools
import numpy as np
sys.path.insert(0, sys.argv[1])
from dynlinucb.experimental.agents import DynLinUCBAgent, LinUCBAgent, LinearAgent
from dynlinucb.experimental.environment import DynLinEnvironment
from dynlinucb.experimental.runner import Runner
from dynlinucb.core.utils import spectr

T = 10000
out = {"runs": [], "contract": {}}

def budget_arms(p, total, max_each, min_each):
    ll = []
    for pi in itertools.permutations(range(p)):
        budget = total - p * min_each
        u = np.ones(p) * min_each
        for i in range(p):
            available = max_each - u[i]
            delta = min(budget, available)
            u[pi[i]] = u[pi[i]] + delta
            budget = budget - delta
        ll.append(np.copy(u))
    return np.unique(np.array(ll), axis=0)

def instance(A, B, C, D, arms, sigma, n_trials, noise_seed, lam_dyn, lam_lin, max_global, tag):
    n, p, m = A.shape[0], B.shape[1], C.shape[0]
    om = np.ones((1, p))
    np.random.seed(noise_seed)
    noise = np.random.normal(0, sigma, (n_trials, T, n))
    out_noise = np.random.normal(0, sigma, (n_trials, T, m))
    rho = max(np.linalg.eigvals(A))
    omega = np.linalg.norm(om @ C, 2)
    u_val = max([np.linalg.norm(np.array(u), 2) for u in arms])
    b_val = np.linalg.norm(B, 2)
    phi = spectr(A)
    theta = np.linalg.norm(om @ D, 2)
    K = arms.shape[0]
    consts = dict(rho=float(np.real(rho)), omega=float(omega), u_val=float(u_val), b_val=float(b_val),
                  phi=float(phi), theta=float(theta), sigma_sq=float(sigma ** 2))
    agents = {
        "dynlinucb_lam1": lambda: DynLinUCBAgent(K, p, arms, T, lam_dyn, rho, omega, theta, u_val, b_val, phi,
                                                 sigma ** 2),
        "dynlinucb_logT": lambda: LinearAgent(K, p, arms, T, np.log(T), rho, omega, theta, u_val, b_val, phi,
                                              sigma ** 2, 1.0 / T, dynlinucb=True),
        "linucb": lambda: LinUCBAgent(K, p, arms, T, lam_lin, theta, max_global, sigma),
    }
    lams = {"dynlinucb_lam1": float(lam_dyn), "dynlinucb_logT": float(np.log(T)), "linucb": float(lam_lin)}
    for name, make in agents.items():
        agent = make()
        env = DynLinEnvironment(A, B, C, D, n, p, m, T, noise, out_noise, n_trials, om)
        rewards = []
        step = env.step
        def wrapped(action, step=step):
            r = step(action)
            rewards.append(float(r[0, 0]))
            return r
        env.step = wrapped
        acts = Runner(env, agent, n_trials, T, p, K, arms).perform_simulations()
        for trial in range(n_trials):
            idx = [int(np.nonzero((arms == a).all(1))[0][0]) for a in acts[trial]]
            rw = rewards[trial * T:(trial + 1) * T]
            out["runs"].append(dict(instance=tag, agent=name, trial=trial, n_trials=n_trials, sigma=sigma,
                                    noise_seed=noise_seed, lam=lams[name], max_global=max_global,
                                    arms_idx=idx, reward_sum=float(np.sum(rw)), reward_head=rw[:8], **consts))
    return consts

A = np.array([[0.2, 0, 0], [0, 0, 0], [0, 0, 0.1]]); B = np.array([[0.45, 0, 0], [0, 0, 0], [0, 0, 0.1]])
C = np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 0.1]]); D = np.array([[0, 0, 0], [0, 0.5, 0], [0, 0, 0.1]])
syn_arms = budget_arms(3, 1.5, 1.0, 0.0)
instance(A, B, C, D, syn_arms, 0.01, 2, 1, 1.0, 1.0, 1.5, "synthetic")
instance(A, B, C, D, syn_arms, 0.1, 1, 1, 1.0, 1.0, 1.5, "synthetic")
rng = np.random.RandomState(7)
Q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
RA = Q @ np.diag([0.7, -0.4, 0.2]) @ Q.T
RB = rng.normal(size=(3, 2)) * 0.5; RC = rng.normal(size=(2, 3)) * 0.5; RD = rng.normal(size=(2, 2)) * 0.5
r_arms = rng.uniform(0, 1, size=(5, 2))
instance(RA, RB, RC, RD, r_arms, 0.05, 1, 3, 2.5, 0.5, 1.2, "random")
out["instances"] = {
    "synthetic": dict(A=A.tolist(), B=B.tolist(), C=C.tolist(), D=D.tolist(), arms=syn_arms.tolist()),
    "random": dict(A=RA.tolist(), B=RB.tolist(), C=RC.tolist(), D=RD.tolist(), arms=r_arms.tolist()),
}

# contract 1: epoch schedules
sched = {}
for rho in (0.2, 0.7, 0.95):
    ag = DynLinUCBAgent(6, 3, syn_arms, T, 1.0, rho, 1.0, 0.5, 1.1, 0.45, 1.0, 1e-4)
    sched[str(rho)] = [int(x) for x in ag.t_estimate]
out["contract"]["schedules"] = sched
# contract 2: widths at several rounds
bet = []
for lam in (1.0, np.log(T), 3.0):
    ag = LinearAgent(6, 3, syn_arms, T, lam, 0.2, 1.005, 0.51, 1.118, 0.45, 1.0, 1e-4, 1.0 / T, dynlinucb=True)
    lu = LinUCBAgent(6, 3, syn_arms, T, lam, 0.51, 1.5, 0.01)
    for t in (0, 1, 7, 100, 9999):
        ag.t = t
        bet.append(dict(lam=float(lam), t=t, dyn=float(ag._beta_t()), lin=float(lu._beta_t_fun_linucb())))
out["contract"]["betas"] = bet
# contract 3: rho below their epsilon (every round an epoch), fed seeded rewards
ag = DynLinUCBAgent(6, 3, syn_arms, 300, 1.0, 1e-7, 1.005, 0.51, 1.118, 0.45, 1.0, 1e-4)
rs = np.random.RandomState(11).normal(0.5, 0.3, size=300)
ch = []
for t in range(300):
    a = ag.pull_arm()
    ch.append(int(np.nonzero((syn_arms == a.ravel()).all(1))[0][0]))
    ag.update(rs[t])
out["contract"]["every_round"] = dict(arms_idx=ch, rewards=rs.tolist(), hat_h=ag.hat_h_vect.ravel().tolist(),
                                      V=ag.V_t.tolist())
json.dump(out, open(sys.argv[2], "w"))
'''

# The estimate at the end of each run: the driver's Runner reuses one agent over trials, so the final estimate
# of trial i is not kept. A second driver replays each run with n_trials = 1 (the same noise slice) and keeps
# hat_h_vect and V_t; their arms must equal the first pass's.
REPLAY = r'''
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from dynlinucb.experimental.agents import DynLinUCBAgent, LinUCBAgent, LinearAgent
from dynlinucb.experimental.environment import DynLinEnvironment
g = json.load(open(sys.argv[2]))
T = 10000
for run in g["runs"]:
    inst = g["instances"][run["instance"]]
    A, B, C, D, arms = (np.array(inst[k]) for k in ("A", "B", "C", "D", "arms"))
    n, p, m = A.shape[0], B.shape[1], C.shape[0]
    np.random.seed(run["noise_seed"])
    noise = np.random.normal(0, run["sigma"], (run["n_trials"], T, n))
    out_noise = np.random.normal(0, run["sigma"], (run["n_trials"], T, m))
    K = arms.shape[0]
    c = run
    if run["agent"] == "dynlinucb_lam1":
        ag = DynLinUCBAgent(K, p, arms, T, c["lam"], c["rho"], c["omega"], c["theta"], c["u_val"], c["b_val"],
                            c["phi"], c["sigma_sq"])
    elif run["agent"] == "dynlinucb_logT":
        ag = LinearAgent(K, p, arms, T, c["lam"], c["rho"], c["omega"], c["theta"], c["u_val"], c["b_val"],
                         c["phi"], c["sigma_sq"], 1.0 / T, dynlinucb=True)
    else:
        ag = LinUCBAgent(K, p, arms, T, c["lam"], c["theta"], c["max_global"], np.sqrt(c["sigma_sq"]))
    env = DynLinEnvironment(A, B, C, D, n, p, m, T, noise, out_noise, run["n_trials"], np.ones((1, p)))
    env.reset(run["trial"])
    ag.reset()
    forced = run["arms_idx"]
    first = True
    for t in range(T):
        a = ag.pull_arm()
        if first:
            # the first arm came from NumPy's global state in the first pass: force it
            ag.last_pull = arms[forced[0]].reshape(p, 1); a = ag.last_pull; first = False
        k = int(np.nonzero((arms == a.ravel()).all(1))[0][0])
        assert k == forced[t], (run["agent"], run["trial"], t, k, forced[t])
        r = env.step(a)
        ag.update(r[0, 0])
    run["hat_h"] = ag.hat_h_vect.ravel().tolist()
    run["V"] = ag.V_t.tolist()
json.dump(g, open(sys.argv[2], "w"))
'''

drv = os.path.join(tmp, "driver.py")
rep = os.path.join(tmp, "replay.py")
res = os.path.join(tmp, "out.json")
open(drv, "w").write(DRIVER)
open(rep, "w").write(REPLAY)
subprocess.run([ref_python, drv, tmp, res], check=True)
subprocess.run([ref_python, rep, tmp, res], check=True)
g = json.load(open(res))

runs = []
for r in g["runs"]:
    runs.append({
        "instance": r["instance"], "agent": r["agent"], "trial": r["trial"], "n_trials": r["n_trials"],
        "sigma": r["sigma"], "noise_seed": r["noise_seed"], "lam": r["lam"], "max_global": r["max_global"],
        "rho": r["rho"], "omega": r["omega"], "theta": r["theta"], "u_val": r["u_val"], "b_val": r["b_val"],
        "phi": r["phi"], "sigma_sq": r["sigma_sq"],
        "arms_idx": torch.tensor(r["arms_idx"], dtype=torch.int8),
        "reward_sum": r["reward_sum"], "reward_head": torch.tensor(r["reward_head"], dtype=torch.float64),
        "hat_h": torch.tensor(r["hat_h"], dtype=torch.float64), "V": torch.tensor(r["V"], dtype=torch.float64),
    })
instances = {k: {kk: torch.tensor(vv, dtype=torch.float64) for kk, vv in v.items()} for k, v in g["instances"].items()}
c = g["contract"]
contract = {
    "schedules": {k: torch.tensor(v, dtype=torch.int32) for k, v in c["schedules"].items()},
    "betas": c["betas"],
    "every_round": {"arms_idx": torch.tensor(c["every_round"]["arms_idx"], dtype=torch.int8),
                    "rewards": torch.tensor(c["every_round"]["rewards"], dtype=torch.float64),
                    "hat_h": torch.tensor(c["every_round"]["hat_h"], dtype=torch.float64),
                    "V": torch.tensor(c["every_round"]["V"], dtype=torch.float64)},
}
path = os.path.join(here, "..", "..", "tests", "data", "dynlinucb_golden.pt")
torch.save({"horizon": 10000, "runs": runs, "instances": instances, "contract": contract,
            "source": f"marcomussi/DLB@{COMMIT}"}, path)
print("wrote", os.path.normpath(path), os.path.getsize(path), "bytes;", len(runs), "runs")
for r in runs:
    print(r["instance"], r["agent"], r["trial"], "arm counts", np.bincount(r["arms_idx"].numpy(), minlength=6))
