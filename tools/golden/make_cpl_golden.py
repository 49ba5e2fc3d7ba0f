"""Golden values for CPL, made by running the authors' own loss function.

``biased_bce_with_logits`` of ``research/algs/cpl.py`` in github.com/jhejna/cpl (commit b333667)
is lifted out of the file with ``ast`` (the module's other imports, their training framework,
are not needed and not run) and called on fixed per-step log-probs turned into segment
advantages exactly as their ``CPL._get_cpl_loss`` does (``adv = alpha * lp; adv.sum(-1)``).
Their file is not part of this repository; point CPL_REF at it and run from the repository root:

    CPL_REF=/path/to/cpl/research/algs/cpl.py .venv/bin/python tools/golden/make_cpl_golden.py

Saves tests/data/cpl_golden.pt: ``cases``, each with ``alpha``, ``bias``, per-step log-probs
``lp_1``/``lp_2`` (float64, [B, T]; their segment 1 and 2), ``label`` (their y: 1 prefers
segment 2, 0.5 a tie), the mean ``loss`` they return and its gradients w.r.t. ``lp_1``/``lp_2``.
"""
from __future__ import annotations

import ast
import os

import torch

here = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(here, "..", "..", "tests", "data", "cpl_golden.pt")


def load(path, name):
    tree = ast.parse(open(path).read())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            ns = {"torch": torch}
            exec(compile(ast.Module(body=[node], type_ignores=[]), path, "exec"), ns)
            return ns[name]
    raise RuntimeError(f"{name} not found in {path}")


def main():
    fn = load(os.environ["CPL_REF"], "biased_bce_with_logits")
    gen = torch.Generator().manual_seed(95)
    cases = []
    for alpha, bias in [(0.1, 0.5), (0.1, 1.0), (0.2, 0.75), (1.0, 0.5)]:
        for scale in (0.5, 5.0):
            b, t = 12, 16
            lp1 = -(torch.rand(b, t, generator=gen, dtype=torch.float64) * scale)
            lp2 = -(torch.rand(b, t, generator=gen, dtype=torch.float64) * scale)
            label = torch.tensor([1.0, 0.0, 0.5] * 4, dtype=torch.float64)
            x1, x2 = lp1.clone().requires_grad_(True), lp2.clone().requires_grad_(True)
            loss, _ = fn((alpha * x1).sum(dim=-1), (alpha * x2).sum(dim=-1), label, bias=bias)
            loss.backward()
            cases.append(dict(alpha=alpha, bias=bias, lp_1=lp1, lp_2=lp2, label=label, loss=loss.detach(),
                              grad_1=x1.grad, grad_2=x2.grad))
    torch.save({"cpl_commit": "b333667", "torch_version": str(torch.__version__), "cases": cases}, OUT)
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
