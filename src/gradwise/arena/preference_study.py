"""Study ``preference``: preference optimization of a tiny causal LM trained
from scratch on a synthetic language, judged by a program.

The language: a prompt is ``BOS l_1 .. l_n SEP`` with ``n`` in 3..5 letters
from an alphabet of 6; a response is letters followed by ``EOS``. The judge
wants the prompt's letters **reversed**: its reward is ``(matches - |len -
n|) / n`` (``matches``: positions agreeing with the reversal; -1 without
EOS), and it prefers the response with the higher reward (ties: one half).

Per seed ``s``:

1. *SFT warm-up*: a 2-layer, d=64 causal transformer is trained from scratch
   on mixed-quality responses (40% reversal, 30% plain copy of the prompt,
   30% reversal with one letter substituted), so it samples all three kinds;
   it is the reference model and the baseline of the win rate.
2. *Offline preference set*: two samples from the SFT model for each of
   ``pairs_prompts`` prompts, labelled by the judge (ties dropped).
3. *Offline methods* through :class:`~gradwise.preference.PreferenceTrainer`,
   each from the SFT weights with the same data order and ``steps`` Adam
   steps: DPO, IPO, SimPO, f-DPO (Jensen-Shannon), RPO.
4. *Online methods* through :class:`~gradwise.preference.OnlinePreferenceLoop`,
   ``iterations`` iterations of ``steps / iterations`` steps each (the same
   number of optimizer steps), sampling K = 4 responses per prompt from the
   frozen ``pi_t``, judging them and training on best-vs-worst pairs:
   online (iterative) DPO, INPO, DNO (DNO-Prct: hard labels), APO; and EGPO, which
   samples fresh responses and opponents at every step instead. HyPO, the
   hybrid, trains on the offline set like DPO plus a reverse-KL term on one
   fresh policy sample per prompt at every step.
5. *Evaluation* on held-out prompts, with fixed sampling seeds: the judge's
   win rate of policy samples against SFT samples (temperature 1), the
   sequence ``KL(pi ‖ pi_SFT)`` estimated on the policy's samples (sum over
   response tokens of the full next-token KL), the mean judge reward and the
   fraction of exact reversals.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from gradwise.arena.stats import CI_NOTE, RANK_NOTE, rank_summaries
from gradwise.arena.study import Column, Run, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "CONFIG", "OFFLINE", "ONLINE", "METHODS", "STUDY", "add_arguments", "run",
           "PAD", "BOS", "SEP", "EOS", "random_prompt", "judge_reward", "sft_response", "tiny_lm", "sft_model"]

HELP = "DPO, IPO, SimPO, f-DPO, RPO and online INPO/DNO/APO/EGPO and hybrid HyPO on a tiny LM learning to reverse strings for a judge"

PAD, BOS, SEP, EOS = 0, 1, 2, 3
LETTER0 = 4


@dataclass(frozen=True)
class Config:
    letters: int = 6
    min_len: int = 3
    max_len: int = 5
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    sft_steps: int = option(400, "SFT warm-up steps", at_least=1)
    sft_batch: int = 64
    sft_lr: float = 3e-3
    sft_mix: tuple[float, float, float] = (0.4, 0.3, 0.3)  # reversal, copy, reversal with one substitution
    pairs_prompts: int = option(1024, "prompts of the offline preference set",  # 2 SFT samples each
                                 at_least=1)
    steps: int = option(200, "optimizer steps per preference method",  # online: split over the iterations
                         at_least=1)
    batch_size: int = 32        # pairs per step
    lr: float = 3e-4            # Adam, every preference method (1e-3 over-optimizes DPO-style losses)
    iterations: int = option(4, "iterations of the online methods", at_least=1)
    online_prompts: int = 256   # prompts sampled per online iteration
    samples_per_prompt: int = 4
    eval_prompts: int = option(256, "held-out evaluation prompts", at_least=1)
    eval_samples: int = 2       # samples per eval prompt (policy and SFT each)
    seeds: int = option(5, "seeds 0..N-1", at_least=1)
    threads: int = 1


CONFIG = Config()
# name -> (objective, hyperparameters); defaults of the functions unless noted
OFFLINE = {
    "DPO": ("dpo_loss", {"beta": 0.1}),
    "IPO": ("ipo_loss", {"beta": 0.1}),
    "SimPO": ("simpo_loss", {"beta": 2.0, "gamma": 0.5}),
    "f-DPO (JS)": ("fdpo_loss", {"beta": 0.1, "divergence": "js"}),
    "RPO": ("rpo_loss", {"beta": 0.1, "sft_weight": 0.2}),
}
ONLINE = {
    "online DPO": ("dpo", {"beta": 0.1}),
    "INPO": ("inpo", {"eta": 0.1, "tau": 0.05}),
    "DNO": ("dno", {"eta": 0.1}),
    "APO": ("apo", {"alpha": 0.3, "beta": 0.1}),
    "EGPO": ("egpo", {"beta": 0.1}),
    "HyPO": ("hypo", {"lam": 0.1, "beta": 0.1}),  # offline DPO + online KL: runs on the offline set
}
METHODS = tuple(OFFLINE) + tuple(ONLINE)


# ----------------------------------------------------------------- the language and the judge

def random_prompt(rng, cfg: Config = CONFIG) -> list[int]:
    """``[BOS, letters..., SEP]`` drawn with ``rng`` (a ``random.Random``)."""
    n = rng.randint(cfg.min_len, cfg.max_len)
    return [BOS] + [LETTER0 + rng.randrange(cfg.letters) for _ in range(n)] + [SEP]


def judge_reward(prompt, response) -> float:
    """``(matches - |len - n|) / n`` against the reversed prompt letters; -1 without a final EOS."""
    letters = list(prompt)[1:-1]
    response = list(response)
    if not response or response[-1] != EOS:
        return -1.0
    body, target = response[:-1], letters[::-1]
    n = len(target)
    matches = sum(a == b for a, b in zip(body, target))
    return (matches - abs(len(body) - n)) / n


def sft_response(prompt, rng, cfg: Config = CONFIG) -> list[int]:
    """A response of the SFT mixture: reversal, copy, or reversal with one substitution."""
    letters = list(prompt)[1:-1]
    u = rng.random()
    if u < cfg.sft_mix[0]:
        body = letters[::-1]
    elif u < cfg.sft_mix[0] + cfg.sft_mix[1]:
        body = list(letters)
    else:
        body = letters[::-1]
        i = rng.randrange(len(body))
        body[i] = LETTER0 + (body[i] - LETTER0 + 1 + rng.randrange(cfg.letters - 1)) % cfg.letters
    return body + [EOS]


def tiny_lm(cfg: Config = CONFIG):
    """A pre-norm causal transformer: token + learned position embeddings, ``cfg.layers`` layers."""
    import torch
    from torch import nn

    vocab = LETTER0 + cfg.letters
    max_t = 2 * cfg.max_len + 4

    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, cfg.d_model)
            self.pos = nn.Embedding(max_t, cfg.d_model)
            self.blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, 4 * cfg.d_model, dropout=0.0, batch_first=True,
                                           norm_first=True) for _ in range(cfg.layers))
            self.norm = nn.LayerNorm(cfg.d_model)
            self.head = nn.Linear(cfg.d_model, vocab)
            self.register_buffer("causal", torch.triu(torch.full((max_t, max_t), float("-inf")), 1),
                                 persistent=False)

        def forward(self, ids):
            T = ids.shape[1]
            x = self.tok(ids) + self.pos(torch.arange(T, device=ids.device))
            for blk in self.blocks:
                x = blk(x, src_mask=self.causal[:T, :T], is_causal=True)
            return self.head(self.norm(x))

    return TinyLM()


# ----------------------------------------------------------------- the study

class _Setup(NamedTuple):
    judge: Any       # the PreferenceOracle of judge_reward
    gen_kw: dict     # sampling arguments of every generation


class _Seed(NamedTuple):
    """What every method of a seed shares: the SFT model (reference), the prompts, the SFT samples the
    win rate compares with, and the offline preference set."""

    ref: Any
    eval_prompts: list
    train_prompts: list
    ref_samples: list
    data: list


def _adjust(cfg: Config) -> Config:
    return replace(cfg, iterations=cfg.steps) if cfg.steps < cfg.iterations else cfg


def _setup(cfg: Config, methods: tuple[str, ...]) -> _Setup:
    from gradwise.preference import PreferenceOracle

    return _Setup(PreferenceOracle(reward=judge_reward),
                  dict(max_new_tokens=cfg.max_len + 2, temperature=1.0, eos_token_id=EOS, pad_token_id=PAD))


def sft_model(cfg: Config, seed: int):
    """The seed's SFT warm-up model (frozen): the reference of the preference studies."""
    import random

    import torch

    from gradwise.preference import frozen_copy, response_logps

    torch.manual_seed(seed)
    model = tiny_lm(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.sft_lr)
    rng = random.Random(50_000 + seed)
    for _ in range(cfg.sft_steps):
        prompts = [random_prompt(rng, cfg) for _ in range(cfg.sft_batch)]
        resp = [sft_response(p, rng, cfg) for p in prompts]
        loss = -response_logps(model, prompts, resp, pad_token_id=PAD, average=True).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return frozen_copy(model)


