"""Golden reward fine-tuning losses (ControlNet++, Ctrl-U), made by running the authors' loss arithmetic.

Sources (``git show <commit>:<path>`` into a folder, passed as REWARD_REF):

* github.com/liming-ai/ControlNet_Plus_Plus @ 8ded27a: ``train/reward_control.py`` saved as ``cnpp_reward_control.py``
  and ``train/utils.py`` as ``cnpp_utils.py``;
* github.com/grenoble-zhang/Ctrl-U @ 704d51d: ``train/ctrlu-reward.py`` saved as ``ctrlu_reward.py`` and
  ``train/utils.py`` as ``ctrlu_utils.py``.

From each training script the statements of one training step after the models' inputs are ready are
lifted out as source text and executed unchanged: ControlNet++ from ``# Predict the single-step denoised
latents`` to ``loss = pretrain_loss + reward_loss * args.grad_scale``; Ctrl-U from ``timesteps_add =
timesteps + args.add_timestep`` to ``loss = pretrain_loss + reward_loss * grad_scale +
torch.mean(variance)``, after their three uncertainty lines (``uncertainty_sm = ...`` to
``kl_distance = ...``). ``get_reward_loss`` is taken from each ``utils.py`` with ``ast`` (their utils import
mmseg, transformers and torchvision at the top, which are not installed). The script runs in a namespace
with stand-ins for what the block calls but does not define: a diffusers 0.42.1 ``DDPMScheduler`` with
Stable Diffusion's config (scaled_linear, 0.00085..0.012, clip_sample off), float64 alphas_cumprod; the
UNet as a seeded toy epsilon-model ``eps(x_t, t) = tanh(x_t W) * 0.8 + 0.1 x_t + t/1000``; the VAE as
``decode(z) = z * scaling_factor`` (so the decoded image is the one-step x0 prediction); the reward model as
per-pixel class logits ``einsum(image, R) + c`` ([B, C, H, W]); ``normalize`` as the per-channel
``(x - mean) / std`` of torchvision; ``label_transform`` as identity (labels already at the logits' size,
no background 255); the ControlNet as returning no residuals; ``args`` as the ADE20K segmentation
settings (ControlNet++ max_timestep_rewarding 200, grad_scale 0.5; Ctrl-U 400, grad_scale 0.1, u_scale 1,
add_timestep 1, global_step past the warm-up).

Stored: the inputs, the batch scalars (reward_loss, and for Ctrl-U variance), and per-sample values from
running each block on one sample at a time (B = 1; rewarded samples only).

    REWARD_REF=/tmp/drw PYTHONPATH=src /work/main/.venv/bin/python tools/golden/make_reward_tuning_golden.py

Run with torch 2.13.0 and diffusers 0.42.1 on CPU, default dtype float64. Writes
tests/data/reward_tuning_golden.pt.
"""
import ast
import os
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DDPMScheduler

torch.set_default_dtype(torch.float64)
REF = Path(os.environ["REWARD_REF"])


def block(path, start, end):
    lines = (REF / path).read_text().splitlines()
    i = next(k for k, s in enumerate(lines) if s.strip().startswith(start))
    j = next(k for k in range(i, len(lines)) if lines[k].strip().startswith(end))
    body = lines[i:j + 1]
    indent = min(len(s) - len(s.lstrip()) for s in body if s.strip())
    return "\n".join(s[indent:] for s in body)


def function(path, name):
    tree = ast.parse((REF / path).read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    ns = {"nn": nn, "torch": torch}
    exec(compile(ast.Module([node], []), str(path), "exec"), ns)
    return ns[name]


def normalize(x, mean, std):
    m = torch.tensor(mean).reshape(1, -1, 1, 1)
    s = torch.tensor(std).reshape(1, -1, 1, 1)
    return (x - m) / s


SCALING = 0.18215
B, CH, H, W, NCLS = 6, 3, 4, 4, 5
g = torch.Generator().manual_seed(0)
EPS_W = torch.randn(CH, CH, generator=g) * 0.5
REW_R = torch.randn(CH, NCLS, generator=g)
REW_C = torch.randn(NCLS, generator=g) * 0.1
x0 = torch.randn(B, CH, H, W, generator=g) * 0.7
noise = torch.randn(B, CH, H, W, generator=g)
labels = torch.randint(0, NCLS, (B, H, W), generator=g)


def eps_model(x, t):
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1)
    return torch.tanh(torch.einsum("bchw,cd->bdhw", x, EPS_W)) * 0.8 + 0.1 * x + t / 1000.0


def reward_model(image):
    return torch.einsum("bchw,cn->bnhw", image, REW_R) + REW_C.reshape(1, -1, 1, 1)


def scheduler():
    s = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, prediction_type="epsilon")
    s.alphas_cumprod = s.alphas_cumprod.to(torch.float64)
    return s


