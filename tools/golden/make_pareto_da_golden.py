"""Golden ParetoDA weights, directions and target surrogates, made by running the authors' own code.

Source: github.com/BIT-DA/ParetoDA at commit 6691766 (6691766010f415a48ef32d8bbcc526f8410f4006):
``EPO_LP.get_alpha`` of ``tools/epo_lp_dna.py`` (cvxpy, GLPK through cvxopt), ``TCM`` of
``tools/TCM_loss.py`` and ``rho_pred`` of ``dalib/modules/cls_domaindiscri.py``. The three files are loaded
from their paths unchanged; nothing of their math is replaced. ``get_alpha`` is fed float64 numpy arrays
(their training script passes float32 ``G.cpu().numpy()``), so the reference is not rounded to float32.

LP cases (seeded): per-objective gradients ``G`` (m x n, m = 2 or 3, n = 12 or 40) drawn so that objectives
conflict, a held-out gradient ``g_val`` (n) and a held-out loss ``loss_val``: above their ``eps`` = 1e-3
(the balance LP, ``last_move == "bal"``) or below it (the dominance LP, ``"dom"``, with ``relax`` False and
True). Kept: every case whose LP their GLPK solves (``alpha`` and the direction ``G.T @ alpha``) and which
is non-degenerate, i.e. its optimal ``alpha`` is unique: checked here with scipy's HiGHS by minimising and
maximising each ``alpha_i`` over the optimal face (spread < 1e-9); degenerate draws are skipped, since
there any optimal vertex is right and two solvers may return different ones. Also kept: cases GLPK finds
infeasible (``alpha is None``; their script then falls back to the preference vector), marked ``None``.

Surrogate cases: ``TCM(logits)`` (the mutual information of the softmax, their target surrogate is
``-TCM``) on seeded float64 logits, and ``rho_pred(logits, domain_logits)`` (the Bayes-refined target
logits) with ``TCM`` of it, for batches 8 x 5 classes.

Run from the repository root with a venv holding cvxpy 1.9.3, cvxopt 1.3.3 (GLPK), scikit-learn, scipy
and torch 2.13.0 (their module imports cvxopt.glpk, cvxpy and sklearn) and their checkout at PARETODA_REF
(e.g. ``git archive 6691766 | tar -x``); it writes tests/data/pareto_da_golden.pt:

    PARETODA_REF=/path/to/ParetoDA /tmp/venv/bin/python tools/golden/make_pareto_da_golden.py
"""
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linprog

REF = Path(os.environ["PARETODA_REF"])
OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "pareto_da_golden.pt"


