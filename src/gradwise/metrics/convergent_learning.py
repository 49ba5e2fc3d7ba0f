"""Neuron alignment between two networks (Li et al., 2016, "Convergent Learning"): unit correlations,
one-to-one (bipartite) matching and semi-matching, mean matched correlation per layer."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gradwise._validate import check_choice
from gradwise.metrics.callback import TrainingCallback
from gradwise.registry import register

__all__ = ["NeuronAlignmentCallback", "match_units", "neuron_alignment", "unit_correlation"]


def _units(acts, name: str) -> Tensor:
    if not torch.is_tensor(acts) or acts.dim() not in (2, 3, 4) or not acts.is_floating_point():
        raise ValueError(f"Invalid {name}: {type(acts).__name__}{tuple(acts.shape) if torch.is_tensor(acts) else ''} "
                         "(accepted: float activations [N, units], or [N, channels, L] / [N, channels, H, W])")
    if acts.dim() > 2:  # every spatial position of a channel counts as one more sample of that unit
        acts = acts.flatten(2).transpose(1, 2).reshape(-1, acts.shape[1])
    return acts.double()


def unit_correlation(acts_a: Tensor, acts_b: Tensor) -> Tensor:
    r"""``[U_a, U_b]`` Pearson correlations between the units of two networks over the same inputs:

    .. math:: \operatorname{corr}(a_i, b_j) = \frac{\mathbb E[a_i b_j] - \mu_{a_i} \mu_{b_j}}{\sigma_{a_i} \sigma_{b_j}}

    (population moments over the samples; a conv channel's every spatial position is a sample, as the paper
    computes its per-channel statistics over images and positions). Computed in float64. A unit that is
    constant on the data (a dead ReLU) has no defined correlation: its row/column is 0.
    """
    a, b = _units(acts_a, "acts_a"), _units(acts_b, "acts_b")
    if a.shape[0] != b.shape[0] or a.shape[0] < 2:
        raise ValueError(f"Invalid acts_b: {a.shape[0]} vs {b.shape[0]} samples (accepted: the same inputs, >= 2)")
    a, b = a - a.mean(0), b - b.mean(0)
    sa, sb = a.pow(2).mean(0).sqrt(), b.pow(2).mean(0).sqrt()
    cov = a.T @ b / a.shape[0]
    denom = sa[:, None] * sb[None, :]
    return torch.where(denom > 0, cov / denom.clamp(min=torch.finfo(torch.float64).tiny), 0.0)


def match_units(corr: Tensor, method: str = "bipartite") -> tuple[Tensor, Tensor]:
    """Match each unit of network a (rows of ``corr``) to a unit of network b (columns).

    ``"bipartite"``: the one-to-one matching maximizing the summed correlation (the paper's max-weight
    bipartite matching, there with networkx's ``max_weight_matching``; here the Hungarian algorithm,
    ``scipy.optimize.linear_sum_assignment``; square ``corr``, or more columns than rows).
    ``"semi"``: the paper's semi-matching, each unit to its most correlated unit of b (b's units may be
    used more than once). Returns ``(partner [U_a] long, matched correlation [U_a])``.
    """
    check_choice("method", method, ("bipartite", "semi"))
    if not torch.is_tensor(corr) or corr.dim() != 2 or not corr.is_floating_point() \
            or not bool(torch.isfinite(corr).all()):
        raise ValueError("Invalid corr: (accepted: a finite float tensor [U_a, U_b])")
    if method == "semi":
        best, partner = corr.max(1)
        return partner, best
    if corr.shape[0] > corr.shape[1]:
        raise ValueError(f"Invalid corr: {tuple(corr.shape)} (accepted for method='bipartite': U_a <= U_b)")
    from scipy.optimize import linear_sum_assignment
    rows, cols = linear_sum_assignment(corr.detach().cpu().double().numpy(), maximize=True)
    partner = torch.as_tensor(cols, dtype=torch.long, device=corr.device)[torch.as_tensor(rows).argsort()]
    return partner, corr.gather(1, partner[:, None])[:, 0]


@register(kind="metric", paper="Convergent Learning: Do different neural networks learn the same representations?",
          year=2016, arxiv="1511.07543",
          code="https://github.com/yixuanli/convergent_learning/tree/2ab72f873c47b37c06f286f97ea47d4bd806eb6a",
          summary="unit correlation matrix between two nets, bipartite (Hungarian) and semi-matching, mean "
                  "matched correlation")
def neuron_alignment(acts_a: Tensor, acts_b: Tensor, method: str = "bipartite") -> Tensor:
    r"""Mean correlation of the matched unit pairs of one layer of two networks (0-dim float64 tensor).

    Paper: Li, Yosinski, Clune, Lipson, Hopcroft, "Convergent Learning: Do different neural networks learn
    the same representations?", ICLR 2016, arXiv:1511.07543. Authors' code: github.com/yixuanli/
    convergent_learning (a notebook over correlation matrices computed with Caffe, and
    ``experiments/match_unit.py``). Two networks trained from different initializations are compared
    unit by unit: :func:`unit_correlation` gives :math:`\operatorname{corr}(a_i, b_j)` over a data set,
    :func:`match_units` pairs units one-to-one (bipartite, ``method="bipartite"``) or each to its best
    partner (semi-matching, ``"semi"``), and the layer's alignment is the mean correlation of the pairs
    (the paper plots these per-pair correlations per layer; high for conv1, lower deeper).

    Checked against: the authors' ``_max_match_order`` (networkx max-weight matching) gives the same
    permutation as ``"bipartite"`` on the golden data; their correlations come from Caffe pickles we cannot
    run, so :func:`unit_correlation` is tested against ``numpy.corrcoef`` instead.
    """
    return match_units(unit_correlation(acts_a, acts_b), method)[1].mean()


class NeuronAlignmentCallback(TrainingCallback):
    """Record, every ``every`` steps, :func:`neuron_alignment` between layers of the trained model and of a
    fixed ``reference`` model on fixed ``inputs``.

    ``layers``: names of submodules (``dict(model.named_modules())`` keys) present in both models; their
    outputs are captured by forward hooks during one ``no_grad`` forward of each model in eval mode
    (training modes restored). ``history`` holds ``(step, {layer: mean matched correlation})``.
    """

    def __init__(self, reference: nn.Module, inputs: Tensor, layers: Sequence[str], *, every: int = 1,
                 method: str = "bipartite") -> None:
        super().__init__(every)
        if not isinstance(reference, nn.Module):
            raise ValueError(f"Invalid reference: {type(reference).__name__} (accepted: an nn.Module)")
        names = dict(reference.named_modules())
        if isinstance(layers, str) or not layers or any(name not in names for name in layers):
            raise ValueError(f"Invalid layers: {layers!r} (accepted: a non-empty list of submodule names of "
                             "reference)")
        self.reference, self.inputs, self.layers = reference, inputs, list(layers)
        self.method = check_choice("method", method, ("bipartite", "semi"))
        self._reference_acts = None

    def _activations(self, model: nn.Module) -> dict[str, Tensor]:
        modules = dict(model.named_modules())
        missing = [name for name in self.layers if name not in modules]
        if missing:
            raise ValueError(f"Invalid model: has no submodule {missing[0]!r} (accepted: a model with the layers)")
        acts, handles = {}, []
        for name in self.layers:
            handles.append(modules[name].register_forward_hook(
                lambda mod, args, out, name=name: acts.__setitem__(name, out.detach())))
        modes = [(m, m.training) for m in model.modules()]
        try:
            model.eval()
            with torch.no_grad():
                model(self.inputs)
        finally:
            for h in handles:
                h.remove()
            for m, mode in modes:
                m.train(mode)
        return acts

    def on_step(self, step: int, *, model=None, loss=None, **ctx) -> None:
        if not self.due(step):
            return
        if not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: {type(model).__name__} (accepted: an nn.Module)")
        if self._reference_acts is None:
            self._reference_acts = self._activations(self.reference)
        acts = self._activations(model)
        self.record(step, {name: float(neuron_alignment(acts[name], self._reference_acts[name], self.method))
                           for name in self.layers})
