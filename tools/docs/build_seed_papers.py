"""Build ``src/gradwise/data/seed_papers.tsv`` from the shared seed files.

A one-off, reproducible tool (not used at run time): it joins
``../shared/seeds/papers.jsonl`` (idx = 0-based line number) with
``../shared/seeds/scope.tsv`` and applies the tables kept below:

* ``ARXIV``: arXiv ids found for the seed titles (left empty when not found);
* ``ISSUES``: which project issue plans a paper (2 optimizers, 3 objectives, 4 preference);
* ``CORRECTIONS``: priorities changed after reading the abstracts (each one is
  listed, with its reason, in ``docs/coverage_notes.md``);
* ``REASONS`` / ``FAMILY_REASONS``: why an out-of-scope paper is out of scope.

Status is derived from the (corrected) priority: A/B -> ``planned``,
C -> ``out-of-scope``. ``implemented`` is never written here; the docs derive it
from the registry.

Usage::

    python tools/docs/build_seed_papers.py [--seeds ../shared/seeds] [--out src/gradwise/data/seed_papers.tsv]
"""
from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ("idx", "title", "arxiv", "family", "component", "priority", "status", "issue", "reason")

# arXiv ids, looked up by title (exact title match in citing sources).
ARXIV: dict[int, str] = {
    164: "2507.06542",
    0: "2406.04314", 5: "2210.03869", 6: "2409.00908", 9: "2411.08937", 10: "2502.02732",
    16: "2408.11029", 18: "2310.06110", 25: "2407.00617", 26: "2405.14734", 27: "1909.11015",
    31: "2304.07288", 32: "2211.13081", 35: "2309.14322", 43: "2310.10636", 52: "2405.14852",
    57: "2501.04697", 58: "2412.16145", 59: "2409.01369", 61: "2308.07686", 62: "2303.00914",
    63: "2308.10438", 65: "2404.03715", 71: "2309.16240", 72: "1604.08859", 73: "2310.05898",
    74: "2410.05255", 75: "2110.02861", 76: "2410.06293", 77: "2406.01462", 79: "2403.07230",
    81: "2409.17791", 87: "2404.12358", 89: "2502.17055", 90: "2410.09344", 92: "2401.04056", 94: "2305.14782",
    95: "2310.13639", 99: "2406.01660", 104: "2309.14157", 109: "2506.21551", 115: "2502.06733",
    117: "2302.11812", 118: "2210.14199", 119: "2503.08942", 123: "2304.03486", 128: "2410.04579",
    132: "2305.11965", 142: "1511.07543", 145: "2310.05615", 146: "2304.07645", 150: "2306.03401",
    151: "2401.16265", 156: "2205.14083", 157: "2305.17007", 158: "2212.12965", 163: "2402.11215",
    170: "2502.07154", 174: "2307.04047", 179: "2006.08217", 180: "2205.13452", 195: "2310.16763", 196: "2303.14771",
    188: "2308.06689", 197: "2501.06842", 199: "2310.02743", 204: "2003.07845", 205: "1905.09788", 214: "2311.13231",
    215: "2405.16436", 227: "2204.02610", 228: "2010.07468", 231: "1903.03088", 232: "2302.06675", 246: "2210.17357",
    248: "2412.11768", 165: "2505.24452", 24: "2302.02607", 251: "2403.17919", 144: "2311.05645",
    20: "2408.12300", 162: "2302.10429", 161: "2310.03156", 148: "2206.10189",
    110: "2506.18640", 168: "2212.12712", 211: "2310.12508", 224: "2201.05718", 225: "2304.12566",
    206: "2302.12480", 233: "2208.08661", 226: "2309.17230", 243: "2110.04065",
    106: "2112.04137", 189: "2310.14189", 167: "2502.01441",
    223: "2410.02416", 239: "2312.12487", 83: "2409.03755", 149: "2106.09516",
    155: "2410.23232", 30: "2405.14867", 154: "2502.15681", 8: "2410.16794",
    207: "2404.07987", 184: "2410.11236", 221: "2307.10711", 254: "2407.19453", 56: "2211.08997",
    191: "2312.07145",
    40: "2302.08560", 84: "2206.13464", 202: "2204.01464", 216: "2310.07418", 66: "2104.09122", 98: "2310.17966",
    256: "2106.11420", 97: "2402.00348", 213: "2310.12955", 259: "2409.06633", 252: "2409.15371",
    127: "2504.00661", 143: "1806.07572",
    120: "2203.07404",
    235: "2301.12554",
    169: "2310.14344",
    201: "2412.05551",
    238: "2502.08905",
    108: "2406.14036",
    250: "2303.06869",
    237: "2107.13490",
    101: "2502.01199",
    190: "2308.07650",
    55: "2310.04373",
    217: "2404.08495",
    234: "2105.03918",
    242: "2303.02262",
}