def _evaluate(run: Run, model, ref, prompts, ref_samples, seed: int) -> dict[str, float]:
    import torch

    from gradwise.preference import generate, sampled_kl

    g = torch.Generator().manual_seed(70_000 + seed)
    ys = generate(model, prompts, generator=g, **run.task.gen_kw)
    kl = sampled_kl(model, ref, prompts, ys, pad_token_id=PAD)
    rewards = [judge_reward(p, y) for p, y in zip(prompts, ys)]
    return dict(win_rate=run.task.judge.win_rate(prompts, ys, ref_samples), kl=float(kl.mean()),
                reward=statistics.fmean(rewards), exact=statistics.fmean(r == 1.0 for r in rewards),
                mean_len=statistics.fmean(len(y) - 1 for y in ys))


def _copy_model(cfg: Config, ref):
    model = tiny_lm(cfg)
    model.load_state_dict(ref.state_dict())
    return model.train()


def _offline(run: Run, name: str, ref, data, seed: int):
    import torch

    import gradwise.preference as pref
    from gradwise.preference import PreferenceObjective, PreferenceTrainer

    cfg = run.cfg
    fn_name, hp = OFFLINE[name]
    model = _copy_model(cfg, ref)
    obj = PreferenceObjective(getattr(pref, fn_name), **hp)
    trainer = PreferenceTrainer(model, obj, torch.optim.Adam(model.parameters(), lr=cfg.lr),
                                ref_model=ref if obj.needs_reference else None, batch_size=cfg.batch_size,
                                pad_token_id=PAD, seed=seed, progress=False)
    trainer.train(data, steps=cfg.steps)
    return model.eval()


