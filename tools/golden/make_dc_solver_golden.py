"""Golden data for DC-Solver (DCSolverScheduler), made by running the authors' scheduler.

Repository: github.com/wl-zhao/DC-Solver, commit 95125cc ("add diffusers"). Their diffusers fork (0.31.0.dev0)
is not part of this repository: point REPO at a git directory of theirs (a clone, or the mirror the search
tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/DC-Solver .venv/bin/python tools/golden/make_dc_solver_golden.py

It extracts ``diffusers/src`` at that commit with ``git archive`` into a temporary folder and imports *their*
diffusers from there (a fresh interpreter, so the installed diffusers is not loaded), then on a seeded toy
denoiser ``eps(x, t) = tanh(x W^T + (t / 1000) b) * 0.8 + 0.1 x`` (float64, x ``[4, 6]``; W, b stored):

1. a reference trajectory as their ``generate_gt`` makes it: their ``DDIMScheduler`` with the same betas,
   200 steps, recording after each step the timestep ``t`` the step started from and the sample it produced
   (``{"ts": [200], "intermediates": [B, 200, 6]}``);
2. their search stage (``DCSolverMultistepScheduler(ddim_gt=...)``, ``model_wrapper`` set to the toy denoiser,
   the pipeline's loop: ``x = noise * init_noise_sigma``, then ``x = step(eps(x, t), t, x)``) at NFE 5, 6 and 8,
   keeping the ratios it finds (``dc_ratios``) and its final sample;
3. their sampling stage with those ratios (a fresh scheduler, ``dc_ratios`` set), keeping the samples, and
   once with fixed ratios ``[1, 1, 0.9, 1.1, 0.97]`` at NFE 5.

Scheduler settings are their ``scripts/sample_dc_solver.py``'s (``beta_start=0.00085, beta_end=0.012,
beta_schedule="scaled_linear", solver_order=2, dc_order=2, disable_corrector=[0], prediction_type="epsilon",
solver_type="bh2", lower_order_final=True``; their defaults ``num_iters=20``, ``bound_func="none"``).
Writes tests/data/dc_solver_golden.pt.
"""
import os
import subprocess
import sys
import tempfile

COMMIT = "95125cc"
here = os.path.dirname(os.path.abspath(__file__))
out_path = os.path.join(here, "..", "..", "tests", "data", "dc_solver_golden.pt")

if __name__ == "__main__" and "--inner" not in sys.argv:
    repo = os.environ["REPO"]
    tmp = tempfile.mkdtemp()
    archive = subprocess.run(["git", "-C", repo, "archive", COMMIT, "diffusers/src"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
    env = dict(os.environ, PYTHONPATH=os.path.join(tmp, "diffusers", "src"))
    sys.exit(subprocess.run([sys.executable, os.path.abspath(__file__), "--inner"], env=env).returncode)

import contextlib  # noqa: E402
import io  # noqa: E402

import torch  # noqa: E402
from diffusers import DDIMScheduler  # noqa: E402  (theirs: PYTHONPATH points at their fork)
from diffusers.schedulers.scheduling_dcsolver_multistep import DCSolverMultistepScheduler  # noqa: E402

assert "dev0" in __import__("diffusers").__version__, "not their diffusers fork"

BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
KWARGS = dict(**BETAS, solver_order=2, prediction_type="epsilon", thresholding=False, solver_type="bh2",
              lower_order_final=True, dc_order=2, disable_corrector=[0])

g = torch.Generator().manual_seed(0)
W = torch.randn(6, 6, generator=g, dtype=torch.float64) * 0.6
b = torch.randn(6, generator=g, dtype=torch.float64) * 2.0
noise = torch.randn(4, 6, generator=g, dtype=torch.float64)


def eps(x, t):
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.tanh(x @ W.T + (t / 1000.0) * b) * 0.8 + 0.1 * x


def reference():
    sched = DDIMScheduler(**BETAS, num_train_timesteps=1000)
    sched.set_timesteps(200)
    x = noise * sched.init_noise_sigma
    ts, xs = [], []
    for t in sched.timesteps:
        x = sched.step(eps(x, t), t, x).prev_sample
        ts.append(t)
        xs.append(x)
    return {"ts": torch.stack(ts), "intermediates": torch.stack(xs, dim=1)}


def run(sched, nfe):
    sched.set_timesteps(nfe)
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.step(eps(x, t), t, x, return_dict=False)[0]
    return x


ref = reference()
cases = []
for nfe in (5, 6, 8):
    search = DCSolverMultistepScheduler(ddim_gt=ref, **KWARGS)
    search.model_wrapper = eps
    with contextlib.redirect_stdout(io.StringIO()):  # their search prints every iteration
        x_search = run(search, nfe)
    ratios = list(search.dc_ratios)
    sampler = DCSolverMultistepScheduler(**KWARGS)
    sampler.dc_ratios = ratios
    cases.append({"nfe": nfe, "ratios": torch.tensor(ratios, dtype=torch.float64), "search_sample": x_search,
                  "sample": run(sampler, nfe), "timesteps": sampler.timesteps.clone()})
fixed = [1.0, 1.0, 0.9, 1.1, 0.97]
sampler = DCSolverMultistepScheduler(**KWARGS)
sampler.dc_ratios = fixed
cases.append({"nfe": 5, "ratios": torch.tensor(fixed, dtype=torch.float64), "sample": run(sampler, 5),
              "timesteps": sampler.timesteps.clone()})
plain = DCSolverMultistepScheduler(**KWARGS)
plain.dc_ratios = [1.0] * 5
torch.save({"W": W, "b": b, "noise": noise, "reference": ref, "cases": cases, "no_dc_sample": run(plain, 5),
            "config": KWARGS, "commit": COMMIT}, out_path)
print("wrote", os.path.normpath(out_path), [round(float(r), 4) for c in cases for r in c["ratios"]])