# Project issue planning each paper: 2 optimizers, 3 objectives/losses, 4 preference optimization.
ISSUES: dict[int, int] = {
    **dict.fromkeys((228, 27, 179, 232, 73, 197, 89, 248, 57), 2),
    **dict.fromkeys((31, 72, 6, 193, 43, 170, 166, 174, 22, 130, 132, 145, 103, 205, 9, 157, 158,
                     185, 115, 128, 123), 3),
    **dict.fromkeys((26, 71, 215, 77, 95, 79, 25, 65, 119, 76, 99, 81, 195, 92, 199, 87), 4),
}


@dataclass(frozen=True)
class Correction:
    """A change to scope.tsv's first sorting, made after reading the abstract."""

    priority: str  # the corrected priority (A/B/C)
    why: str  # one line, quoted in docs/coverage_notes.md
    component: str | None = None  # replaces scope.tsv's component when set
    reason: str | None = None  # out-of-scope reason when the priority becomes C


# Why issue 18's papers are in scope (each record adds what runs on the toy teacher).
_TOY18 = ("a CPU-scale version exists: a small denoiser trained from scratch on 2-D mixtures and 8x8 digits "
          "(issue 18's toy substrate) shows the claim")

CORRECTIONS: dict[int, Correction] = {
    # Issue 20 moves these two in from C (quantization methods runnable on a digits CNN/MLP).
    190: Correction("B", "issue 20 plans it (EQ-Net): elastic quantization layers and their two losses, trained on "
                         "plain modules; one model serves several bit widths on digits"),
    250: Correction("B", "issue 20 plans it (AdaDFQ): the data-free quantization generator losses, on a small "
                         "digits CNN without data"),
    # Issue 21 (scientific-ML training and five singles): each has a CPU-scale claim and a training component.
    120: Correction("B", "issue 21 plans it (causal PINN): temporal causal weights on chunked residual losses, "
                         "shown on a damped oscillator and a small Allen-Cahn grid"),
    234: Correction("B", "issue 21 plans it: differentiable error (R_E) and stiffness (R_S) regularisers from an "
                         "embedded Runge-Kutta solver, shown on 2-D neural-ODE toys (test NFE)"),
    242: Correction("B", "issue 21 plans it: local regularisation of neural ODEs (one extra solver step at a "
                         "random time), on the same 2-D toys"),
    169: Correction("B", "issue 21 plans it (LPN): an input-convex network whose gradient is a proximal operator, "
                         "trained with proximal matching; 1-D Laplacian and 8x8 digits deblurring"),
    143: Correction("B", "issue 21 plans it: the empirical NTK as a training diagnostic (its spread and drift "
                         "fall with width, paper Fig. 1 on points of the circle)"),
    51: Correction("B", "issue 21 plans it: a tunable layer (kernel mixed by p) trained with a parametric "
                        "multi-loss, one model standing for K fixed ones; digits denoising"),
    235: Correction("B", "issue 21 plans it: a mixture of a standard and a robust classifier with a learned "
                         "mixing network; digits MLPs under PGD"),
    55: Correction("B", "issue 21 plans it: Lagrange multipliers on constraint returns that mix advantages, "
                        "shown with proxy judges on a tiny LM"),
    217: Correction("B", "issue 21 plans it (DR-PO): dataset resets (rollouts from offline prefixes) in PPO, "
                         "on a tiny LM"),
    0: Correction(
        "C", "the method needs Stable Diffusion plus a step-aware preference model trained on noisy images",
        reason="needs Stable Diffusion and a step-aware preference model trained on noisy images; "
               "not demonstrable on CPU"),
    92: Correction(
        "B", "the abstract gives a reward-model-free self-play objective (win rate against the policy's "
             "own samples as reward) that handles intransitive preferences: a preference component "
             "demonstrable with a synthetic preference oracle; planned in issue 4",
        component="SPO self-play preference optimization (win-rate reward, minimax winner)"),
    109: Correction(
        "C", "the two monitors are defined on expert-routing pathways of a pretrained MoE LLM (7B OLMoE "
             "checkpoints) and the claim is about LLM pretraining; no training component",
        reason="monitors need expert-routing pathways of pretrained MoE LLM checkpoints (7B OLMoE); "
               "not demonstrable on CPU"),
    149: Correction(
        "B", "issue 17 plans it (transductive_clustering): inference by Laplacian-regularized K-means of support "
             "and query features, a test-time component any feature extractor can use, small enough for CPU; "
             "the authors' code (imtiazziko/SLK-few-shot) runs on numpy",
        component="transductive few-shot inference: Laplacian-regularized K-means of support and query"),
    155: Correction(
        "B", "the datamodels need many retrained models, but on digits with a small MLP a few dozen retrains "
             "trained at once (batched) cost about a minute per seed; DMM and its KLoM measure are in issue 17's "
             "unlearning study",
        component="DMM datamodel matching (datamodel-predicted retrain outputs, fine-tune to match) and KLoM"),
    255: Correction(
        "C", "PSO fine-tunes an existing timestep-distilled diffusion model (e.g. SDXL-Turbo class); "
             "there is nothing to fine-tune without one",
        reason="needs a pretrained timestep-distilled diffusion model; not demonstrable on CPU"),
    8: Correction(
        "B", _TOY18 + " (one-step distillation of that teacher)",
        component="SIM score-implicit-matching one-step distillation"),
    30: Correction(
        "B", _TOY18 + " (one-step distillation of that teacher)"),
    83: Correction(
        "B", _TOY18 + " (the sampler runs on that teacher; diffusers' UniPC is the base)",
        component="DC-Solver dynamic compensation for the UniPC predictor-corrector sampler"),
    154: Correction(
        "B", _TOY18 + " (one-step distillation of that teacher)"),
    167: Correction(
        "B", _TOY18 + " (consistency training from scratch)",
        component="sLCT Cauchy loss, OT coupling, scaling-c and early-step diffusion loss for consistency training"),
    184: Correction(
        "B", _TOY18 + " (reward fine-tuning with a digits classifier as the reward)",
        component="Ctrl-U uncertainty-weighted reward loss"),
    189: Correction(
        "B", _TOY18 + " (consistency training from scratch)",
        component="iCT consistency training: Pseudo-Huber loss, lognormal noise, no-EMA teacher, discretization "
            "curriculum"),
    207: Correction(
        "B", _TOY18 + " (reward fine-tuning with a digits classifier as the reward)",
        component="ControlNet++ single-step reward (consistency feedback) loss"),
    221: Correction(
        "B", _TOY18 + " (gradients through the sampler of that teacher)",
        component="AdjointDPM adjoint gradients through the diffusion sampler"),
    223: Correction(
        "B", _TOY18 + " (guidance at high scales on the digits teacher; diffusers has the guider)",
        component="APG adaptive projected guidance"),
    239: Correction(
        "B", _TOY18 + " (guidance on the digits teacher)",
        component="Adaptive Guidance: CFG until the conditional and unconditional predictions align"),
    254: Correction(
        "B", _TOY18 + " (initial-noise policy on the digits teacher)",
        component="FIND initial-noise policy optimization"),
    1: Correction(
        "B", "issue 19 plans it (StepMix): a conservative-exploration rule shown on a random tabular MDP (S=10, "
             "A=3, H=5)"),
    40: Correction(
        "B", "issue 19 plans it (f-DVL): a value loss on plain critics, checked on locally generated Pendulum "
             "data"),
    54: Correction(
        "B", "issue 19 plans it (stock-augmented DP): dynamic programming on a small chain MDP, checked by "
             "enumeration"),
    56: Correction(
        "B", "issue 19 plans it (DynLin-UCB): a bandit agent on the authors' synthetic instance, which runs on a "
             "CPU"),
    66: Correction("B", "issue 19 plans it (PMOE): a Gaussian-mixture policy head and its loss for any actor-critic"),
    84: Correction(
        "B", "issue 19 plans it (H2O): the dynamics-ratio weights and sim penalty, on Pendulum with two "
             "gravities"),
    97: Correction(
        "B", "issue 19 plans it (ODICE): the orthogonal-gradient value update on plain critics, on generated "
             "data"),
    98: Correction("B", "issue 19 plans it (FamO2O): a balance-conditioned AWR objective, on generated data"),
    191: Correction(
        "B", "issue 19 plans it (NeuCB): a contextual-bandit loss, shown with sklearn digits as a 10-armed "
             "bandit"),
    202: Correction("B", "issue 19 plans it (VaGraM): a value-gradient weighted model loss for any dynamics model"),
    213: Correction(
        "B", "issue 19 plans it (RIQL): Huber Q loss and quantile value target, on generated Pendulum "
             "data"),
    216: Correction(
        "B", "issue 19 plans it (Adaptive RR): the fraction of active units and the replay-ratio switch, any "
             "critic"),
    256: Correction("B", "issue 19 plans it (policy smoothing): the certified reward bound of a smoothed policy"),
}