def _online(run: Run, name: str, ref, prompts, data, seed: int):
    import torch

    from gradwise.preference import OnlinePreferenceLoop

    cfg = run.cfg
    method, hp = ONLINE[name]
    model = _copy_model(cfg, ref)
    torch.manual_seed(seed)
    loop = OnlinePreferenceLoop(model, method, torch.optim.Adam(model.parameters(), lr=cfg.lr), run.task.judge,
                                prompts, method_kwargs=hp, ref_model=ref, prompts_per_iteration=cfg.online_prompts,
                                samples_per_prompt=cfg.samples_per_prompt,
                                steps_per_iteration=max(1, cfg.steps // cfg.iterations),
                                batch_size=cfg.batch_size, seed=seed,
                                offline_pairs=data if method == "hypo" else None, **run.task.gen_kw)
    loop.run(cfg.iterations)
    return model.eval(), loop.history


def _seed_setup(run: Run, seed: int) -> tuple[_Seed, dict[str, Any]]:
    """The seed's SFT model, prompts and offline pairs; the SFT model's row (the unranked reference)."""
    import random

    import torch

    from gradwise.preference import build_pairs, generate

    cfg, gen_kw = run.cfg, run.task.gen_kw
    t0 = time.perf_counter()
    ref = sft_model(cfg, seed)
    rng = random.Random(90_000 + seed)
    eval_prompts = [random_prompt(rng, cfg) for _ in range(cfg.eval_prompts)] * cfg.eval_samples
    train_prompts = [random_prompt(rng, cfg) for _ in range(cfg.pairs_prompts)]
    g = torch.Generator().manual_seed(80_000 + seed)
    ref_samples = generate(ref, eval_prompts, generator=g, **gen_kw)
    g = torch.Generator().manual_seed(60_000 + seed)
    samples = generate(ref, [p for p in train_prompts for _ in range(2)], generator=g, **gen_kw)
    data = build_pairs(train_prompts, [samples[2 * i:2 * i + 2] for i in range(len(train_prompts))], run.task.judge)
    for i, d in enumerate(data):
        d["id"] = i
    m = _evaluate(run, ref, ref, eval_prompts, ref_samples, seed)
    row = dict(method="SFT", kind="reference", seed=seed, **m, pairs=len(data), wall_s=time.perf_counter() - t0)
    return _Seed(ref, eval_prompts, train_prompts, ref_samples, data), row


def _run_one(run: Run, name: str, seed: int, shared: _Seed) -> dict[str, Any]:
    t0 = time.perf_counter()
    curve = None
    if name in OFFLINE:
        model, kind = _offline(run, name, shared.ref, shared.data, seed), "offline"
    else:
        (model, curve), kind = _online(run, name, shared.ref, shared.train_prompts, shared.data, seed), "online"
        kind = "hybrid" if ONLINE[name][0] == "hypo" else kind
    m = _evaluate(run, model, shared.ref, shared.eval_prompts, shared.ref_samples, seed)
    return dict(method=name, kind=kind, seed=seed, **m, wall_s=time.perf_counter() - t0,
                **({"online_pairs": sum(h["pairs"] for h in curve)} if kind == "online" else {}))


_KEYS = ("win_rate", "kl", "reward", "exact", "mean_len", "wall_s")


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method over seeds, ranked on win rate; the SFT reference last, not ranked."""
    from gradwise.arena.stats import mean_ci_fields

    def summary(name: str, rs: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(name=name, kind=rs[0]["kind"], runs=len(rs), **mean_ci_fields(rs, _KEYS))

    ranked = rank_summaries([summary(n, [r for r in rows if r["method"] == n]) for n in run.methods], "win_rate")
    return ranked + [{**summary("SFT", run.references), "rank": None, "tied": False}]


def _ceiling(summary: list[dict[str, Any]]) -> float:
    # a policy that always reverses exactly wins against every non-exact SFT sample and ties the rest
    return 1.0 - 0.5 * next(s["exact_mean"] for s in summary if s["name"] == "SFT")


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"preference on string reversal: {cfg.layers}-layer d={cfg.d_model} LM, SFT {cfg.sft_steps} steps, "
            f"{cfg.steps} steps/method, {cfg.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    dpo_wr = next((s["win_rate_mean"] for s in summary if s["name"] == "DPO"), float("nan"))
    return (f"best first by win rate; {CI_NOTE}; {RANK_NOTE} (ranked on win rate; SFT "
            "is the reference, not ranked); win rate: judge's P(policy sample > SFT sample) on "
            f"{cfg.eval_prompts} held-out prompts x {cfg.eval_samples} samples (ties 1/2; SFT row: a second "
            "SFT sample); KL: sequence KL(pi ‖ SFT) in nats on the policy's samples; exact: fraction of "
            f"exact reversals; DPO's win rate {dpo_wr:.3f}; a perfect policy's win rate {_ceiling(summary):.3f}")


STUDY = register_study(Study(
    name="preference", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    adjust=_adjust, setup=_setup, seed_setup=_seed_setup, seed_setup_label="SFT", seeds_outer=True,
    run_one=_run_one, name_key="name", summarize=_summarize, title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["name"], "left"), Column("kind", lambda s: s["kind"], "left"),
             ci_column("win rate vs SFT", "win_rate", 3), ci_column("KL to SFT", "kl", 2),
             Column("judge reward", lambda s: f"{s['reward_mean']:.3f}"),
             Column("exact", lambda s: f"{s['exact_mean']:.3f}"), Column("s/run", lambda s: f"{s['wall_s_mean']:.1f}")),
    csv_fields=("method", "kind", "seed", "win_rate", "kl", "reward", "exact", "mean_len", "wall_s"),
    json_extra=lambda run, summary: dict(offline_methods=dict(OFFLINE), online_methods=dict(ONLINE),
                                         win_rate_ceiling=_ceiling(summary)),
    write_files=lambda out, run, rows, summary, title: _plot(out / "preference.png", summary,
                                                             run.references + rows, title),
    outputs=("preference.png",),
    smoke=("--seeds", "1", "--steps", "2", "--iterations", "1", "--sft-steps", "3", "--pairs-prompts", "24",
           "--eval-prompts", "8"),
))
# the study's entry points, as before the driver
add_arguments, run = STUDY.add_arguments, STUDY.run


def _plot(path: Path, summary: list[dict[str, Any]], runs: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gradwise.arena.report import wrap_title

    def ci(half: float) -> float:  # the table's 95% t-interval; none drawn for one seed
        return half if half == half and half != float("inf") else 0.0

    fig, ax = plt.subplots(figsize=(9, 5))
    # one distinct colour per method (tab20 without its greys, which mark SFT)
    palette = [plt.get_cmap("tab20")(k) for k in range(20) if k not in (14, 15)]
    methods = [s for s in sorted(summary, key=lambda s: s["name"]) if s["name"] != "SFT"]
    colors = {s["name"]: palette[(2 * i) % 18 + (2 * i) // 18 % 2] for i, s in enumerate(methods)}
    for s in sorted(summary, key=lambda s: s["name"]):
        color = colors.get(s["name"], "grey")
        marker = {"online": "s", "hybrid": "D"}.get(s["kind"], "o")
        pts = [r for r in runs if r["method"] == s["name"]]
        ax.scatter([r["kl"] for r in pts], [r["win_rate"] for r in pts], color=color, marker=marker, alpha=0.3, s=18)
        ax.errorbar(s["kl_mean"], s["win_rate_mean"], xerr=ci(s["kl_ci"]), yerr=ci(s["win_rate_ci"]), color=color,
                    marker=marker, ms=8, capsize=3, label=f"{s['name']} ({s['kind']})")
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("KL(pi ‖ SFT), nats per response (on policy samples)")
    ax.set_ylabel("judge win rate vs SFT")
    ax.set_title(wrap_title(title + " (mean and 95% t-interval over seeds)", 80), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
