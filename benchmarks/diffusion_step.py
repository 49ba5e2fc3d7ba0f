"""Diffusion objective benchmark: each gradwise loss vs the same formula hand-written in torch, and ot_pair.

    python benchmarks/diffusion_step.py [--batch 4096] [--side 8] [--ot_batch 256] [--ot_dim 64]
                                        [--rounds 15] [--reps 3] [--threads N] [--markdown PATH] [--json PATH]

One "step" of a loss is forward and backward on float32 tensors ``[batch, 1, side, side]`` (the input
requires grad; its ``.grad`` is cleared untimed before each step): ``loss(x, y).sum().backward()``. Each
gradwise loss is paired with the hand-written torch expression of its reference (diffusers' element-wise
Pseudo-Huber, ECT's per-sample one, LCT's Cauchy lines, DDPO's DDIM log-prob, D3PO's loss lines, DMD2's
EDMGuidance losses, FastGen's VSD loss). All
are timed interleaved in one process: after warm-up, each round runs every candidate ``--reps`` times in
a freshly shuffled order; the median is reported with its ratio to its torch twin (the median over
rounds of the per-round ratio of medians, steadier than the ratio of overall medians on a busy
machine). Targets (issue 18, section 7): a loss <= 1.2x its hand-written torch; ``ot_pair`` on ``[ot_batch, ot_dim]`` <= 20 ms
(PASS/MISS). ``--markdown`` writes the section ``diffusion_step`` of that file.
"""
from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # harness.py sits beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402

TARGET = 1.2
OT_TARGET_MS = 20.0


def _pairs(x, y, prev, a_t, a_prev, c):
    """name -> (gradwise step fn, torch step fn); each returns the loss to backpropagate."""
    import torch.nn.functional as F

    from gradwise.diffusion import (cauchy_loss, ddim_step_logprob, dmd_loss, fake_score_loss, gan_discriminator_loss,
                                    gan_generator_loss, pseudo_huber_loss)
    from gradwise.preference import d3po_loss

    dims = tuple(range(1, x.ndim))
    B = x.shape[0]
    at4, ap4 = a_t.view(-1, *(1,) * (x.ndim - 1)), a_prev.view(-1, *(1,) * (x.ndim - 1))
    lp = [x.detach().flatten(1)[:, i].clone() for i in range(4)]

    def ddim_torch():
        beta = 1 - at4
        x0 = (y - beta ** 0.5 * x) / at4 ** 0.5
        std = ((1 - ap4) / beta * (1 - at4 / ap4)) ** 0.5
        mean = ap4 ** 0.5 * x0 + (1 - ap4 - std ** 2) ** 0.5 * x
        logp = -((prev - mean) ** 2) / (2 * std ** 2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
        return logp.mean(dim=dims)

    d3po_x = x.flatten(1)[:, 0]

    def d3po_torch():
        r0 = torch.clamp(torch.exp(d3po_x - lp[1]), 0.9, 1.1)
        r1 = torch.clamp(torch.exp(lp[2] - lp[3]), 0.9, 1.1)
        return -torch.log(torch.sigmoid(0.1 * torch.log(r0) - 0.1 * torch.log(r1)))

    sigma = a_t + 0.5
    h = a_prev * 2
    logit, logit2 = x.flatten(1)[:, :1], y.flatten(1)[:, :1]

    def dmd2_torch():  # DMD2's compute_distribution_matching_loss, per sample
        with torch.no_grad():
            p_real, p_fake = x - y, x - prev
            grad = torch.nan_to_num((p_real - p_fake) / p_real.abs().mean(dim=dims, keepdim=True))
        return 0.5 * F.mse_loss(x, (x - grad).detach(), reduction="none").mean(dim=dims)

    def vsd_torch():  # FastGen's variational_score_distillation_loss with additional_scale=h, per sample
        with torch.no_grad():
            w = 1 / ((x - y).abs().mean(dim=dims, keepdim=True) + 1e-6) * h.view(-1, *(1,) * (x.ndim - 1))
            target = x - (prev - y) * w
        return 0.5 * F.mse_loss(x, target, reduction="none").mean(dim=dims)

    return {
        "dmd_loss (DMD2)": (
            lambda: dmd_loss(x, y, prev),
            dmd2_torch),
        "dmd_loss (scale=h, eps=1e-6, FastGen VSD)": (
            lambda: dmd_loss(x, y, prev, scale=h, eps=1e-6),
            vsd_torch),
        "fake_score_loss (DMD2)": (
            lambda: fake_score_loss(x, y, sigma),
            lambda: ((sigma.view(-1, *(1,) * (x.ndim - 1)) ** -2 + 1.0 / 0.5 ** 2) * (x - y) ** 2).mean(dim=dims)),
        f"gan_generator_loss ([{B}, 1], DMD2)": (
            lambda: gan_generator_loss(logit),
            lambda: F.softplus(-logit).mean(dim=1)),
        f"gan_discriminator_loss ([{B}, 1], DMD2)": (
            lambda: gan_discriminator_loss(logit2, logit),
            lambda: (F.softplus(logit) + F.softplus(-logit2)).mean(dim=1)),
        "pseudo_huber_loss (sum, ECT)": (
            lambda: pseudo_huber_loss(x, y, c=c),
            lambda: torch.sqrt(((x - y) ** 2).sum(dim=dims) + c ** 2) - c),
        "pseudo_huber_loss (elementwise, diffusers)": (
            lambda: pseudo_huber_loss(x, y, c=c, distance="elementwise"),
            lambda: torch.sqrt((x - y) ** 2 + c ** 2) - c),
        "cauchy_loss (mean, LCT)": (
            lambda: cauchy_loss(x, y, c=c),
            lambda: torch.log(0.5 * ((x - y) ** 2).mean(dim=dims) + c ** 2) - 2 * math.log(c)),
        "cauchy_loss (elementwise, LCT cauchy_new)": (
            lambda: cauchy_loss(x, y, c=c, distance="elementwise"),
            lambda: torch.log(0.5 * (x - y) ** 2 + c ** 2) - 2 * math.log(c)),
        "ddim_step_logprob (DDPO)": (
            lambda: ddim_step_logprob(x, y, prev, a_t, a_prev),
            ddim_torch),
        f"d3po_loss ([{B}], D3PO)": (
            lambda: d3po_loss(d3po_x, lp[1], lp[2], lp[3]),
            d3po_torch),
    }


def run(batch: int, side: int, ot_batch: int, ot_dim: int, rounds: int, reps: int, warmup: int = 3,
        seed: int = 0) -> dict:
    from gradwise.diffusion import ot_pair

    load = harness.load_average()
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 1, side, side)
    x = torch.randn(shape, generator=g).requires_grad_()
    y, prev = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    a_t = torch.rand(batch, generator=g) * 0.5 + 0.2
    a_prev = a_t + 0.1
    c = 0.00054 * math.sqrt(side * side)

    def clear():
        x.grad = None

    cands: dict[str, harness.Candidate] = {}
    pairs = _pairs(x, y, prev, a_t, a_prev, c)
    for name, (gw, ref) in pairs.items():
        cands[f"gradwise {name}"] = harness.Candidate(f"gradwise {name}", lambda f=gw: f().sum().backward(), clear)
        cands[f"torch {name}"] = harness.Candidate(f"torch {name}", lambda f=ref: f().sum().backward(), clear)
    ox, on = torch.randn(ot_batch, ot_dim, generator=g), torch.randn(ot_batch, ot_dim, generator=g)
    cands["ot_pair"] = harness.Candidate("ot_pair", lambda: ot_pair(ox, on))
    notes = [n for n in (harness.busy_note(load),) if n]
    harness.interleave(cands, rounds=rounds, steps=reps, warmup=warmup, seed=seed, mode="shuffled", notes=notes)
    med = {name: statistics.median(cd.samples_ms) for name, cd in cands.items() if not cd.error}
    rows = []
    for name in pairs:
        gw, ref = med.get(f"gradwise {name}"), med.get(f"torch {name}")
        r = harness.paired_ratio(cands.get(f"gradwise {name}"), cands.get(f"torch {name}"))
        if gw is None or ref is None or r is None:
            continue
        rows.append(dict(name=name, ms=gw, ref_ms=ref, ratio=r, verdict="PASS" if r <= TARGET else "MISS"))
    if "ot_pair" in med:
        rows.append(dict(name=f"ot_pair [{ot_batch}, {ot_dim}]", ms=med["ot_pair"], ref_ms=None, ratio=None,
                         verdict="PASS" if med["ot_pair"] <= OT_TARGET_MS else "MISS"))
    return dict(rows=rows, notes=notes, batch=batch, side=side, ot_batch=ot_batch, ot_dim=ot_dim, rounds=rounds,
                reps=reps, warmup=warmup, **harness.cpu_run_fields(load))


