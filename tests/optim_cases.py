"""Every gradwise optimizer's test configurations, read from its registry record (``info["test_cases"]``).

A new optimizer is covered by every optimizer suite (contract, reliability, overflow, kernel safety,
compile, properties) as soon as its record lists a test case: no list of names is kept here.
"""
from gradwise.registry import get, methods


def _cases(kinds):
    out, no_fused = {}, set()
    for rec in methods(family="optim"):
        if rec.kind not in kinds:
            continue
        for case, spec in rec.info.get("test_cases", {}).items():
            out[case] = dict(spec["kwargs"])
            if not spec.get("fused_kernel", True):
                no_fused.add(case)
    return out, no_fused


# case name ("AdaBelief", "AdaBelief-amsgrad") -> constructor kwargs chosen to exercise the machinery
CASES, NO_FUSED_KERNEL = _cases({"optimizer"})
# optimizer wrappers (registry kind "optimizer-wrapper") -> kwargs, base optimizer included
WRAPPER_CASES, _ = _cases({"optimizer-wrapper"})


def make(name, params, **extra):
    # cases whose configuration has no fused kernel run their fused=True configurations with the
    # default (fused=None, i.e. the _foreach_ path)
    cls = get(name.split("-")[0]).load()
    if name in NO_FUSED_KERNEL and extra.get("fused") is True:
        extra = {**extra, "fused": None}
    return cls(params, **{**CASES[name], **extra})


def spiky_grads(ps, t):
    """Seeded gradients for step ``t`` (entries spread over ~3 decades, plus a pull towards 0): the 8-bit
    state tests' workload."""
    import torch

    g = torch.Generator().manual_seed(100 + t)
    for p in ps:
        scale = torch.exp(torch.randn(p.shape, generator=g, dtype=p.dtype))  # entries over ~3 decades
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * scale * 0.01 + 0.1 * p.detach()


def run_steps(opt, ps, steps, start=0):
    """``steps`` optimizer steps on :func:`spiky_grads` from step ``start``."""
    for t in range(start, start + steps):
        spiky_grads(ps, t)
        opt.step()
