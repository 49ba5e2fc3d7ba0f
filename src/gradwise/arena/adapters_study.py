"""Study ``adapters``: adapters at (near-)equal trainable budget on a tiny random-init Llama LM, pretrained on a
copy task and fine-tuned on a reversal task: LoRA, Bone (PEFT MiSS ``init_weights="bat"``), DynMoLE (4 experts),
top-k MoLE (DynMoLE with its entropy routing and entropy loss off), DynMoLE without its auxiliary loss, DiffoRA and
SaRA.

Task: sequences of ``length`` symbols (vocabulary ``symbols``) followed by a task token and the answer: the same
symbols (copy, token 1) or reversed (reversal, token 2); the loss and the accuracy are on the answer tokens only.
Per seed, a ``transformers.LlamaConfig`` model (hidden 64, 2 layers, 4 heads, MLP 128) is pretrained on copy for
``pre_steps`` (Adam 3e-3), once, and each method fine-tunes a copy of it on reversal for ``steps`` (Adam ``lr``,
batch ``batch_size``).

Budget: every adapter sits on ``q_proj`` and ``v_proj`` of both layers (4 matrices of 64 x 64): LoRA r 8 (4096
trainable), Bone block 16 (4096), DiffoRA r 8 (4096 + 4 gates; its DAM is discretised, keeping half of the
modules, at half of the steps), DynMoLE and top-k MoLE 4 experts of r 2 (4096 + 1024 router), SaRA the 25 % of
those matrices' entries with the smallest magnitude (threshold: that quantile of |W|, 4096 entries, lr the
study's, not SaRA's 1e-3 exp(-350 threshold), which is meant for diffusion models' weight scale).

Top-k MoLE: ``DynMoLEConfig(top_p=1e-6, keep_top_k=2, entropy_threshold=1.0, entropy_coef=0)``: exactly the top-2
experts (weights not renormalised, as DynMoLE's), the entropy switch off, the load-balance term kept.
``dynmole-noaux`` is DynMoLE with both auxiliary coefficients 0, for the router-entropy plot.

Measured per run: ``rev_auc`` the mean reversal training loss over all steps (lower: faster convergence),
``rev_acc`` the reversal answer-token accuracy on 512 held-out sequences after fine-tuning, ``copy_acc`` the copy
accuracy after fine-tuning with the adapter on (forgetting: the pretrained model's copy accuracy is the reference
row), ``entropy`` the mean normalised Tsallis (q 1.1) router entropy over the run and ``switched`` the fraction
of routed tokens whose entropy exceeds 0.9 (DynMoLE's all-expert threshold), MoLE methods only.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE
from gradwise.arena.study import Column, Run, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "METHODS", "STUDY", "make_batch", "tiny_llama", "pretrain", "finetune", "claims"]

HELP = "LoRA vs Bone vs DynMoLE vs top-k MoLE vs DiffoRA vs SaRA on a tiny Llama: copy pretraining, reversal tuning"
METHODS = ("lora", "bone", "dynmole", "mole-topk", "dynmole-noaux", "diffora", "sara")
PRETRAINED = "pretrained (copy)"
COPY, REVERSE = 1, 2
TARGETS = ["q_proj", "v_proj"]


@dataclass(frozen=True)
class Config:
    steps: int = option(300, "fine-tuning steps on reversal per method", at_least=1)
    pre_steps: int = option(500, "copy pretraining steps per seed", at_least=1)
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    lr: float = option(3e-3, "Adam/AdamW learning rate of every adapter", at_least=1e-6, below=1.0)
    batch_size: int = 32
    length: int = 6
    symbols: int = 12
    hidden: int = 64
    layers: int = 2
    eval_size: int = 512
    threads: int = 1


def make_batch(cfg: Config, n: int, task: int, gen) -> tuple[Any, Any]:
    """``(tokens [n, 2L+1], labels)``: symbols, the task token, the answer; labels -100 except on the answer
    (shifted by the model)."""
    import torch

    x = torch.randint(3, 3 + cfg.symbols, (n, cfg.length), generator=gen)
    ans = x if task == COPY else x.flip(1)
    tokens = torch.cat([x, torch.full((n, 1), task), ans], 1)
    labels = tokens.clone()
    labels[:, :cfg.length + 1] = -100
    return tokens, labels


def tiny_llama(cfg: Config, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    conf = LlamaConfig(vocab_size=3 + cfg.symbols, hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                       num_hidden_layers=cfg.layers, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=4 * cfg.length + 4, tie_word_embeddings=False)
    return LlamaForCausalLM(conf)


def _accuracy(cfg: Config, model, task: int, seed: int) -> float:
    import torch

    tokens, labels = make_batch(cfg, cfg.eval_size, task, torch.Generator().manual_seed(90_000 + seed))
    with torch.no_grad():
        logits = model(input_ids=tokens).logits[:, cfg.length:-1]
    return float((logits.argmax(-1) == tokens[:, cfg.length + 1:]).float().mean())


def pretrain(cfg: Config, seed: int):
    """The seed's copy-pretrained model and its copy / reversal accuracy."""
    import torch

    torch.set_num_threads(cfg.threads)
    model = tiny_llama(cfg, seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(10_000 + seed)
    for _ in range(cfg.pre_steps):
        tokens, labels = make_batch(cfg, cfg.batch_size, COPY, gen)
        loss = model(input_ids=tokens, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return model, _accuracy(cfg, model, COPY, seed), _accuracy(cfg, model, REVERSE, seed)


def _wrap(cfg: Config, method: str, model):
    """The adapted model, its optimiser, and the per-step extra (router loss) function."""
    import torch

    from gradwise import peft as gp

    for p in model.parameters():
        p.requires_grad_(False)
    if method == "sara":
        ws = [m.weight for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in TARGETS]
        threshold = float(torch.quantile(torch.cat([w.detach().abs().flatten() for w in ws]), 0.25))
        for w in ws:
            w.requires_grad_(True)
        return model, gp.SaRA(ws, threshold=threshold, lr=cfg.lr), None
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    elif method == "bone":
        from peft import get_peft_model

        model = get_peft_model(model, gp.bone_config(16, target_modules=TARGETS))
    elif method == "diffora":
        model = gp.get_diffora_model(model, gp.DiffoRAConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    else:
        route = dict(top_p=1e-6, keep_top_k=2, entropy_threshold=1.0, entropy_coef=0.0) if method == "mole-topk" \
            else dict(entropy_coef=0.0, balance_coef=0.0) if method == "dynmole-noaux" else {}
        model = gp.get_dynmole_model(model, gp.DynMoLEConfig(r=2, lora_alpha=4, num_experts=4,
                                                             target_modules=TARGETS, **route))
    params = [p for p in model.parameters() if p.requires_grad]
    aux = (lambda m: gp.dynmole_model_router_loss(m)) if method in ("dynmole", "mole-topk", "dynmole-noaux") else None
    return model, torch.optim.Adam(params, lr=cfg.lr), aux


def _router_entropy(model) -> tuple[float, float]:
    """The last forward's normalised Tsallis (q 1.1) router entropy, mean over layers and tokens, and the
    fraction of routed tokens above 0.9 (where DynMoLE's all-expert switch fires)."""
    import torch
    import torch.nn.functional as F

    from gradwise.peft import tsallis_entropy

    logits = [m.dynmole_logits["default"] for m in model.modules() if hasattr(m, "dynmole_config")]
    ent = torch.cat([tsallis_entropy(F.softmax(x.detach(), -1), 1.1) for x in logits])
    return float(ent.mean()), float((ent > 0.9).double().mean())


def finetune(cfg: Config, method: str, seed: int, pretrained) -> dict[str, Any]:
    """Fine-tunes a copy of ``pretrained`` on reversal with ``method``; returns the run's row."""
    import copy

    import torch

    from gradwise.peft import diffora_discretize

    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(1_000 + seed)
    model, opt, aux = _wrap(cfg, method, copy.deepcopy(pretrained))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if method == "sara":
        trainable = sum(int(m.sum()) for m in opt.masks)
    model.train()
    gen = torch.Generator().manual_seed(20_000 + seed)
    losses, entropies, switched = [], [], []
    for step in range(cfg.steps):
        if method == "diffora" and step == cfg.steps // 2:
            diffora_discretize(model)
        tokens, labels = make_batch(cfg, cfg.batch_size, REVERSE, gen)
        loss = model(input_ids=tokens, labels=labels).loss
        total = loss if aux is None else loss + aux(model)
        if aux is not None:
            ent, above = _router_entropy(model)
            entropies.append(ent)
            switched.append(above)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return dict(method=method, seed=seed, trainable=trainable, rev_auc=statistics.fmean(losses),
                rev_final=statistics.fmean(losses[-max(1, cfg.steps // 10):]),
                rev_acc=_accuracy(cfg, model, REVERSE, seed), copy_acc=_accuracy(cfg, model, COPY, seed),
                entropy=statistics.fmean(entropies) if entropies else math.nan,
                switched=statistics.fmean(switched) if switched else math.nan, losses=losses,
                entropies=entropies, wall_s=time.perf_counter() - t0)


# ----------------------------------------------------------------- the study on the driver

def _seed_setup(run: Run, seed: int):
    t0 = time.perf_counter()
    model, copy_acc, rev_acc = pretrain(run.cfg, seed)
    return model, dict(method=PRETRAINED, seed=seed, copy_acc=copy_acc, rev_acc=rev_acc,
                       wall_s=time.perf_counter() - t0)


def _paired(rows: list[dict[str, Any]], a: str, b: str, key: str) -> tuple[float, float, int]:
    """Mean and 95% half-width over seeds of row[a][key] − row[b][key] (seeds where both ran)."""
    from gradwise.arena.stats import mean_ci

    by = {(r["method"], r["seed"]): r[key] for r in rows}
    d = [by[(a, s)] - by[(b, s)] for s in sorted({r["seed"] for r in rows}) if (a, s) in by and (b, s) in by]
    if not d:
        return math.nan, math.nan, 0
    m, h = mean_ci(d)
    return m, h, len(d)


# (claim, a, b, key, sign): SHOWN when the interval of sign * (a - b) lies above 0
CLAIMS = (("Bone converges faster than LoRA (mean reversal loss)", "bone", "lora", "rev_auc", -1),
          ("DynMoLE beats LoRA (reversal accuracy)", "dynmole", "lora", "rev_acc", 1),
          ("DynMoLE beats top-k MoLE (reversal accuracy)", "dynmole", "mole-topk", "rev_acc", 1),
          ("SaRA forgets less copy than LoRA (copy accuracy)", "sara", "lora", "copy_acc", 1))


def claims(rows: list[dict[str, Any]]) -> list[tuple[str, str, float, float, int]]:
    """Each claim's verdict (SHOWN / NOT SHOWN / not run), the paired difference a − b and its 95% half-width."""
    out = []
    for text, a, b, key, sign in CLAIMS:
        m, h, n = _paired(rows, a, b, key)
        if n == 0:
            verdict = "not run"
        else:
            verdict = "SHOWN" if n > 1 and math.isfinite(h) and sign * m - h > 0 else "NOT SHOWN"
        out.append((text, verdict, m, h, n))
    return out


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gradwise.arena.stats import mean_ci_fields, rank_summaries

    summary = []
    for method in run.methods:
        rs = [r for r in rows if r["method"] == method]
        if rs:
            routed = rs[0]["entropies"] != []  # the MoLE methods; the others have no router (entropy nan)
            summary.append(dict(method=method, runs=len(rs), trainable=rs[0]["trainable"],
                                **mean_ci_fields(rs, ("rev_acc", "rev_auc", "copy_acc")),
                                **(mean_ci_fields(rs, ("entropy", "switched")) if routed else
                                   {f"{k}_{x}": math.nan for k in ("entropy", "switched")
                                    for x in ("mean", "std", "ci")}),
                                wall_s_mean=statistics.fmean(r["wall_s"] for r in rs)))
    run.state["claims"] = claims(rows)
    run.state["curves"] = {m: [r["entropies"] for r in rows if r["method"] == m and r["entropies"]]
                           for m in ("dynmole", "dynmole-noaux", "mole-topk")}
    return rank_summaries(summary, "rev_acc")


def _fmt(m: float, h: float, d: int = 3) -> str:
    return "-" if m != m else f"{m:.{d}f}" + ("" if h != h else f" ± {h:.{d}f}")


def _reference_row(run: Run, summary: list[dict[str, Any]]) -> list[list[str]]:
    from gradwise.arena.stats import mean_ci

    refs = run.references
    c = mean_ci([r["copy_acc"] for r in refs])
    rv = mean_ci([r["rev_acc"] for r in refs])
    return [["", f"[dim]{PRETRAINED}[/dim]", "", f"[dim]{_fmt(*rv)}[/dim]", "—", f"[dim]{_fmt(*c)}[/dim]", "—", "—",
             f"[dim]{statistics.fmean(r['wall_s'] for r in refs):.1f}[/dim]"]]


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"adapters: tiny Llama (hidden {cfg.hidden}, {cfg.layers} layers) pretrained on copy "
            f"({cfg.pre_steps} steps), fine-tuned on reversal ({cfg.steps} steps, lr {cfg.lr:g}), {cfg.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    lines = [f"ranked on reversal accuracy; {CI_NOTE}; rev loss: mean training loss over all steps (lower is "
             "faster); copy acc: after fine-tuning, adapter on (the pretrained row is before); entropy: normalised "
             "Tsallis (q 1.1) router entropy, mean over the run; H > 0.9: fraction of routed tokens above 0.9, where "
             "DynMoLE routes to every expert", "claims (paired over seeds, a - b, 95% interval):"]
    for text, verdict, m, h, n in run.state.get("claims", []):
        lines.append(f"  {verdict}: {text}: {_fmt(m, h, 4)} over {n} seed(s)")
    return "\n".join(lines)


def _write_plot(out: Path, run: Run, rows: list[dict[str, Any]], summary: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gradwise.arena.report import wrap_title

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, m in enumerate(run.methods):
        curves = [r["losses"] for r in rows if r["method"] == m]
        if curves:
            a1.plot([statistics.fmean(c) for c in zip(*curves)], label=m, color=f"C{i}")
    a1.set_xlabel("step")
    a1.set_ylabel("reversal training loss (mean over seeds)")
    a1.set_yscale("log")
    a1.legend(fontsize=8)
    labels = {"dynmole": "DynMoLE (entropy + balance loss)", "dynmole-noaux": "DynMoLE, no auxiliary loss",
              "mole-topk": "top-2 MoLE (balance loss only)"}
    for i, (m, curves) in enumerate(run.state.get("curves", {}).items()):
        if curves:
            a2.plot([statistics.fmean(c) for c in zip(*curves)], label=labels[m], color=f"C{i}")
    a2.set_xlabel("step")
    a2.set_ylabel("router entropy (normalised Tsallis q 1.1)")
    a2.legend(fontsize=8)
    fig.suptitle(wrap_title(title, 130), fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "adapters.png", dpi=110)
    plt.close(fig)


STUDY = register_study(Study(
    name="adapters", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    seed_setup=_seed_setup, seed_setup_label="pretraining", seeds_outer=True,
    run_one=lambda run, method, seed, shared: finetune(run.cfg, method, seed, shared),
    summarize=_summarize, title=_title, notes=_notes, extra_table_rows=_reference_row,
    columns=(Column("method", lambda s: s["method"], "left"), Column("trainable", lambda s: str(s["trainable"])),
             ci_column("rev acc", "rev_acc", 3), ci_column("rev loss", "rev_auc", 3),
             ci_column("copy acc", "copy_acc", 3), Column("entropy", lambda s: _fmt(s["entropy_mean"],
                                                                                   s["entropy_ci"])),
             Column("H > 0.9", lambda s: "-" if s["switched_mean"] != s["switched_mean"]
                    else f"{s['switched_mean']:.3f}"),
             Column("s/run", lambda s: f"{s['wall_s_mean']:.1f}")),
    csv_skip=("losses", "entropies"), write_files=_write_plot, outputs=("adapters.png",),
    smoke=("--seeds", "1", "--steps", "2", "--pre-steps", "2"),
))
add_arguments, run = STUDY.add_arguments, STUDY.run
