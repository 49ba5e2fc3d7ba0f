"""Golden data for the Multi-Power Law (Luo et al., ICLR 2025), made by running the authors' code.

Repository: github.com/thu-yao-01-luo/MultiPowerLaw, commit 8da9f1902602f3391b971a811e3cc51604541769
("Update CITATION.cff"). Their files are not part of this repository: point REPO at a git directory of theirs (a
clone, or the mirror the search tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_multi_power_law_golden.py

It reads their ``src/`` package at that commit with ``git show`` into a temporary folder and imports it unchanged
(numpy, torch, scipy, scikit-learn, matplotlib, tqdm). On five schedules made by their ``src/lr_schedules.py``
(linear warm-up of 100 steps to 3e-4, 3000 steps: constant, cosine to 3e-5, WSD with exponential decay from step
2400, WSD with linear decay, and a two-stage step schedule dropping to 9e-5 at step 1500) and their 400M parameters
(``PARAMS["400"]`` of ``src/config.py``), it records:

- ``evaluate_mpl``'s predicted loss at every 16th step from 100 (their prediction function);
- ``MPL.forward`` (their fitting objective: Huber, delta 1e-3, on log losses) and its gradient with respect to the
  seven parameters at a perturbed parameter vector, on curves made by the law (losses rounded to float32 values,
  passed to it as float64 tensors);
- their fit on three of those curves (cosine, constant, two-stage: their choice of training schedules):
  ``initialize_params`` (the L-BFGS-B grid on a linear-drop surrogate) and ``mpl_adam_fit`` (AdamW, 200 steps at
  most) with its best parameters and best loss. Their ``preprocess_data`` casts the losses to float32, so
  their log losses carry float32 rounding (the reason the curves are float32 values: the test can reproduce it).

Their lrs arrays are indexed from 0 (index 0 is the first step, LR 0 at the start of a linear warm-up); gradwise
counts steps from 1, so their index ``i`` is gradwise's step ``i + 1``. Writes tests/data/multi_power_law_golden.pt
(float64).
"""
import logging
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

COMMIT = "8da9f1902602f3391b971a811e3cc51604541769"
FILES = ["__init__.py", "config.py", "lr_schedules.py", "models.py", "fitting.py", "evaluation.py", "utils.py"]
here = os.path.dirname(os.path.abspath(__file__))
repo = os.environ["REPO"]
tmp = tempfile.mkdtemp()
os.makedirs(os.path.join(tmp, "src"))
for name in FILES:
    text = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:src/{name}"], check=True, capture_output=True,
                          text=True).stdout
    with open(os.path.join(tmp, "src", name), "w") as f:
        f.write(text)
sys.path.insert(0, tmp)
import matplotlib  # noqa: E402

matplotlib.use("Agg")
from src import config, evaluation, fitting, lr_schedules, models  # noqa: E402

logging.disable(logging.CRITICAL)
torch.set_num_threads(1)
fig_folder = tempfile.mkdtemp()

WARMUP, TOTAL, PEAK, END = 100, 3000, 3e-4, 3e-5
schedules = {
    "constant": lr_schedules.const_lrs(WARMUP, TOTAL, PEAK, False),
    "cosine": lr_schedules.cosine_lrs(WARMUP, TOTAL, PEAK, END, False),
    "wsd": lr_schedules.wsd_lrs(WARMUP, TOTAL, 2400, PEAK, END, False),
    "wsdld": lr_schedules.wsdld_lrs(WARMUP, TOTAL, 2400, PEAK, END, False),
    "step": lr_schedules.two_stage_lrs(WARMUP, TOTAL, PEAK, 9e-5, 1500, False),
}
steps = np.arange(WARMUP, TOTAL, 16)  # their step indices (0-based)
params = [float(v) for v in config.PARAMS["400"]]


def predict(p, names):
    data = {n: {"lrs": schedules[n], "step": steps, "loss": np.full(len(steps), 3.0)} for n in names}
    evaluation.evaluate_mpl(data, list(names), p, fig_folder)
    return {n: data[n]["pred"].copy() for n in names}


preds = predict(params, schedules)
# curves made by the law, rounded to float32 (their preprocess_data stores losses as float32)
curves = {n: preds[n].astype(np.float32).astype(np.float64) for n in schedules}

# their fitting objective and its gradient at a perturbed point
p_eval = [params[0] * 0.98, params[1] * 1.05, params[2] * 0.97, params[3] * 1.1, params[4] * 0.9, params[5] * 1.05,
          params[6] * 0.95]
data = {n: {"lrs": schedules[n], "step": steps, "loss": curves[n]} for n in schedules}
from src.utils import preprocess_data  # noqa: E402

torch_data = preprocess_data(data, list(schedules))
objective, grads = {}, {}
for n in schedules:
    model = models.MPL(*p_eval)
    args = [torch_data[n][k] for k in ["S1", "lrs", "lr_sum", "step", "lr_gap"]]
    args.append(torch.from_numpy(curves[n]))  # float64 here (their pipeline casts to float32; see the fit)
    value = model(*args)
    value.backward()
    objective[n] = float(value.detach())
    grads[n] = torch.stack([q.grad for q in (model.L0, model.A, model.alpha, model.B, model.C, model.beta,
                                             model.gamma)]).clone()

# their fit, on three curves (their TRAIN_SET's schedule kinds)
train = ["cosine", "constant", "step"]
init = fitting.initialize_params(data, train)
init_params = fitting.generate_init_params(init)
best, best_loss = fitting.mpl_adam_fit(data, train, [], init_params, fig_folder)

out = {
    "commit": COMMIT,
    "steps0": torch.from_numpy(steps.astype(np.int64)),
    "params": torch.tensor(params, dtype=torch.float64),
    "lrs": {n: torch.from_numpy(np.asarray(v, dtype=np.float64)) for n, v in schedules.items()},
    "pred": {n: torch.from_numpy(v) for n, v in preds.items()},
    "curves": {n: torch.from_numpy(v) for n, v in curves.items()},
    "p_eval": torch.tensor(p_eval, dtype=torch.float64),
    "objective": objective,
    "grad": grads,
    "fit_train": train,
    "fit_init": torch.tensor([float(v) for v in init], dtype=torch.float64),
    "fit_best": torch.tensor(best, dtype=torch.float64),
    "fit_best_loss": float(best_loss),
}
path = os.path.join(here, "..", "..", "tests", "data", "multi_power_law_golden.pt")
torch.save(out, path)
print("wrote", os.path.normpath(path))
print("init", out["fit_init"].tolist())
print("best", out["fit_best"].tolist(), best_loss)
