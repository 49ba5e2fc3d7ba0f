"""DynMoLE's cost: forward + backward of a model with DynMoLE adapters against PEFT LoRA at equal total rank.

    python benchmarks/dynmole_step.py [--width 512] [--tokens 1024] [--rank 8] [--rounds 10] [--reps 3]
                                      [--threads N] [--markdown PATH] [--json PATH]

Workload: a float32 MLP ``Linear(W, W) -> ReLU -> Linear(W, W)``, both layers adapted, on a batch of 8 sequences
(``--tokens`` tokens in all); one step = ``zero_grad``, forward, ``mean(y²).backward()``. Candidates, timed
interleaved in one process: ``gradwise.peft.get_dynmole_model`` with E experts of rank r (E = 4 and 6, the
authors' default) and PEFT's LoRA (``peft.get_peft_model``, ``LoraConfig``) of rank E·r; adapter weights drawn
from N(0, 0.02²) so that every path is non-trivial. ratio = median DynMoLE / median LoRA, target <= 1.5
(issue 20).
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

TARGET = 1.5
EXPERTS = (4, 6)


def _models(width: int, rank: int, experts: int):
    from peft import LoraConfig, get_peft_model

    from gradwise.peft import DynMoLEConfig, get_dynmole_model

    def base():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    lora = get_peft_model(base(), LoraConfig(r=experts * rank, lora_alpha=16, target_modules=["0", "2"]))
    dyn = get_dynmole_model(base(), DynMoLEConfig(r=rank, lora_alpha=16, target_modules=["0", "2"],
                                                  num_experts=experts))
    for m in (lora, dyn):
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.02)
    return lora, dyn


def run(width: int, tokens: int, rank: int, rounds: int, reps: int, warmup: int = 2, seed: int = 0) -> dict:
    x = torch.randn(8, max(1, tokens // 8), width, generator=torch.Generator().manual_seed(seed))
    cands, notes = {}, []
    for e in EXPERTS:
        for name, m in zip(("LoRA", "DynMoLE"), _models(width, rank, e)):
            def step(m=m):
                m.zero_grad(set_to_none=True)
                m(x).pow(2).mean().backward()
            cands[f"{name} E={e}"] = harness.Candidate(f"{name} E={e}", step)
    harness.interleave(cands, rounds=rounds, steps=reps, warmup=warmup, seed=seed, mode="shuffled", notes=notes)
    rows = []
    for e in EXPERTS:
        lo, dy = cands[f"LoRA E={e}"], cands[f"DynMoLE E={e}"]
        ratio = statistics.median(dy.samples_ms) / statistics.median(lo.samples_ms)
        rows.append(dict(experts=e, rank=rank, lora_ms=statistics.median(lo.samples_ms),
                         dynmole_ms=statistics.median(dy.samples_ms), ratio=ratio,
                         paired=harness.paired_ratio(dy, lo), verdict="PASS" if ratio <= TARGET else "MISS"))
    return dict(rows=rows, notes=notes, width=width, tokens=x.shape[0] * x.shape[1], rounds=rounds, reps=reps,
                warmup=warmup, machine=harness.machine_description(), **harness.machine_info())


def to_markdown(res: dict) -> str:
    lines = [
        "## DynMoLE forward + backward time",
        "",
        "Written by `python benchmarks/dynmole_step.py --markdown PATH` (issue 20); every number below is from "
        "that one run.",
        "",
        *harness.info_lines(res, "peft"),
        f"- Workload: float32 MLP Linear({res['width']}, {res['width']}) -> ReLU -> Linear, both adapted, "
        f"{res['tokens']} tokens; one step = zero_grad + forward + backward of mean(y^2); DynMoLE with E experts "
        "of rank r (authors' routing defaults) against PEFT LoRA of rank E*r",
        f"- Method: {res['warmup']} warm-up rounds, then {res['rounds']} rounds x {res['reps']} steps of every "
        "candidate in shuffled order; median ms/step; ratio = DynMoLE / LoRA, paired = median over rounds of the "
        f"per-round ratio; target <= {TARGET} (PASS/MISS)",
        "",
        *harness.markdown_table(("E", "r", "LoRA (rank E*r) ms", "DynMoLE ms", "ratio", "paired", "target"),
                                ((str(r["experts"]), str(r["rank"]), f"{r['lora_ms']:.2f}", f"{r['dynmole_ms']:.2f}",
                                  f"{r['ratio']:.2f}", "" if r["paired"] is None else f"{r['paired']:.2f}",
                                  r["verdict"]) for r in res["rows"]), left=()),
        *harness.note_lines(res),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return harness.int_options_main(
        argv, __doc__.splitlines()[0], dict(width=512, tokens=1024, rank=8, rounds=10, reps=3), run, to_markdown,
        "dynmole_step", lambda r: f"E={r['experts']} r={r['rank']}  LoRA {r['lora_ms']:8.2f} ms  "
                                  f"DynMoLE {r['dynmole_ms']:8.2f} ms  x{r['ratio']:.2f}  {r['verdict']}")


if __name__ == "__main__":
    sys.exit(main())
