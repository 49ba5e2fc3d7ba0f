"""Inputs and small checks the losses-side test modules share (tests/<family>/ import them by name;
conftest puts tests/ on sys.path)."""
import torch

f64 = torch.float64


def logits_target(n=12, c=7, seed=0, scale=2.0, dtype=f64):
    """Seeded logits [n, c] (drawn in float64, then cast) and labels [n] in [0, c)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=g, dtype=f64) * scale).to(dtype)
    y = torch.randint(0, c, (n,), generator=g)
    return x, y


def calibration_case(seed, n=500, c=7, scale=2.5, acc=0.6):
    """Seeded float64 logits [n, c] and labels that agree with the argmax on about ``acc`` of the rows."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    y = torch.where(torch.rand(n, generator=g) < acc, logits.argmax(1), torch.randint(0, c, (n,), generator=g))
    return logits, y


def finite(t):
    return bool(torch.isfinite(t).all())


def kl_rows(p, q):
    """KL(p || q) per row, from probabilities."""
    return (p * (p.log() - q.log())).sum(1)
