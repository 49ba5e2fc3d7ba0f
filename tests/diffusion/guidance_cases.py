"""Stand-in denoisers for the guidance tests (small and seeded; not the toy substrate of gradwise.diffusion)."""
import torch
from torch import nn


class ScriptedModel:
    """Returns prescribed predictions: ``preds[step][0]`` for the conditional pass, ``[1]`` for the
    unconditional one (told apart by the ``label`` keyword), and counts its calls."""

    def __init__(self, preds):
        self.preds = preds
        self.step = 0
        self.calls = 0

    def __call__(self, sample, timestep, *, label):
        self.calls += 1
        return self.preds[self.step][0 if label == "c" else 1]


class TinyEpsNet(nn.Module):
    """eps(x, t, y) = tanh(W x) + emb[y] * (t / 1000): the label's pull fades as t -> 0, so the
    conditional and unconditional predictions align late in sampling (as the AG paper observes).
    Label ``num_classes`` is the null (unconditional) label."""

    def __init__(self, dim=6, num_classes=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(dim, dim, generator=g, dtype=torch.float64) * 0.5)
        emb = torch.randn(num_classes + 1, dim, generator=g, dtype=torch.float64) * 2.0
        emb[num_classes] = 0.0
        self.emb = nn.Parameter(emb)

    def forward(self, x, t, *, class_labels):
        t = torch.as_tensor(t, dtype=x.dtype)
        return torch.tanh(x @ self.w.T) + self.emb[class_labels] * (t / 1000.0)
