"""Golden data for the learning curve area (LCA), made by running two pieces of authors' code.

1. github.com/Mattdl/ContinualEvaluation, commit 7ffa3689af3aecb2b724b0cb13ef7da83bd87d90
   (``src/eval/continual_eval_metrics.py`` is unchanged since their first commit bae2a58):
   ``TrackingLCAPluginMetric(beta)`` for beta 3 and 5, with ``TaskTrackingAccuracyPluginMetric``, driven as
   their ``ContinualEvaluationPhasePlugin.track`` drives them (``before_tracking``; per evaluated task
   ``before_tracking_step``, per batch ``before/after_tracking_batch``, ``after_tracking_step``), on seeded
   predictions of a 4-task stream with unseen tasks skipped. Their files are loaded by
   ``tools/golden/mattdl_plugins.py``, as for ``make_continual_eval_golden.py`` (the vendored Avalanche
   pieces they import, an empty ``avalanche/evaluation/metrics/__init__.py``, a stub ``src/utils.py``).
   Stored: the accuracy record, the task trained at each step, their LCA after each step.
2. github.com/facebookresearch/agem, commit 45421499483b28935491251e9e821c55e8b3c089: the LCA of their
   plotting notebook ``plotting_code/agem_plots.ipynb`` (Python 2): the helper cell defining
   ``populate_k_shot_acc_dict`` and the "LCA Measure" cell computing ``area_trapz`` are executed as they are,
   with two Python 3 shims
   (``55000/ 10`` read as ``55000// 10``; ``np.trapz`` = ``np.trapezoid``, removed in numpy 2.4), on seeded
   accuracy arrays ``[runs, tasks, batches, tasks]`` in place of their pickles. Stored: the arrays and
   ``area_trapz`` (LCA_0 .. LCA_10 per model and run).

Run from the repository root, pointing at git directories of theirs (clones, or the mirrors the search
tool's ``fetch`` brings):

    REPO=/path/to/ContinualEvaluation AGEM_REPO=/path/to/agem .venv/bin/python tools/golden/make_lca_golden.py

Writes tests/data/lca_golden.pt.
"""
import json
import os
import subprocess
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mattdl_plugins import load, track  # noqa: E402

COMMIT = "7ffa3689af3aecb2b724b0cb13ef7da83bd87d90"
AGEM_COMMIT = "45421499483b28935491251e9e821c55e8b3c089"
here = os.path.dirname(os.path.abspath(__file__))


def git_show(repo, commit, name):
    return subprocess.run(["git", "-C", repo, "show", f"{commit}:{name}"], check=True, capture_output=True,
                          text=True).stdout


def mattdl_case(their, gen):
    n_tasks, n_classes, batches, phase_steps = 4, 5, (10, 6), (9, 3, 8, 6)
    col = their.TrackingCollector()
    strategy = types.SimpleNamespace(tracking_collector=col, clock=types.SimpleNamespace(train_exp_counter=0))
    acc_plugin = their.TaskTrackingAccuracyPluginMetric()
    lcas = {b: their.TrackingLCAPluginMetric(beta=b) for b in (3, 5)}
    plugins = [acc_plugin, *lcas.values()]
    current = [k for k, n in enumerate(phase_steps) for _ in range(n)]
    labels = [[torch.randint(0, n_classes, (b,), generator=gen) for b in batches] for _ in range(n_tasks)]
    level = torch.full((n_tasks,), 0.1, dtype=torch.float64)
    out = {"acc": [], "lca3": [], "lca5": []}
    seen = set()
    for k in current:
        seen.add(k)
        level[k] = min(0.95, float(level[k]) + 0.12)
        strategy.clock.train_exp_counter = k

        def predict(t, y):
            p_right = float(level[t]) + 0.15 * float(torch.randn((), generator=gen))
            right = torch.rand(y.shape, generator=gen) < p_right
            return torch.where(right, y, (y + 1) % n_classes)
        track(plugins, strategy, sorted(seen), labels, predict)
        accs = acc_plugin.result()
        out["acc"].append([accs.get(t, float("nan")) for t in range(n_tasks)])
        for b, p in lcas.items():
            r = p.result()
            out[f"lca{b}"].append(float("nan") if r is None else r[0])
    case = {key: torch.tensor(v, dtype=torch.float64) for key, v in out.items()}
    case["acc"] = case["acc"].T.contiguous()
    case["current_task"] = torch.tensor(current)
    return case


def agem_case(repo, gen):
    nb = json.loads(git_show(repo, AGEM_COMMIT, "plotting_code/agem_plots.ipynb"))
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    helpers = next(c for c in cells if "def populate_k_shot_acc_dict(" in c)
    lca_cell = next(c for c in cells if "area_trapz['A-GEM']" in c and "np.trapz" in c)
    assert "55000/ 10" in lca_cell
    lca_cell = lca_cell.replace("55000/ 10", "55000// 10")
    np.trapz = getattr(np, "trapz", None) or np.trapezoid
    ns = {"np": np, "pickle": None}
    exec(helpers, ns)
    runs, n_tasks, n_batches = 2, 4, 12
    data = {}
    for key in ("VAN", "EWC", "RWALK", "MAS", "PROG-NN", "A-GEM"):
        # accuracy after b minibatches of task j on task j climbs from a zero-shot level, with noise
        base = torch.rand(runs, n_tasks, 1, n_tasks, generator=gen, dtype=torch.float64) * 0.3
        rate = torch.rand(runs, n_tasks, 1, n_tasks, generator=gen, dtype=torch.float64) * 0.3
        b = torch.arange(n_batches, dtype=torch.float64)[None, None, :, None]
        acc = (base + (1 - base) * (1 - torch.exp(-rate * b))
               + 0.03 * torch.randn(runs, n_tasks, n_batches, n_tasks, generator=gen, dtype=torch.float64))
        data[key] = {"mean": acc.clamp(0, 1).numpy()}
    avg_k_shot_acc = {}
    for key in data:
        ns["populate_k_shot_acc_dict"](data, key, avg_k_shot_acc)
    ns.update(avg_k_shot_acc=avg_k_shot_acc)
    exec(lca_cell, ns)
    keys = [k for k in data]
    return {"acc": {k: torch.from_numpy(data[k]["mean"]) for k in keys},
            "area_trapz": {k: torch.from_numpy(np.asarray(ns["area_trapz"][k], dtype=np.float64)) for k in keys}}


gen = torch.Generator().manual_seed(0)
their = load(os.environ["REPO"], COMMIT)
out = dict(reference=f"Mattdl/ContinualEvaluation@{COMMIT} src/eval/continual_eval_metrics.py; facebookresearch/"
                     f"agem@{AGEM_COMMIT} plotting_code/agem_plots.ipynb (torch {torch.__version__}, numpy "
                     f"{np.__version__})",
           mattdl=mattdl_case(their, gen), agem=agem_case(os.environ["AGEM_REPO"], gen))
path = os.path.join(here, "..", "..", "tests", "data", "lca_golden.pt")
torch.save(out, path)
print("mattdl lca3", out["mattdl"]["lca3"][-1].item(), "lca5", out["mattdl"]["lca5"][-1].item())
print("agem A-GEM LCA_10", out["agem"]["area_trapz"]["A-GEM"][:, 10].tolist())
