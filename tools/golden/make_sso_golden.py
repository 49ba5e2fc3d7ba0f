"""Golden data for SSO (target-based surrogates), made by running the authors' optimizer.

Repository: github.com/WilderLavington/Target-Based-Surrogates-For-Stochastic-Optimization, commit
205dde6ab514f1eea3472326b67397ea8982e551 (the last, "."). Their files are not part of this repository: point REPO
at a git directory of theirs (a clone, or the mirror the search tool's ``fetch`` brings) and run from the
repository root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_sso_golden.py

It unpacks that commit (``git archive``) into a temporary folder and imports, unchanged, their
``optimizers/sgd_fmdopt.py`` (``SGD_FMDOpt``: SSO with an SGD step in target space) and its inner optimizer
``optimizers/lsopt.py`` (``LSOpt``: SGD with an Armijo line search) with their ``helpers.py``. They run on CPU as
they are (their only CUDA reference is the zero gradient they substitute for a parameter without one, which never
happens here). Everything runs in float64 (``torch.set_default_dtype(torch.float64)``). No dataset is read: inputs
are seeded random tensors.

The harness below is their ``train.py`` loop in small: per outer step a closure that returns ``(loss_func, X_batch,
y_batch, model)`` (``call_closure=False``, as ``load_optim.py`` sets for ``SGD_FMDOpt``), batches taken in a fixed
order, and the optimizer built as ``load_optim.py`` builds it: ``eta = 1/stepsize``, ``surr_optim_args`` with
``lr = init_step_size``, ``c``, ``n_batches_per_epoch = N / batch_size``, ``beta_update``, ``expand_coeff`` and
``eta_schedule='constant'``, and ``reset_lr_on_step=1`` (their parser's default). The losses are theirs:
``nn.MSELoss(reduction='sum')`` and ``nn.CrossEntropyLoss(reduction='sum')``.

What it records (tests/data/sso_golden.pt), one entry per run:

* ``linear_mse``: a linear model (6 -> 2) on 24 points, batches of 8 (``n_batches_per_epoch`` 3), stepsize 1/4
  (their "optimal" stepsize for the squared loss), ``m = 5``, their parser's defaults ``c = 0.1``,
  ``beta_update = 0.9``, ``expand_coeff = 2``, ``init_step_size = 1``; 6 outer steps;
* ``mlp_ce``: a tanh MLP (5 -> 7 -> 3) with cross-entropy on 24 points, batches of 6 (4 per epoch), stepsize 2,
  ``m = 3``, ``c = 0.5``, ``beta_update = 0.7``, ``expand_coeff = 1.5``; 6 outer steps;
* ``mlp_mse_m1``: the same MLP shape with a squared loss, ``m = 1``, stepsize 0.1; 5 outer steps.

Each keeps the settings, the initial state dict, the batches (inputs, targets), after every outer step the state
dict, the surrogate value their ``step`` returns and their inner optimizer's final ``step_size``.
"""
import io
import os
import subprocess
import sys
import tarfile
import tempfile

import torch
from torch import nn

COMMIT = "205dde6ab514f1eea3472326b67397ea8982e551"
here = os.path.dirname(os.path.abspath(__file__))
repo = os.environ["REPO"]
tmp = tempfile.mkdtemp()
git_dir = os.path.join(repo, ".git") if os.path.isdir(os.path.join(repo, ".git")) else repo
archive = subprocess.run(["git", "--git-dir", git_dir, "archive", COMMIT, "helpers.py", "optimizers"],
                         check=True, capture_output=True).stdout
tarfile.open(fileobj=io.BytesIO(archive)).extractall(tmp, filter="data")
sys.path.insert(0, tmp)
from optimizers.sgd_fmdopt import SGD_FMDOpt  # noqa: E402  (theirs)

torch.set_default_dtype(torch.float64)


def mlp(d_in, d_hidden, d_out):
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.Tanh(), nn.Linear(d_hidden, d_out))


def run(name, model, loss_func, X, y, batch_size, steps, stepsize, m, c, beta_update, expand_coeff, init_step_size=1.0):
    n = X.shape[0]
    surr_optim_args = {"lr": init_step_size, "c": c, "n_batches_per_epoch": n / batch_size,
                       "beta_update": beta_update, "expand_coeff": expand_coeff, "eta_schedule": "constant"}
    opt = SGD_FMDOpt(model.parameters(), eta=1 / stepsize, eta_schedule="constant", surr_optim_args=surr_optim_args,
                     m=m, total_steps=steps, reset_lr_on_step=1)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(X[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]
    states, returned, inner_step_sizes = [], [], []
    for t in range(steps):
        Xb, yb = batches[t % len(batches)]

        def closure(call_backward=True):  # their train.py closure, single_out=False
            loss = loss_func(model(Xb), yb)
            if call_backward:
                loss.backward()
            return loss_func, Xb, yb, model

        out = opt.step(closure)
        returned.append(float(out))
        inner_step_sizes.append(float(opt.inner_optim.state["step_size"]))
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    print(name, returned[-1], inner_step_sizes)
    return dict(settings=dict(batch_size=batch_size, steps=steps, stepsize=stepsize, m=m, c=c, beta_update=beta_update,
                              expand_coeff=expand_coeff, init_step_size=init_step_size, n=n),
                init=init, batches=batches, states=states, returned=returned, inner_step_sizes=inner_step_sizes)


def main():
    out = {"commit": COMMIT}
    g = torch.Generator().manual_seed(0)
    X = torch.randn(24, 6, generator=g)
    y = X @ torch.randn(6, 2, generator=g) + 0.1 * torch.randn(24, 2, generator=g)
    torch.manual_seed(1)
    out["linear_mse"] = run("linear_mse", nn.Linear(6, 2), nn.MSELoss(reduction="sum"), X, y, batch_size=8, steps=6,
                            stepsize=0.25, m=5, c=0.1, beta_update=0.9, expand_coeff=2.0)
    X = torch.randn(24, 5, generator=g)
    y = torch.randint(0, 3, (24,), generator=g)
    torch.manual_seed(2)
    out["mlp_ce"] = run("mlp_ce", mlp(5, 7, 3), nn.CrossEntropyLoss(reduction="sum"), X, y, batch_size=6, steps=6,
                        stepsize=2.0, m=3, c=0.5, beta_update=0.7, expand_coeff=1.5)
    y = torch.randn(24, 3, generator=g)
    torch.manual_seed(3)
    out["mlp_mse_m1"] = run("mlp_mse_m1", mlp(5, 7, 3), nn.MSELoss(reduction="sum"), X, y, batch_size=6, steps=5,
                            stepsize=0.1, m=1, c=0.1, beta_update=0.9, expand_coeff=2.0)
    path = os.path.join(here, "..", "..", "tests", "data", "sso_golden.pt")
    torch.save(out, path)
    print("wrote", os.path.normpath(path))


if __name__ == "__main__":
    main()
