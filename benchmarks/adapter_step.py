"""MiSS-bat (Bone) and DiffoRA cost: forward + backward against PEFT LoRA at an equal trainable budget.

    python benchmarks/adapter_step.py [--width 512] [--tokens 1024] [--rank 8] [--rounds 10] [--reps 3]
                                      [--threads N] [--markdown PATH] [--json PATH]

Workload: a float32 MLP ``Linear(W, W) -> ReLU -> Linear(W, W)``, both layers adapted, on a batch of 8 sequences
(``--tokens`` tokens in all); one step = ``zero_grad``, forward, ``mean(y²).backward()``. Candidates, timed
interleaved in one process, each with the trainable budget of PEFT LoRA of rank r (2·W·r per layer):

* PEFT LoRA (``LoraConfig(r)``), the baseline;
* MiSS-bat / Bone (``gradwise.peft.bone_config(2r)``, PEFT's ``MissConfig(init_weights="bat")``): ``out/b · b · b
  = W·2r`` per layer with block size b = 2r;
* DiffoRA relaxed (``gradwise.peft.get_diffora_model``, rank r, the search phase: every module gated by σ(γ); one
  more scalar per module);
* DiffoRA discretised with every module kept (``select_ratio=1``: the fine-tuning phase at the same budget).

Adapter weights are drawn from N(0, 0.02²) so that every path is non-trivial. ratio = median candidate / median
LoRA, target <= 1.3 (issue 20).
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # harness.py sits beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

TARGET = 1.3
CANDIDATES = ("MiSS-bat (Bone)", "DiffoRA relaxed", "DiffoRA discretised")


def _models(width: int, rank: int) -> dict[str, nn.Module]:
    from peft import LoraConfig, get_peft_model

    from gradwise.peft import DiffoRAConfig, bone_config, diffora_discretize, get_diffora_model

    def base():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    targets = ["0", "2"]
    models = {
        "LoRA": get_peft_model(base(), LoraConfig(r=rank, lora_alpha=16, target_modules=targets)),
        "MiSS-bat (Bone)": get_peft_model(base(), bone_config(2 * rank, target_modules=targets)),
        "DiffoRA relaxed": get_diffora_model(base(), DiffoRAConfig(r=rank, lora_alpha=16, target_modules=targets)),
        "DiffoRA discretised": get_diffora_model(base(), DiffoRAConfig(r=rank, lora_alpha=16,
                                                                       target_modules=targets, select_ratio=1.0)),
    }
    diffora_discretize(models["DiffoRA discretised"])
    for m in models.values():
        with torch.no_grad():
            for n, p in m.named_parameters():
                if p.requires_grad:
                    p.normal_(0, 0.02)
    return models


def trainable(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def run(width: int, tokens: int, rank: int, rounds: int, reps: int, warmup: int = 2, seed: int = 0) -> dict:
    x = torch.randn(8, max(1, tokens // 8), width, generator=torch.Generator().manual_seed(seed))
    models = _models(width, rank)
    cands, notes = {}, []
    for name, m in models.items():
        def step(m=m):
            m.zero_grad(set_to_none=True)
            m(x).pow(2).mean().backward()
        cands[name] = harness.Candidate(name, step)
    harness.interleave(cands, rounds=rounds, steps=reps, warmup=warmup, seed=seed, mode="shuffled", notes=notes)
    lo = cands["LoRA"]
    rows = []
    for name in CANDIDATES:
        if name not in cands:
            continue
        c = cands[name]
        ratio = statistics.median(c.samples_ms) / statistics.median(lo.samples_ms)
        rows.append(dict(candidate=name, trainable=trainable(models[name]), lora_trainable=trainable(models["LoRA"]),
                         lora_ms=statistics.median(lo.samples_ms), ms=statistics.median(c.samples_ms), ratio=ratio,
                         paired=harness.paired_ratio(c, lo), verdict="PASS" if ratio <= TARGET else "MISS"))
    return dict(rows=rows, notes=notes, width=width, rank=rank, tokens=x.shape[0] * x.shape[1], rounds=rounds,
                reps=reps, warmup=warmup, machine=harness.machine_description(), **harness.machine_info())


def to_markdown(res: dict) -> str:
    lines = [
        "## MiSS-bat (Bone) and DiffoRA forward + backward time",
        "",
        "Written by `python benchmarks/adapter_step.py --markdown PATH` (issue 20); every number below is from "
        "that one run.",
        "",
        *harness.info_lines(res, "peft"),
        f"- Workload: float32 MLP Linear({res['width']}, {res['width']}) -> ReLU -> Linear, both adapted, "
        f"{res['tokens']} tokens; one step = zero_grad + forward + backward of mean(y^2); PEFT LoRA of rank "
        f"{res['rank']} against MiSS-bat (Bone) of block size {2 * res['rank']} and DiffoRA of rank {res['rank']} "
        "(relaxed: every module gated by sigmoid(gamma); discretised: every module kept), equal trainable budget",
        f"- Method: {res['warmup']} warm-up rounds, then {res['rounds']} rounds x {res['reps']} steps of every "
        "candidate in shuffled order; median ms/step; ratio = candidate / LoRA, paired = median over rounds of the "
        f"per-round ratio; target <= {TARGET} (PASS/MISS)",
        "",
        *harness.markdown_table(("candidate", "trainable", "LoRA trainable", "LoRA ms", "ms", "ratio", "paired",
                                 "target"),
                                ((r["candidate"], str(r["trainable"]), str(r["lora_trainable"]), f"{r['lora_ms']:.2f}",
                                  f"{r['ms']:.2f}", f"{r['ratio']:.2f}",
                                  "" if r["paired"] is None else f"{r['paired']:.2f}", r["verdict"])
                                 for r in res["rows"]), left=(0,)),
        *harness.note_lines(res),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return harness.int_options_main(
        argv, __doc__.splitlines()[0], dict(width=512, tokens=1024, rank=8, rounds=10, reps=3), run, to_markdown,
        "adapter_step", lambda r: f"{r['candidate']:<22} LoRA {r['lora_ms']:8.2f} ms  {r['ms']:8.2f} ms  "
                                  f"x{r['ratio']:.2f}  {r['verdict']}")


if __name__ == "__main__":
    sys.exit(main())