FAMILY_REASONS: dict[str, str] = {
    "rl": "RL algorithm or theory; no reusable component for supervised or preference training",
    "theory": "theory or analysis; no training component to implement",
    "application": "domain application or architecture; not a general training method",
    "diffusion-sampling": "needs a pretrained diffusion model; not demonstrable on CPU",
    "preference-diffusion": "needs a pretrained text-to-image diffusion model; not demonstrable on CPU",
}

# Out-of-scope reasons for rows whose family default does not fit.
REASONS: dict[int, str] = {
    36: "needs a large pretrained ancestry model and ImageNet-scale weight-sharing training",
    39: "architecture (selective-SSM projector) for few-shot class-incremental learning, not a training method",
    41: "softmax kernel throughput optimization; identical outputs, no effect on training",
    45: "architecture-level dynamic channel pruning with mask-predictor modules",
    50: "domain-specific RL-learned augmentation pipeline for biomedical images",
    55: "needs online PPO-based RLHF on an LLM with several reward models",
    96: "empirical study that needs a pretrained diffusion generator for data inflation",
    102: "post-training pruning of pretrained transformers; no training component",
    105: "safety dataset and study applying standard DPO; no new method",
    111: "convergence analysis of federated adversarial training; no new component",
    125: "needs a pretrained DINO teacher and ImageNet-scale DiT training",
    152: "data-scaling recipe (one epoch on more data); nothing to implement",
    177: "needs a pretrained ViT for prompt tuning; not demonstrable on CPU",
    181: "bag of FSCIL tricks not specified in the abstract",
    190: "quantization supernet with genetic mixed-precision search; architecture search",
    209: "concept erasure for text-to-image diffusion; needs a pretrained diffusion model",
    217: "online PPO-style RLHF with dataset resets; needs an RL loop over an LLM",
    220: "domain-specific KD loss for facial landmark regression",
    229: "meta-learned OOD detector; OOD detection rather than a training method",
    240: "constrained nonlinear-programming solver (inexact Newton with sketching), not network training",
    245: "data-construction pipeline for code LMs (self-generated tests) around standard DPO",
    250: "data-free quantization that needs a pretrained network and a generator",
}


