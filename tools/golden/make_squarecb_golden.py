"""Golden inverse-gap-weighting probabilities from Vowpal Wabbit's ``--cb_explore_adf --squarecb``.

Source: github.com/VowpalWabbit/vowpal_wabbit, PyPI ``vowpalwabbit==9.11.9`` (its SquareCB reduction,
``vowpalwabbit/core/src/reductions/cb/cb_explore_adf_squarecb.cc``, read at commit 02deb486 of the index).
VW is not a gradwise dependency: run this with a throwaway venv::

    python3 -m venv /tmp/vw-venv && /tmp/vw-venv/bin/pip install vowpalwabbit==9.11.9
    /tmp/vw-venv/bin/python tools/golden/make_squarecb_golden.py      # writes tests/data/squarecb_golden.json

Each case runs a fresh VW workspace (``--quiet --noconstant``, square loss, its default AdaGrad learner) over a
seeded stream of K-action ADF examples: action k has the single feature ``x{k}:v_k`` in namespace ``a``, the
learner draws an action from VW's own probabilities and learns cost ``c_k`` (+ uniform noise). At chosen rounds
the case records VW's probabilities, VW's round counter (examples learned so far), and VW's predicted cost of
every action, read back as ``weight(x{k}) * v_k`` through ``get_weight_from_name`` (float32 weights, widened to
float64 here). The test recomputes the probabilities from those costs with gradwise's IGW in float64 and
compares with a float32 tolerance. Cases cover K = 2, 4, 10, gamma_scale 1/10/100, gamma_exponent 0/0.5, and
exact ties (the first round: all costs 0, VW gives the lowest index the greedy mass).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import vowpalwabbit

OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "squarecb_golden.json"

CASES = [  # (K, gamma_scale, gamma_exponent, rounds, seed)
    (2, 10.0, 0.5, 60, 0),
    (4, 1.0, 0.0, 80, 1),
    (4, 10.0, 0.5, 120, 2),
    (10, 10.0, 0.5, 200, 3),
    (10, 100.0, 0.5, 150, 4),
    (10, 30.0, 0.0, 100, 5),
]
RECORD = 8  # snapshots per case


def run_case(k, gamma_scale, gamma_exponent, rounds, seed):
    rng = random.Random(seed)
    ws = vowpalwabbit.Workspace(f"--cb_explore_adf --squarecb --gamma_scale {gamma_scale} "
                                f"--gamma_exponent {gamma_exponent} --quiet --noconstant --random_seed {seed}")
    values = [round(rng.uniform(0.5, 2.0), 3) for _ in range(k)]
    costs = [round(rng.uniform(0.0, 1.0), 3) for _ in range(k)]
    lines = [f"|a x{j}:{values[j]}" for j in range(k)]
    record_at = set([0] + sorted(rng.sample(range(1, rounds), RECORD - 1)))
    snaps = []
    for t in range(rounds):
        probs = ws.predict(list(lines))
        if t in record_at:
            scores = [ws.get_weight_from_name(f"x{j}", "a") * values[j] for j in range(k)]
            snaps.append({"round": t, "counter": t, "scores": scores, "probs": list(map(float, probs))})
        u, acc, arm = rng.random(), 0.0, k - 1
        for j, p in enumerate(probs):
            acc += p
            if u < acc:
                arm = j
                break
        cost = costs[arm] + rng.uniform(-0.1, 0.1)
        ex = list(lines)
        ex[arm] = f"0:{cost}:{probs[arm]} " + ex[arm]
        ws.learn(ex)
    ws.finish()
    return {"K": k, "gamma_scale": gamma_scale, "gamma_exponent": gamma_exponent, "seed": seed,
            "snapshots": snaps}


def main():
    data = {"source": "vowpalwabbit==" + vowpalwabbit.__version__ + " --cb_explore_adf --squarecb",
            "cases": [run_case(*c) for c in CASES]}
    OUT.write_text(json.dumps(data, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
