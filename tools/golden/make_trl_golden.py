"""Golden values for the DPO family, made by running TRL 1.16's own loss code.

TRL computes the DPO losses inside ``DPOTrainer._compute_loss`` (trl/trainer/dpo_trainer.py of
trl==1.16.0, the PyPI release of github.com/huggingface/trl; the golden data record the release,
not a commit). This script calls that method, unmodified, on a minimal stand-in ``self`` (beta,
loss_types, f-divergence settings, an identity accelerator, a metrics dict) and a stand-in model
whose output carries the per-token log-probs we choose (zero outside the completion, as TRL's
fused head gives for label -100). Reference log-probs go in as precomputed
``ref_chosen_logps``/``ref_rejected_logps``. Each pair runs as its own batch of one, so the mean
TRL returns is that pair's loss.

TRL is not a dependency of gradwise. Make a separate environment and run from the repository root:

    python3 -m venv /work/research/trl-venv
    /work/research/trl-venv/bin/pip install torch==2.13.0
    /work/research/trl-venv/bin/pip install trl==1.16.0
    /work/research/trl-venv/bin/python tools/golden/make_trl_golden.py

Cases (each a dict in the list saved to tests/data/trl_dpo_golden.pt): ``loss_type`` (TRL's
name, ``"sigmoid+sft"`` meaning ``loss_type=["sigmoid", "sft"]`` with ``loss_weights=[1, w]``),
``f_divergence_type``, ``f_alpha_divergence_coef`` (TRL convention), ``beta``,
``label_smoothing``, ``sft_weight``, the sequence log-probs ``policy_chosen``,
``policy_rejected``, ``ref_chosen``, ``ref_rejected`` (shape [B]), the completion lengths
``chosen_len``/``rejected_len`` and TRL's per-pair ``loss`` (shape [B]). Float64 throughout,
except the alpha-divergence cases, which are float32 because TRL 1.16's clamp table has no
float64 entry.
"""
from __future__ import annotations

import os
from collections import defaultdict
from types import SimpleNamespace

import torch
import trl
from trl.trainer.dpo_trainer import DPOTrainer

assert trl.__version__ == "1.16.0", trl.__version__
here = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(here, "..", "..", "tests", "data", "trl_dpo_golden.pt")


class _Accel:
    device = torch.device("cpu")

    @staticmethod
    def gather_for_metrics(x):
        return x

    @staticmethod
    def gather(x):
        return x


class _Model:
    """Stand-in causal LM: returns the chosen per-token log-probs (rows: [chosen, rejected])."""

    training = False

    def __init__(self, per_token_logps):
        self.per_token_logps = per_token_logps

    def __call__(self, **kwargs):
        lp = self.per_token_logps
        return SimpleNamespace(log_probs=lp, entropy=torch.zeros_like(lp), mean_logits=torch.zeros_like(lp),
                               is_top1=torch.zeros_like(lp, dtype=torch.bool))


def trl_pair_loss(pc_tok, pr_tok, rc, rr, *, loss_types, loss_weights, beta, f_div, f_alpha, label_smoothing):
    """TRL's loss for one pair. pc_tok/pr_tok: 1-D per-token log-probs of the two completions."""
    t = max(len(pc_tok), len(pr_tok))
    dtype = pc_tok.dtype
    lp = torch.zeros(2, t, dtype=dtype)
    lp[0, : len(pc_tok)] = pc_tok
    lp[1, : len(pr_tok)] = pr_tok
    cmask = torch.zeros(2, t + 1, dtype=torch.long)  # position 0 is the prompt token
    cmask[0, 1 : 1 + len(pc_tok)] = 1
    cmask[1, 1 : 1 + len(pr_tok)] = 1
    model = _Model(lp)
    stand_in = SimpleNamespace(
        model=model, accelerator=_Accel(), aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type=f_div, f_alpha_divergence_coef=f_alpha, loss_types=loss_types, loss_weights=loss_weights,
        beta=beta, label_smoothing=label_smoothing, use_weighting=False, args=SimpleNamespace(discopop_tau=0.05),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )
    inputs = {
        "input_ids": torch.ones(2, t + 1, dtype=torch.long),
        "attention_mask": torch.ones(2, t + 1, dtype=torch.long),
        "completion_mask": cmask,
        "ref_chosen_logps": rc.reshape(1),
        "ref_rejected_logps": rr.reshape(1),
    }
    with torch.no_grad():
        return DPOTrainer._compute_loss(stand_in, model, inputs, return_outputs=False)


