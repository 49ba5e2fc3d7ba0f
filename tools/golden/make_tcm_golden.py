"""Golden values for the TCM regularizer, made by running pytorch-metric-learning's port.

The authors' repository (amazon-science/threshold-consistent-margin-loss) was
not available; pytorch-metric-learning's ``ThresholdConsistentMarginLoss``
(github.com/KevinMusgrave/pytorch-metric-learning, v2.8.1, commit
216a792c22b0154d3d3bf008a7317edc7d677e71) implements the paper's formula.
Put its ``src`` folder on PYTHONPATH (plus any module named ``tqdm``), then run
from the repository root:

    PYTHONPATH=/path/to/pml/src .venv/bin/python tools/golden/make_tcm_golden.py

Writes tests/data/tcm_golden.pt: cases (embeddings, labels, kwargs, loss, grad), float64.
"""
import os

import torch
from pytorch_metric_learning.losses import ThresholdConsistentMarginLoss

here = os.path.dirname(os.path.abspath(__file__))
g = torch.Generator().manual_seed(0)
out = []
for n, d, c, kw in [
    (8, 4, 3, dict(lambda_plus=1.0, lambda_minus=1.0, margin_plus=0.9, margin_minus=0.5)),
    (12, 3, 4, dict(lambda_plus=0.5, lambda_minus=2.0, margin_plus=0.6, margin_minus=0.0)),
    (10, 5, 2, dict(lambda_plus=1.0, lambda_minus=0.3, margin_plus=0.2, margin_minus=-0.2)),
    (16, 2, 5, dict(lambda_plus=1.0, lambda_minus=1.0, margin_plus=0.95, margin_minus=0.3)),
]:
    emb = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, c, (n,), generator=g)
    loss = ThresholdConsistentMarginLoss(**kw)(emb, labels)
    loss.backward()
    out.append(dict(embeddings=emb.detach().clone(), labels=labels, pml_kwargs=kw,
                    kwargs=dict(lambda_pos=kw["lambda_plus"], lambda_neg=kw["lambda_minus"],
                                margin_pos=kw["margin_plus"], margin_neg=kw["margin_minus"]),
                    loss=loss.detach().clone(), grad=emb.grad.clone(),
                    reference="pytorch-metric-learning 2.8.1 ThresholdConsistentMarginLoss @ 216a792c"))
torch.save(out, os.path.join(here, "..", "..", "tests", "data", "tcm_golden.pt"))
print(len(out), "cases", [float(c["loss"]) for c in out])
