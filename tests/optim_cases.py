"""One entry per gradwise optimizer: a constructor with settings that exercise its machinery."""
import torch

import gradwise.optim as go

# name -> kwargs; small reset intervals so that save/load crosses a reset
CASES = {
    "AdaBelief": dict(lr=1e-2, weight_decay=1e-2),
    "AdaBelief-amsgrad": dict(lr=1e-2, rectify=False, amsgrad=True),
    "DiffGrad": dict(lr=1e-2, weight_decay=1e-2),
    "AdamP": dict(lr=1e-2, weight_decay=1e-2, nesterov=True),
    "SGDP": dict(lr=1e-2, momentum=0.9, weight_decay=1e-2),
    "Lion": dict(lr=1e-3, weight_decay=0.1),
    "LionK": dict(lr=1e-3, k="lp", p=1.5, weight_decay=0.1),
    "SPAM": dict(lr=1e-2, reset_interval=7, warmup_steps=3, clip_delay=2, spike_threshold=50),
    "StableSPAM": dict(lr=1e-2, reset_interval=7, beta1_schedule_steps=20),
    "SGDSaI": dict(lr=1e-3),
    "OrthoAdamW": dict(lr=1e-2, weight_decay=1e-2),
}


# cases whose configuration has no fused kernel: LionK(k="lp", fused=True) is a ValueError,
# so their fused=True runs are made with the default (fused=None, i.e. the _foreach_ path)
NO_FUSED_KERNEL = {"LionK"}


def make(name, params, **extra):
    cls = getattr(go, name.split("-")[0])
    if name in NO_FUSED_KERNEL and extra.get("fused") is True:
        extra = {**extra, "fused": None}
    return cls(params, **{**CASES[name], **extra})


# optimizer wrappers (registry kind "optimizer-wrapper") -> kwargs, base optimizer included
WRAPPER_CASES = {
    "OrthoGrad": dict(base_optimizer_cls=torch.optim.AdamW, lr=1e-2),
}
