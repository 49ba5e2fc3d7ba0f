"""Golden D3PO losses and DDIM step log-probabilities, made by running the authors' code (yk7333/D3PO).

Source: github.com/yk7333/D3PO at commit 40d3175:

* ``d3po_pytorch/diffusers_patch/ddim_with_logprob.py`` (``ddim_step_with_logprob``, DDPO's copy of
  diffusers' DDIM step that returns the log-prob of a given ``prev_sample``), imported as is with
  diffusers 0.42.1. It imports ``randn_tensor`` from ``diffusers.utils``, where diffusers kept it until
  0.2x; ``diffusers.utils.randn_tensor`` is set to ``diffusers.utils.torch_utils.randn_tensor`` first
  (it is not called: ``prev_sample`` is always given). Schedulers are ``DDIMScheduler``s (Stable
  Diffusion's scaled-linear betas, and a linear one with ``clip_sample``) after ``set_timesteps``, with
  ``alphas_cumprod`` and ``final_alpha_cumprod`` cast to float64; the batch of timesteps includes the
  last step (whose previous timestep the reference clamps to 0).
* ``scripts/train.py``: the three statements computing ``ratio_0``, ``ratio_1`` and ``loss`` (after the
  log-probs, in ``main``) are lifted out with ``ast`` and executed unchanged with ``config.train.beta``,
  ``config.train.eps``, the four log-prob tensors and ``human_prefer`` ([B, 2]: +1/-1, or 0/0 for a
  tie). Their ``loss`` is the batch mean, so each stored per-element loss comes from running the
  statements on that one element (B = 1); for [B, T] inputs, once per element and step. The batch
  means of whole batches are stored too.

The default dtype is float64 during the run (their Gaussian constant is
``torch.log(torch.sqrt(2 * torch.as_tensor(math.pi)))``, float32 otherwise).

    D3PO_REF=/path/to/D3PO PYTHONPATH=src python tools/golden/make_d3po_golden.py

with their checkout from ``git archive 40d3175 d3po_pytorch/diffusers_patch scripts/train.py | tar -x``;
run with torch 2.13.0 and diffusers 0.42.1 on CPU. Writes tests/data/d3po_golden.pt.
"""
import ast
import math
import os
import sys
import types
from pathlib import Path

import diffusers.utils
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

torch.set_default_dtype(torch.float64)
OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "d3po_golden.pt"
REF = Path(os.environ["D3PO_REF"])
diffusers.utils.randn_tensor = randn_tensor
sys.path.insert(0, str(REF / "d3po_pytorch" / "diffusers_patch"))
from ddim_with_logprob import ddim_step_with_logprob  # noqa: E402

out: dict = {}
g = torch.Generator().manual_seed(0)

# -- DDIM step log-probs ------------------------------------------------------------------------------------------
SCHEDULERS = {
    "sd": dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
               clip_sample=False, set_alpha_to_one=False, steps_offset=1),
    "linear_clip": dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                        clip_sample=True, clip_sample_range=1.0),
}
steps = []
for sname, cfg in SCHEDULERS.items():
    for pred in ("epsilon", "sample", "v_prediction"):
        for eta, n_inf in ((1.0, 20), (0.5, 50)):
            sched = DDIMScheduler(**cfg, prediction_type=pred)
            sched.set_timesteps(n_inf)
            sched.alphas_cumprod = sched.alphas_cumprod.double()
            sched.final_alpha_cumprod = torch.as_tensor(sched.final_alpha_cumprod).double()
            ts = sched.timesteps[torch.tensor([0, 3, n_inf // 2, n_inf - 2, n_inf - 1])]
            shape = (len(ts), 2, 4, 4)
            model_output = torch.randn(shape, generator=g)
            sample = torch.randn(shape, generator=g) * 1.5
            prev = torch.randn(shape, generator=g)
            _, logp = ddim_step_with_logprob(sched, model_output, ts, sample, eta=eta, prev_sample=prev)
            steps.append(dict(scheduler=sname, prediction_type=pred, eta=eta, num_inference_steps=n_inf,
                              timesteps=ts.clone(), model_output=model_output, sample=sample, prev_sample=prev,
                              logp=logp))
out["ddim"] = steps
out["schedulers"] = SCHEDULERS

# -- D3PO loss: the three statements of scripts/train.py ----------------------------------------------------------
src = (REF / "scripts" / "train.py").read_text()
targets = ("ratio_0", "ratio_1", "loss")
stmts = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Assign) and len(n.targets) == 1
         and isinstance(n.targets[0], ast.Name) and n.targets[0].id in targets and "ratio" in ast.unparse(n)]
stmts = sorted({id(s): s for s in stmts}.values(), key=lambda s: s.lineno)
assert [s.targets[0].id for s in stmts] == list(targets), [ast.unparse(s) for s in stmts]
code = compile(ast.Module(body=stmts, type_ignores=[]), "train.py", "exec")


def their_loss(beta, eps, p0, r0, p1, r1, prefer):
    ns = dict(torch=torch, config=types.SimpleNamespace(train=types.SimpleNamespace(beta=beta, eps=eps)),
              total_prob_0=p0, total_ref_prob_0=r0, total_prob_1=p1, total_ref_prob_1=r1, human_prefer=prefer)
    exec(code, ns)
    return ns["loss"]


losses = []
for shape, beta, eps, spread in (((12,), 0.1, 0.1, 0.2), ((12,), 1.0, 0.1, 0.05), ((6, 4), 0.5, 0.3, 0.3),
                                 ((8,), 5.0, 0.05, 1e-3)):
    pc, pr = torch.randn(shape, generator=g) - 3, torch.randn(shape, generator=g) - 3
    rc, rr = pc + spread * torch.randn(shape, generator=g), pr + spread * torch.randn(shape, generator=g)
    ties = torch.zeros(shape[0], dtype=torch.bool)
    ties[::5] = True
    # sample 0 preferred (chosen) in even rows, sample 1 in odd rows: both orders of the authors' pair
    swap = torch.arange(shape[0]) % 2 == 1
    elem = torch.empty(shape)
    for b in range(shape[0]):
        for t in range(shape[1] if len(shape) == 2 else 1):
            ix = (b, t) if len(shape) == 2 else (b,)
            w, l, rw, rl = (pc[ix].reshape(1), pr[ix].reshape(1), rc[ix].reshape(1), rr[ix].reshape(1))
            s = torch.tensor([[0, 0]]) if ties[b] else torch.tensor([[1, -1]])
            if swap[b]:
                elem[ix] = their_loss(beta, eps, l, rl, w, rw, s.flip(1))
            else:
                elem[ix] = their_loss(beta, eps, w, rw, l, rl, s)
    # whole-batch means (no ties, [B] cases), as their script computes them
    batch_mean = their_loss(beta, eps, pc, rc, pr, rr, torch.tensor([[1, -1]] * shape[0])) if len(shape) == 1 else None
    losses.append(dict(policy_chosen=pc, policy_rejected=pr, ref_chosen=rc, ref_rejected=rr, beta=beta, eps=eps,
                       ties=ties, loss=elem, batch_mean=batch_mean))
out["d3po"] = losses
torch.save(out, OUT)
print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
