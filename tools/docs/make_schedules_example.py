"""Write docs/examples/schedule_runs.csv, the example input of docs/schedules.md.

Three runs of 1000 steps (50-step linear warm-up to 3e-4; then constant, cosine to 3e-5, and WSD whose last
20% decays linearly to 3e-5), their losses made by the Multi-Power Law with the authors' 400M parameters
(thu-yao-01-luo/MultiPowerLaw, src/config.py) times seeded 0.2% Gaussian noise, measured every 10 steps from the end of warm-up
(the other rows leave ``loss`` empty). Run from the repository root:

    PYTHONPATH=src .venv/bin/python tools/docs/make_schedules_example.py
"""
import csv
import os

import numpy as np

from gradwise.schedules import MultiPowerLaw
from gradwise.schedules._cli import make_schedule

T, W, PEAK, FINAL = 1000, 50, 3e-4, 3e-5
warm = np.linspace(0.0, PEAK, W)
runs = {name: np.concatenate([warm, make_schedule(kind, T - W, PEAK, FINAL, 0.2)])
        for name, kind in (("constant", "constant"), ("cosine", "cosine"), ("wsd", "wsd"))}
law = MultiPowerLaw().set_params(2.37474466, 0.65421216, 0.42878731, 523.42464371, 2.02462735, 0.59350493,
                                 0.63472457)
gen = np.random.default_rng(0)
path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "examples", "schedule_runs.csv")
with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["run", "step", "lr", "loss"])
    for name, lrs in runs.items():
        steps = np.arange(W, T + 1, 10)
        loss = law.predict(lrs, steps).numpy() * (1 + 0.002 * gen.standard_normal(steps.size))
        measured = dict(zip(steps.tolist(), loss.tolist()))
        for s, lr in enumerate(lrs, start=1):
            w.writerow([name, s, f"{lr:.6g}", f"{measured[s]:.5f}" if s in measured else ""])
print("wrote", os.path.normpath(path))