def load(rel: str, name: str):
    spec = importlib.util.spec_from_file_location(name, REF / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


epo = load("tools/epo_lp_dna.py", "epo_lp_dna")
tcm = load("tools/TCM_loss.py", "TCM_loss")
cdd = load("dalib/modules/cls_domaindiscri.py", "cls_domaindiscri")


def lp_of(G, g, loss_val, eps, relax):
    """The same LP written for scipy (c, A_ub, b_ub): used only to test uniqueness of their optimum."""
    C, Ca = G @ G.T, G @ g
    m = len(G)
    if loss_val > eps:
        J = Ca > 0
        if J.any():
            rhs = Ca.copy()
            rhs[J] = -np.inf
            rhs[np.argmax(Ca)] = 0.0
        else:
            rhs = np.zeros(m)
        keep = np.isfinite(rhs)
        return -Ca, -C[keep], -rhs[keep]
    A, b = [-C], [np.zeros(m)]
    if not relax:
        A.append(-Ca[None]), b.append(np.array([-min(Ca.max(), 0.0)]))
    return -C.sum(0), np.vstack(A), np.concatenate(b)


def unique(G, g, loss_val, eps, relax) -> bool:
    c, A, b = lp_of(G, g, loss_val, eps, relax)
    m = len(G)
    eq = dict(A_eq=np.ones((1, m)), b_eq=[1.0], bounds=[(0, None)] * m, method="highs")
    best = linprog(c, A_ub=A, b_ub=b, **eq)
    if best.status != 0:
        return False
    A2 = np.vstack([A, c[None]])
    b2 = np.concatenate([b, [best.fun + 1e-12 * max(1.0, abs(best.fun))]])
    for i in range(m):
        e = np.eye(m)[i]
        lo = linprog(e, A_ub=A2, b_ub=b2, **eq)
        hi = linprog(-e, A_ub=A2, b_ub=b2, **eq)
        if lo.status != 0 or hi.status != 0 or (-hi.fun - lo.fun) > 1e-9:
            return False
    return True


def draw(rng, m, n):
    base = rng.standard_normal(n)
    G = np.stack([0.3 * base + rng.standard_normal(n) * rng.uniform(0.5, 2.0) for _ in range(m)])
    G[1] -= rng.uniform(0.2, 1.2) * G[0]  # a conflict between the first two objectives
    g = rng.uniform(-0.5, 1.0) * G[rng.integers(m)] + 0.7 * rng.standard_normal(n)
    return G, g


def main():
    rng = np.random.default_rng(106)
    lp_cases, infeasible = [], []
    eps = 1e-3
    settings = [(m, n, lv, relax) for m in (2, 3) for n in (12, 40)
                for lv, relax in ((0.5, False), (-0.2, False), (-0.2, True))]
    for m, n, lv, relax in settings:
        kept = 0
        for _ in range(200):
            if kept == 3:
                break
            G, g = draw(rng, m, n)
            solver = epo.EPO_LP(m=m, eps=eps)
            try:
                alpha = solver.get_alpha(G, g, torch.tensor(lv, dtype=torch.float64), relax=relax)
            except Exception as e:  # their script catches solver errors and falls back to the preference
                print("solver error", e)
                continue
            case = {"G": torch.from_numpy(G), "g_val": torch.from_numpy(g), "loss_val": lv, "relax": relax,
                    "eps": eps, "move": solver.last_move}
            if alpha is None:
                if len(infeasible) < 4:
                    infeasible.append({**case, "alpha": None})
                continue
            if not unique(G, g, lv, eps, relax):
                continue
            alpha = np.asarray(alpha, dtype=np.float64)
            lp_cases.append({**case, "alpha": torch.from_numpy(alpha), "direction": torch.from_numpy(G.T @ alpha)})
            kept += 1
    # the balance LP with no objective aligned with the held-out gradient (J empty: every rhs is 0)
    G, _ = draw(rng, 3, 12)
    g = -G.T @ np.linalg.solve(G @ G.T, np.array([0.5, 1.0, 1.5]))  # G @ g = -(0.5, 1, 1.5)
    assert (G @ g < 0).all()
    solver = epo.EPO_LP(m=3, eps=eps)
    alpha = solver.get_alpha(G, g, torch.tensor(0.5, dtype=torch.float64))
    if alpha is not None and unique(G, g, 0.5, eps, False):
        lp_cases.append({"G": torch.from_numpy(G), "g_val": torch.from_numpy(g), "loss_val": 0.5, "relax": False,
                         "eps": eps, "move": solver.last_move, "alpha": torch.from_numpy(np.asarray(alpha)),
                         "direction": torch.from_numpy(G.T @ np.asarray(alpha))})
    else:
        print("J-empty case not kept (infeasible or degenerate)")

    torch.manual_seed(106)
    surrogate = []
    for scale in (1.0, 4.0):
        logits = scale * torch.randn(8, 5, dtype=torch.float64)
        dlogits = 2 * torch.randn(8, 5, 2, dtype=torch.float64)
        rho = cdd.rho_pred(logits, dlogits)
        surrogate.append({"logits": logits, "domain_logits": dlogits, "tcm": tcm.TCM(logits), "rho": rho,
                          "tcm_rho": tcm.TCM(rho)})
    torch.save({"lp": lp_cases, "infeasible": infeasible, "surrogate": surrogate, "torch": str(torch.__version__),
                "source": "BIT-DA/ParetoDA@6691766"}, OUT)
    moves = [c["move"] + ("/relax" if c["relax"] else "") for c in lp_cases]
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {len(lp_cases)} LP cases {moves}, "
          f"{len(infeasible)} infeasible, {len(surrogate)} surrogate cases")


if __name__ == "__main__":
    main()