def make_inputs(gen, b, dtype, scale):
    """Per-token log-probs for b pairs (lengths 1..12) and reference sequence log-probs."""
    chosen_tok, rejected_tok = [], []
    for _ in range(b):
        lc, lr = (int(x) for x in torch.randint(1, 13, (2,), generator=gen))
        chosen_tok.append(-(torch.rand(lc, generator=gen, dtype=torch.float64) * scale))
        rejected_tok.append(-(torch.rand(lr, generator=gen, dtype=torch.float64) * scale))
    pc = torch.stack([c.sum() for c in chosen_tok])
    pr = torch.stack([r.sum() for r in rejected_tok])
    rc = pc + torch.randn(b, generator=gen, dtype=torch.float64) * scale
    rr = pr + torch.randn(b, generator=gen, dtype=torch.float64) * scale
    return ([c.to(dtype) for c in chosen_tok], [r.to(dtype) for r in rejected_tok], rc.to(dtype), rr.to(dtype))


def main():
    gen = torch.Generator().manual_seed(4)
    settings = []
    for beta in (0.1, 0.5):
        settings += [
            ("sigmoid", "reverse_kl", 0.5, beta, 0.0, 0.0),
            ("hinge", "reverse_kl", 0.5, beta, 0.0, 0.0),
            ("ipo", "reverse_kl", 0.5, beta, 0.0, 0.0),
            ("robust", "reverse_kl", 0.5, beta, 0.2, 0.0),
            ("sigmoid", "forward_kl", 0.5, beta, 0.0, 0.0),
            ("sigmoid", "js_divergence", 0.5, beta, 0.0, 0.0),
            ("sigmoid", "alpha_divergence", 0.5, beta, 0.0, 0.0),
            ("sigmoid", "alpha_divergence", 0.3, beta, 0.0, 0.0),
            ("sigmoid", "alpha_divergence", 0.8, beta, 0.0, 0.0),
            ("hinge", "js_divergence", 0.5, beta, 0.0, 0.0),
            ("sigmoid+sft", "reverse_kl", 0.5, beta, 0.0, 0.2),
        ]
    cases = []
    for loss_type, f_div, f_alpha, beta, ls, sft_w in settings:
        dtype = torch.float32 if f_div == "alpha_divergence" else torch.float64
        b = 8
        for scale in (0.5, 3.0):
            ct, rt, rc, rr = make_inputs(gen, b, dtype, scale)
            if loss_type == "sigmoid+sft":
                types_, weights = ["sigmoid", "sft"], [1.0, sft_w]
            else:
                types_, weights = [loss_type], [1.0]
            losses = torch.stack([
                trl_pair_loss(ct[i], rt[i], rc[i], rr[i], loss_types=types_, loss_weights=weights, beta=beta,
                              f_div=f_div, f_alpha=f_alpha, label_smoothing=ls)
                for i in range(b)
            ])
            cases.append(dict(
                loss_type=loss_type, f_divergence_type=f_div, f_alpha_divergence_coef=f_alpha, beta=beta,
                label_smoothing=ls, sft_weight=sft_w,
                policy_chosen=torch.stack([c.sum() for c in ct]), policy_rejected=torch.stack([r.sum() for r in rt]),
                ref_chosen=rc, ref_rejected=rr,
                chosen_len=torch.tensor([len(c) for c in ct]), rejected_len=torch.tensor([len(r) for r in rt]),
                loss=losses,
            ))
    torch.save({"trl_version": trl.__version__, "torch_version": str(torch.__version__), "cases": cases}, OUT)
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