vae = types.SimpleNamespace(config=types.SimpleNamespace(scaling_factor=SCALING),
                            decode=lambda z: types.SimpleNamespace(sample=z * SCALING))
stubs = dict(torch=torch, F=F, normalize=normalize, vae=vae, weight_dtype=torch.float64,
             reward_model=reward_model, label_transform=lambda labels, *a, **k: labels,
             accelerator=types.SimpleNamespace(device="cpu"),
             torchvision=types.SimpleNamespace(transforms=None),
             transformers=types.SimpleNamespace(modeling_outputs=types.SimpleNamespace(DepthEstimatorOutput=type(
                 "DepthEstimatorOutput", (), {}))))

# ---- ControlNet++ -------------------------------------------------------------------------------------------
CN_T = torch.tensor([0, 37, 120, 200, 201, 650])
cn_code = block("cnpp_reward_control.py", "# Predict the single-step denoised latents",
                "loss = pretrain_loss + reward_loss * args.grad_scale")
cn_args = types.SimpleNamespace(task_name="segmentation", dataset_name="ade20k", min_timestep_rewarding=0,
                                max_timestep_rewarding=200, grad_scale=0.5, train_batch_size=B)


def run_cnpp(idx):
    sch = scheduler()
    t = CN_T[idx]
    lat, nz = x0[idx], noise[idx]
    noisy = sch.add_noise(lat, nz, t)
    ns = dict(stubs, noise_scheduler=sch, model_pred=eps_model(noisy, t), timesteps=t, noisy_latents=noisy,
              args=types.SimpleNamespace(**{**vars(cn_args), "train_batch_size": len(idx)}),
              batch={"labels": labels[idx]}, pretrain_loss=torch.tensor(0.0),
              get_reward_loss=function("cnpp_utils.py", "get_reward_loss"))
    exec(cn_code, ns)
    return ns["reward_loss"]


cnpp = {"timesteps": CN_T, "reward_loss": run_cnpp(torch.arange(B)),
        "per_sample": torch.stack([run_cnpp(torch.tensor([i])) for i in range(B)])}

# ---- Ctrl-U -------------------------------------------------------------------------------------------------
CU_T = torch.tensor([0, 15, 199, 398, 399, 400])
cu_code = block("ctrlu_reward.py", "timesteps_add = timesteps + args.add_timestep",
                "loss = pretrain_loss + reward_loss * grad_scale + torch.mean(variance)")
cu_args = types.SimpleNamespace(task_name="segmentation", dataset_name="ade20k", min_timestep_rewarding=0,
                                max_timestep_rewarding=400, grad_scale=0.1, u_scale=1.0, add_timestep=1,
                                linear_reward_scale_steps=5000)


def unet(noisy_latents, timesteps, **kw):
    return types.SimpleNamespace(sample=eps_model(noisy_latents, timesteps))


def run_ctrlu(idx):
    sch = scheduler()
    lat = x0[idx]
    ns = dict(stubs, noise_scheduler=sch, timesteps=CU_T[idx].clone(), latents=lat, noise=noise[idx],
              encoder_hidden_states=torch.zeros(len(idx), 1), controlnet_image=torch.zeros(len(idx), 1),
              controlnet=lambda *a, **k: ([], torch.zeros(1)), unet=unet, global_step=10 ** 6,
              args=types.SimpleNamespace(**{**vars(cu_args), "train_batch_size": len(idx)}),
              batch={"labels": labels[idx]}, get_reward_loss=function("ctrlu_utils.py", "get_reward_loss"),
              Path=Path)
    exec(block("ctrlu_reward.py", "uncertainty_sm = ", "kl_distance = "), ns)
    exec(cu_code, ns)
    return ns["reward_loss"], ns["variance"], ns["loss"] - ns["pretrain_loss"]


rl, var, tot = run_ctrlu(torch.arange(B))
per = [run_ctrlu(torch.tensor([i])) for i in range(B)]
ctrlu = {"timesteps": CU_T, "reward_loss": rl, "variance": var, "reward_plus_variance": tot,
         "per_sample_reward": torch.stack([p[0] for p in per]), "per_sample_variance": torch.stack([p[1] for p in per])}

out = {"x0": x0, "noise": noise, "labels": labels, "eps_w": EPS_W, "rew_r": REW_R, "rew_c": REW_C,
       "scaling": SCALING, "controlnet_pp": cnpp, "ctrl_u": ctrlu,
       "alphas_cumprod": scheduler().alphas_cumprod}
dst = Path(__file__).parents[2] / "tests" / "data" / "reward_tuning_golden.pt"
torch.save(out, dst)
print("wrote", dst, {k: v for k, v in cnpp.items()}, {k: v for k, v in ctrlu.items()})