def build_rows(seeds: Path) -> list[dict[str, str]]:
    """Join the two seed files and apply the tables above; one dict per paper."""
    papers = [json.loads(line) for line in (seeds / "papers.jsonl").read_text().splitlines() if line.strip()]
    with (seeds / "scope.tsv").open(newline="") as fh:
        scope = {int(r["idx"]): r for r in csv.DictReader(fh, delimiter="\t")}
    if sorted(scope) != list(range(len(papers))):
        raise ValueError("scope.tsv idx column does not cover papers.jsonl lines")
    rows = []
    for idx, paper in enumerate(papers):
        s = scope[idx]
        if s["title"] != paper["title"]:
            raise ValueError(f"title mismatch at idx {idx}: {s['title']!r} != {paper['title']!r}")
        fix = CORRECTIONS.get(idx)
        priority = fix.priority if fix else s["priority"]
        component = (fix.component if fix and fix.component else s["component"]).strip()
        component = "" if component == "-" else component
        if priority in ("A", "B"):
            status, reason = "planned", component or s["note"]
        else:
            status = "out-of-scope"
            reason = (fix.reason if fix and fix.reason else None) or REASONS.get(idx) \
                or f"{FAMILY_REASONS[s['family']]} ({s['note'].rstrip('.')})"
        issue = ISSUES.get(idx)
        if issue is not None and status != "planned":
            raise ValueError(f"idx {idx} is out of scope but planned in issue {issue}")
        rows.append({
            "idx": str(idx), "title": paper["title"], "arxiv": ARXIV.get(idx, ""), "family": s["family"],
            "component": component, "priority": priority, "status": status,
            "issue": "" if issue is None else str(issue), "reason": reason,
        })
    return rows


def main() -> None:
    """Write the TSV."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=Path, default=ROOT.parent / "shared" / "seeds")
    ap.add_argument("--out", type=Path, default=ROOT / "src" / "gradwise" / "data" / "seed_papers.tsv")
    args = ap.parse_args()
    rows = build_rows(args.seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"wrote {args.out} ({len(rows)} rows; {counts}; {sum(bool(r['arxiv']) for r in rows)} arXiv ids)")


if __name__ == "__main__":
    main()
