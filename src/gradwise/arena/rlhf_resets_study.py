"""Study ``rlhf-resets``: constrained RLHF (seed 55) and DR-PO's dataset resets (seed 217) with a tiny LM on the
string-reversal language of the ``preference`` study (its SFT warm-up model is the start and the reference).

Gold judge: the ``preference`` study's reversal reward ``(matches - |len - n|) / n`` (-1 without EOS). Two
proxy judges, correlated with it on the SFT samples but wrong past a point (0 without EOS):

* ``length``: ``len(body) / n`` (the gold optimum has 1; longer answers score more);
* ``lead``: the fraction of the body equal to the prompt's last letter (a reversal starts with it; repeating it
  scores more).

Every method trains the policy from the SFT weights for ``steps`` policy-gradient steps of ``batch`` samples
each (one PPO epoch: :func:`gradwise.preference.ppo_clip_loss` with the sampling policy's log-probs, sequence
advantages whitened over the batch, Adam ``lr``); ``kl`` is the sequence log-ratio to the SFT model on the
samples, its coefficient ``kl_coef``.

* ``fixed weights``: reward ``length + lead - kl_coef * kl`` (the composite reward with fixed weights 1, 1);
* ``constrained``: :class:`gradwise.preference.LagrangeMultipliers` (sigmoid, the paper's mu-PPO), task
  reward ``-kl``, constraints ``length >= theta_1``, ``lead >= theta_2`` at the proxy points: the proxies'
  means on exact reversals of the training prompts (the paper finds them from gold evaluations; here the gold
  optimum is known); mixed advantage of eq. 4.4, one dual step per batch on the batch's proxy rewards;
* ``from prompt``: gold reward ``- kl_coef * kl``, responses sampled from the prompt (PPO);
* ``resets``: the same, with DR-PO's resets (:func:`gradwise.preference.dataset_reset_mask`, ``beta``): a row
  starts from a prefix of its reference response (the exact reversal, the dataset's preferred answer), forced
  with ``generate(..., forced_prefixes=...)`` and left out of the policy loss; the same number of sampled
  responses per step as ``from prompt``.

Measured on held-out prompts every ``eval_every`` steps (responses from the prompt, fixed sampling seeds): the
gold reward, the proxies and the KL. Claims: (55) fixed weights over-optimise the proxies (gold falls from its
peak along training), constrained ends near the gold peak of fixed weights and above fixed weights' final
gold; (217) at an equal number of sampled responses, resets reach a gold reward at least that of from-prompt PPO.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from gradwise.arena.stats import CI_NOTE, RANK_NOTE, rank_summaries
from gradwise.arena.study import Column, Run, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "CONFIG", "METHODS", "STUDY", "proxy_rewards", "run"]

HELP = "constrained RLHF (Lagrange multipliers) vs fixed weights on two proxy judges, and DR-PO resets vs PPO, tiny LM"
METHODS = ("fixed weights", "constrained", "from prompt", "resets")


@dataclass(frozen=True)
class Config:
    sft_steps: int = option(300, "SFT warm-up steps", at_least=1)
    steps: int = option(120, "policy-gradient steps per method", at_least=1)
    batch: int = option(32, "sampled responses per step", at_least=2)
    lr: float = 1e-3
    kl_coef: float = option(0.05, "KL coefficient of the rewards", at_least=0.0)
    beta: float = option(0.5, "DR-PO reset probability", at_least=0.0, below=1.0001)
    lagrange_lr: float = 0.1
    eval_every: int = option(20, "steps between gold evaluations", at_least=1)
    eval_prompts: int = option(128, "held-out evaluation prompts", at_least=1)
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    threads: int = 1


CONFIG = Config()


def _pref_cfg(cfg: Config):
    from gradwise.arena.preference_study import CONFIG as P

    return replace(P, sft_steps=cfg.sft_steps)


def proxy_rewards(prompt, response) -> tuple[float, float]:
    """``(length, lead)``: ``len(body) / n`` and the fraction of the body equal to the prompt's last letter;
    ``(0, 0)`` without a final EOS."""
    from gradwise.arena.preference_study import EOS

    letters = list(prompt)[1:-1]
    response = list(response)
    if not response or response[-1] != EOS or len(response) < 2:
        return 0.0, 0.0
    body = response[:-1]
    return len(body) / len(letters), sum(t == letters[-1] for t in body) / len(body)


class _Seed(NamedTuple):
    ref: Any
    train: list
    evals: list
    thresholds: tuple[float, float]


def _seed_setup(run: Run, seed: int):
    import random

    from gradwise.arena.preference_study import EOS, judge_reward, random_prompt, sft_model

    t0 = time.perf_counter()
    pcfg = _pref_cfg(run.cfg)
    ref = sft_model(pcfg, seed)
    rng = random.Random(21_700 + seed)
    train = [random_prompt(rng, pcfg) for _ in range(2048)]
    evals = [random_prompt(rng, pcfg) for _ in range(run.cfg.eval_prompts)]
    best = [proxy_rewards(p, list(p)[1:-1][::-1] + [EOS]) for p in train]
    thr = (statistics.fmean(b[0] for b in best), statistics.fmean(b[1] for b in best))
    m = _evaluate(run, ref, ref, evals, seed)
    row = dict(method="SFT", seed=seed, **{k: m[k] for k in ("gold", "length", "lead", "kl")}, gold_peak=m["gold"],
               gold_drop=0.0, wall_s=time.perf_counter() - t0)
    assert judge_reward(train[0], list(train[0])[1:-1][::-1] + [EOS]) == 1.0
    return _Seed(ref, train, evals, thr), row


def _gen_kw():
    from gradwise.arena.preference_study import CONFIG as P, EOS, PAD

    return dict(max_new_tokens=P.max_len + 2, temperature=1.0, eos_token_id=EOS, pad_token_id=PAD)


def _token_logps(model, prompts, responses):
    """Token log-probs [B, T] of the responses (right-padded) and their mask."""
    import torch

    from gradwise.arena.preference_study import PAD

    T = max(len(r) for r in responses)
    L = max(len(p) + len(r) for p, r in zip(prompts, responses))
    ids = torch.full((len(prompts), L), PAD, dtype=torch.long)
    pos = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, :len(p) + len(r)] = torch.tensor(list(p) + list(r))
        pos[i, :len(r)] = torch.arange(len(p) - 1, len(p) - 1 + len(r))
        mask[i, :len(r)] = True
    logp = torch.log_softmax(model(ids).float(), -1)
    tgt = ids.gather(1, (pos + 1).clamp(max=L - 1))
    out = logp.gather(1, pos[:, :, None].expand(-1, -1, logp.shape[-1])).gather(2, tgt[:, :, None]).squeeze(2)
    return out * mask, mask


def _evaluate(run: Run, model, ref, prompts, seed: int) -> dict[str, float]:
    import torch

    from gradwise.arena.preference_study import judge_reward
    from gradwise.preference import generate

    g = torch.Generator().manual_seed(70_000 + seed)
    ys = generate(model, prompts, generator=g, **_gen_kw())
    with torch.no_grad():
        lp, m = _token_logps(model, prompts, ys)
        lq, _ = _token_logps(ref, prompts, ys)
    px = [proxy_rewards(p, y) for p, y in zip(prompts, ys)]
    return dict(gold=statistics.fmean(judge_reward(p, y) for p, y in zip(prompts, ys)),
                length=statistics.fmean(x[0] for x in px), lead=statistics.fmean(x[1] for x in px),
                kl=float(((lp - lq) * m).sum(1).mean()))


def _whiten(x):
    return (x - x.mean()) / (x.std() + 1e-8)


def _run_one(run: Run, method: str, seed: int, shared: _Seed) -> dict[str, Any]:
    import random

    import torch

    from gradwise.arena.preference_study import EOS, judge_reward, tiny_lm
    from gradwise.preference import (LagrangeMultipliers, dataset_reset_mask, forced_prefixes, generate,
                                     ppo_clip_loss)

    cfg = run.cfg
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    model = tiny_lm(_pref_cfg(cfg))
    model.load_state_dict(shared.ref.state_dict())
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = random.Random(30_000 + seed)
    g = torch.Generator().manual_seed(40_000 + seed)
    lm = LagrangeMultipliers(list(shared.thresholds), squash="sigmoid", lr=cfg.lagrange_lr, init=0.0) \
        if method == "constrained" else None
    curve = [(0, _evaluate(run, model, shared.ref, shared.evals, seed)["gold"])]
    for step in range(1, cfg.steps + 1):
        prompts = [rng.choice(shared.train) for _ in range(cfg.batch)]
        forced = None
        if method == "resets":
            refs = [list(p)[1:-1][::-1] + [EOS] for p in prompts]
            mask = dataset_reset_mask([len(r) for r in refs], max(len(r) for r in refs), beta=cfg.beta, generator=g)
            forced = forced_prefixes(refs, mask)
        ys = generate(model, prompts, generator=g, forced_prefixes=forced, **_gen_kw())
        lp, m = _token_logps(model, prompts, ys)
        with torch.no_grad():
            lq, _ = _token_logps(shared.ref, prompts, ys)
        kl = ((lp.detach() - lq) * m).sum(1)
        if method in ("fixed weights", "constrained"):
            px = torch.tensor([proxy_rewards(p, y) for p, y in zip(prompts, ys)])
            if method == "fixed weights":
                adv = _whiten(px.sum(1) - cfg.kl_coef * kl)
            else:
                adv = lm.mix_advantages(_whiten(-kl), (px - px.mean(0)) / (px.std(0) + 1e-8))
                lm.update(px)
        else:
            gold = torch.tensor([judge_reward(p, y) for p, y in zip(prompts, ys)])
            adv = _whiten(gold - cfg.kl_coef * kl)
        if forced is not None:
            m = m & ~(torch.arange(m.shape[1])[None] < torch.tensor([len(f) for f in forced])[:, None])
        loss = ppo_clip_loss(lp, lp.detach(), adv[:, None].expand_as(lp), m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curve.append((step, _evaluate(run, model, shared.ref, shared.evals, seed)["gold"]))
    final = _evaluate(run, model, shared.ref, shared.evals, seed)
    peak = max(c[1] for c in curve)
    row = dict(method=method, seed=seed, **final, gold_peak=peak, gold_drop=peak - final["gold"],
               wall_s=time.perf_counter() - t0)
    if lm is not None:
        row["weights"] = [round(float(w), 3) for w in lm.weights]
    run.state.setdefault("curves", {})[f"{method}/{seed}"] = curve
    return row


_KEYS = ("gold", "gold_peak", "gold_drop", "length", "lead", "kl", "wall_s")


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gradwise.arena.stats import mean_ci_fields

    def summary(name, rs):
        return dict(method=name, runs=len(rs), **mean_ci_fields(rs, _KEYS))

    ranked = rank_summaries([summary(n, [r for r in rows if r["method"] == n]) for n in run.methods
                             if any(r["method"] == n for r in rows)], "gold")
    return ranked + ([{**summary("SFT", run.references), "rank": None, "tied": False}] if run.references else [])


def claims(summary: list[dict[str, Any]], thresholds=None) -> list[str]:
    """The two claims, SHOWN / NOT SHOWN, from the summary rows (95% intervals over seeds)."""
    s = {r["method"]: r for r in summary}
    out = []
    if "fixed weights" in s and "constrained" in s:
        f, c = s["fixed weights"], s["constrained"]
        over = f["gold_drop_mean"] - f["gold_drop_ci"] > 0
        above = c["gold_mean"] - c["gold_ci"] > f["gold_mean"] + f["gold_ci"]
        near = c["gold_mean"] + c["gold_ci"] >= f["gold_peak_mean"] - f["gold_peak_ci"]
        out.append(f"55: fixed weights over-optimise (gold drop from peak {f['gold_drop_mean']:.3f} ± "
                   f"{f['gold_drop_ci']:.3f}): {'yes' if over else 'no'}; constrained final gold "
                   f"{c['gold_mean']:.3f} ± {c['gold_ci']:.3f} vs fixed final {f['gold_mean']:.3f} ± "
                   f"{f['gold_ci']:.3f} and fixed peak {f['gold_peak_mean']:.3f} ± {f['gold_peak_ci']:.3f}: "
                   + ("SHOWN" if over and above and near else "NOT SHOWN"))
    if "from prompt" in s and "resets" in s:
        p, r = s["from prompt"], s["resets"]
        ok = r["gold_mean"] + r["gold_ci"] >= p["gold_mean"] - p["gold_ci"]
        better = r["gold_mean"] - r["gold_ci"] > p["gold_mean"] + p["gold_ci"]
        out.append(f"217: resets gold {r['gold_mean']:.3f} ± {r['gold_ci']:.3f} vs from prompt {p['gold_mean']:.3f} "
                   f"± {p['gold_ci']:.3f}: " + ("SHOWN (better)" if better else
                                              "SHOWN (at least as good, within the intervals)" if ok else "NOT SHOWN"))
    return out


def _title(run: Run, rows) -> str:
    cfg = run.cfg
    return (f"rlhf-resets: tiny LM on string reversal, SFT {cfg.sft_steps} steps, {cfg.steps} PG steps x "
            f"{cfg.batch} samples, {cfg.seeds} seed(s)")


def _notes(run: Run, summary) -> str:
    thr = run.state.get("thresholds")
    return (f"ranked on final gold reward; {CI_NOTE}; {RANK_NOTE}; gold drop = best gold along training (every "
            f"{run.cfg.eval_every} steps) minus final gold; KL: sequence log-ratio to SFT on the policy's samples; "
            + "; ".join(claims(summary, thr)))


STUDY = register_study(Study(
    name="rlhf-resets", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    seed_setup=_seed_setup, seed_setup_label="SFT", seeds_outer=True,
    run_one=_run_one, summarize=_summarize, title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"), ci_column("gold (final)", "gold", 3),
             ci_column("gold peak", "gold_peak", 3), ci_column("gold drop", "gold_drop", 3),
             Column("length", lambda s: f"{s['length_mean']:.2f}"), Column("lead", lambda s: f"{s['lead_mean']:.2f}"),
             ci_column("KL", "kl", 2), Column("s/run", lambda s: f"{s['wall_s_mean']:.1f}")),
    csv_fields=("method", "seed", "gold", "gold_peak", "gold_drop", "length", "lead", "kl", "wall_s"),
    json_extra=lambda run, summary: dict(curves=run.state.get("curves", {}), claims=claims(summary)),
    outputs=(), smoke=("--seeds", "1", "--steps", "2", "--sft-steps", "3", "--eval-prompts", "8", "--batch", "4",
                       "--eval-every", "1"),
))
add_arguments, run = STUDY.add_arguments, STUDY.run
