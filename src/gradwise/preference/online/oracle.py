"""The judge of the online loop: :class:`PreferenceOracle` (a pairwise preference function or a reward
function) and :func:`build_pairs` (labelled pairs from K samples per prompt, with each response's
win rate among them).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from gradwise.preference.objectives.selfplay_spo import spo_win_rate_reward

__all__ = ["PreferenceOracle", "build_pairs"]


class PreferenceOracle:
    """A judge: a pairwise preference function or a reward function.

    Args:
        preference: ``fn(prompt, a, b) -> P(a > b | prompt)`` in [0, 1] (token-id lists in).
        reward: ``fn(prompt, response) -> float``; then ``P(a > b)`` is ``1``/``0.5``/``0`` by comparing
            rewards (``temperature=0``, the default) or Bradley-Terry ``sigmoid((r_a - r_b) / temperature)``.

    Give exactly one of them.

    Example:
        >>> judge = PreferenceOracle(reward=lambda p, r: -len(r))
        >>> judge.prob([1], [5], [5, 6])
        1.0
    """

    def __init__(self, preference: Callable | None = None, *, reward: Callable | None = None,
                 temperature: float = 0.0) -> None:
        if (preference is None) == (reward is None):
            raise ValueError("Invalid oracle: give exactly one of preference= and reward=")
        for name, fn in (("preference", preference), ("reward", reward)):
            if fn is not None and not callable(fn):
                raise ValueError(f"Invalid {name}: expected a callable, got {type(fn).__name__}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0 \
                or not math.isfinite(temperature):
            raise ValueError(f"Invalid temperature: {temperature!r} (accepted: a finite number >= 0)")
        self.preference_fn = preference
        self.reward_fn = reward
        self.temperature = float(temperature)

    @property
    def has_reward(self) -> bool:
        return self.reward_fn is not None

    def reward(self, prompt: Sequence[int], response: Sequence[int]) -> float:
        if self.reward_fn is None:
            raise ValueError("this oracle has no reward function (it was built from a preference function)")
        return float(self.reward_fn(prompt, response))

    def _p_from_rewards(self, ra: float, rb: float) -> float:
        if self.temperature == 0:
            return 1.0 if ra > rb else (0.0 if ra < rb else 0.5)
        return 1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, (ra - rb) / self.temperature))))

    def prob(self, prompt: Sequence[int], a: Sequence[int], b: Sequence[int]) -> float:
        """``P(a > b | prompt)``."""
        if self.preference_fn is not None:
            p = float(self.preference_fn(prompt, a, b))
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"preference function returned {p!r}; expected a probability in [0, 1]")
            return p
        return self._p_from_rewards(self.reward(prompt, a), self.reward(prompt, b))

    def win_matrix(self, prompt: Sequence[int], responses: Sequence[Sequence[int]]) -> Tensor:
        """``[K, K]`` float64 matrix of ``P(responses[i] > responses[j])`` (diagonal 0.5); a reward
        oracle scores each response once."""
        k = len(responses)
        m = torch.full((k, k), 0.5, dtype=torch.float64)
        if self.reward_fn is not None:
            r = [self.reward(prompt, y) for y in responses]
            for i in range(k):
                for j in range(k):
                    if i != j:
                        m[i, j] = self._p_from_rewards(r[i], r[j])
            return m
        for i in range(k):
            for j in range(i + 1, k):
                p = self.prob(prompt, responses[i], responses[j])
                m[i, j], m[j, i] = p, 1.0 - p
        return m

    def win_rate(self, prompts: Sequence[Sequence[int]], a: Sequence[Sequence[int]],
                 b: Sequence[Sequence[int]]) -> float:
        """Mean ``P(a_i > b_i | prompt_i)`` (ties count one half with a reward oracle)."""
        if not (len(prompts) == len(a) == len(b)) or len(prompts) == 0:
            raise ValueError("Invalid prompts/a/b: need equal, non-zero lengths")
        return sum(self.prob(p, x, y) for p, x, y in zip(prompts, a, b)) / len(prompts)


def build_pairs(prompts: Sequence[Sequence[int]], samples: Sequence[Sequence[Sequence[int]]],
                oracle: PreferenceOracle, *, strategy: str = "best_vs_worst", label: str = "argmax",
                generator: torch.Generator | None = None) -> list[dict]:
    """Preference pairs from ``samples[i]`` (K >= 2 responses of ``prompts[i]``).

    ``strategy``:

    * ``"best_vs_worst"``: one pair per prompt, the highest against the lowest scored sample
      (score: the oracle's reward, else the win rate against the other K-1 samples); prompts whose
      samples all tie give no pair;
    * ``"random"``: samples ``(0, 1), (2, 3), ...`` (draw them at random, so consecutive samples are a
      random pair) labelled by the oracle: ``label="argmax"`` makes the more likely winner the chosen one
      (exact ties dropped), ``label="sample"`` draws the winner with probability ``P(a > b)`` from
      ``generator``.

    Each pair is ``{"prompt", "chosen", "rejected", "pref", "chosen_win_rate", "rejected_win_rate"}``:
    ``pref`` is ``P(chosen > rejected)``, the win rates are each response's mean preference over the other
    samples of its prompt (DNO's ``r_t(y) = E_{y'~pi_t} P(y > y')``, estimated as in SPO).
    """
    if strategy not in ("best_vs_worst", "random"):
        raise ValueError(f"Invalid strategy: {strategy!r} (accepted: 'best_vs_worst', 'random')")
    if label not in ("argmax", "sample"):
        raise ValueError(f"Invalid label: {label!r} (accepted: 'argmax', 'sample')")
    if len(prompts) != len(samples):
        raise ValueError(f"Invalid samples: {len(samples)} sample lists for {len(prompts)} prompts")
    pairs = []
    for prompt, ys in zip(prompts, samples):
        if len(ys) < 2:
            raise ValueError("Invalid samples: need K >= 2 responses per prompt")
        m = oracle.win_matrix(prompt, ys)
        wr = spo_win_rate_reward(m)
        if strategy == "best_vs_worst":
            score = torch.tensor([oracle.reward(prompt, y) for y in ys]) if oracle.has_reward else wr
            i, j = int(score.argmax()), int(score.argmin())
            if score[i] == score[j]:
                continue
            cand = [(i, j, float(m[i, j]))]
        else:
            cand = []
            for a in range(0, len(ys) - 1, 2):
                p = float(m[a, a + 1])
                if label == "sample":
                    win = bool(torch.rand((), generator=generator, dtype=torch.float64) < p)
                elif p == 0.5:
                    continue
                else:
                    win = p > 0.5
                cand.append((a, a + 1, p) if win else (a + 1, a, 1.0 - p))
        for i, j, p in cand:
            pairs.append({"prompt": list(prompt), "chosen": list(ys[i]), "rejected": list(ys[j]), "pref": p,
                          "chosen_win_rate": float(wr[i]), "rejected_win_rate": float(wr[j])})
    return pairs