def to_markdown(res: dict) -> str:
    lines = [
        "## Diffusion objectives",
        "",
        "Written by `python benchmarks/diffusion_step.py --threads 1 --markdown PATH`; every number below is "
        "from that one run.",
        "",
        *harness.cpu_run_lines(res),
        f"- Workload: float32 `[{res['batch']}, 1, {res['side']}, {res['side']}]`; one step = loss forward, `.sum()`, "
        f"backward; `ot_pair` on `[{res['ot_batch']}, {res['ot_dim']}]` (cost, assignment, gather)",
        f"- Method: {res['warmup']} warm-up rounds, then {res['rounds']} rounds x {res['reps']} steps of every "
        "candidate in shuffled order; median ms/step; ratio = median over rounds of (gradwise median / median of "
        f"the same formula hand-written in torch); targets: ratio <= {TARGET}, `ot_pair` <= {OT_TARGET_MS:g} ms "
        "(PASS/MISS)",
        "",
        *harness.markdown_table(("step", "gradwise ms", "torch ms", "ratio", "target"),
                                ((r["name"], f"{r['ms']:.3f}", "" if r["ref_ms"] is None else f"{r['ref_ms']:.3f}",
                                  "" if r["ratio"] is None else f"{r['ratio']:.2f}", r["verdict"])
                                 for r in res["rows"]), left=(0, 4)),
        *[line for note in res["notes"] for line in ("", f"Note: {note}.")],
    ]
    return "\n".join(lines) + "\n"


DEFAULTS = dict(batch=4096, side=8, ot_batch=256, ot_dim=64, rounds=15, reps=3)


def main(argv: list[str] | None = None) -> int:
    return harness.int_options_main(
        argv, __doc__.splitlines()[0], DEFAULTS, run, to_markdown, "diffusion_step",
        lambda r: f"{r['name']:45s} {r['ms']:8.3f} ms  " + ("" if r["ratio"] is None else f"x{r['ratio']:.2f}  ")
        + r["verdict"])


if __name__ == "__main__":
    sys.exit(main())
