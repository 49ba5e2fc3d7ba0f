"""The fused kernels check every tensor they touch before writing any (issue 8, item 1).

A state tensor whose shape no longer matches its parameter (the parameter's
``.data`` was resized after its state was made, or ``load_state_dict`` brought
state of another shape, possibly with the same element count) used to be read
and written past its end by the fused kernels (heap corruption, a later
SIGSEGV) or silently paired with the wrong elements. Now each kernel raises a
RuntimeError, as torch.optim and gradwise's ``fused=False`` path do, before it
writes anything. The cases run in a subprocess, so a crash fails the test instead of
killing the test run.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gradwise._kernels import family
from optim_cases import CASES

KERNELS = family("optim")

_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    import torch
    from optim_cases import CASES, make, NO_FUSED_KERNEL

    def fresh(name, fused):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(6, 4))
        b = torch.nn.Parameter(torch.randn(4))
        opt = make(name, [w, b], fused=fused)
        for _ in range(2):
            w.grad, b.grad = torch.randn(6, 4), torch.randn(4)
            opt.step()
        return w, b, opt

    def snapshot(opt, params):
        tensors = [p.detach().clone() for p in params]
        for p in params:
            tensors += [v.clone() for v in opt.state[p].values() if torch.is_tensor(v)]
        return tensors

    def count(opt, params):
        # every non-tensor entry of the state (step) and of the groups (step, skipped_steps, ...)
        return (repr([{{k: v for k, v in opt.state[p].items() if not torch.is_tensor(v)}} for p in params]),
                repr([{{k: v for k, v in g.items() if k != "params"}} for g in opt.param_groups]))

    def outcome(fn, opt, params):
        before_counters = count(opt, params)
        before = snapshot(opt, params)
        try:
            fn()
            err = None
        except RuntimeError as e:
            err = str(e).splitlines()[0][:200]
        after = snapshot(opt, params)
        after_counters = count(opt, params)
        same = len(before) == len(after) and all(
            a.shape == b.shape and torch.equal(a, b) for a, b in zip(before, after))
        counters = after_counters == before_counters
        return {{"raised": err, "untouched": same, "counters": counters}}

    out = {{}}
    for name in sorted(CASES):
        for fused in (True, False):
            if fused and name in NO_FUSED_KERNEL:
                continue
            # 1. a parameter resized in place after its state was created
            w, b, opt = fresh(name, fused)
            w.data = torch.randn(12, 4)
            w.grad, b.grad = torch.randn(12, 4), torch.randn(4)
            out[f"{{name}}|{{fused}}|resized"] = outcome(opt.step, opt, [w, b])
            # 2. a state_dict whose tensors have the same element count in another shape
            w, b, opt = fresh(name, fused)
            sd = opt.state_dict()
            for st in sd["state"].values():
                for k, v in list(st.items()):
                    if torch.is_tensor(v) and v.shape == (6, 4):
                        st[k] = v.reshape(4, 6).clone()
            opt.load_state_dict(sd)
            w.grad, b.grad = torch.randn(6, 4), torch.randn(4)
            out[f"{{name}}|{{fused}}|reshaped-state"] = outcome(opt.step, opt, [w, b])
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def outcomes():
    code = _SCRIPT.format(tests=str(Path(__file__).parent.parent))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"the subprocess died (exit {run.returncode}): {run.stderr[-2000:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not KERNELS.available(), reason=f"optim kernels unavailable: {KERNELS.error()}")
@pytest.mark.parametrize("case", ["resized", "reshaped-state"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_mismatched_state_raises_before_any_tensor_is_written(outcomes, name, case):
    fused = outcomes.get(f"{name}|True|{case}")
    if fused is not None:  # (configurations without a fused kernel have only the foreach path)
        assert fused["raised"], f"{name} fused, {case}: stepped with a mismatched state instead of raising"
        assert fused["untouched"], f"{name} fused, {case}: raised ({fused['raised']}) after writing"
    # The foreach path checks every state tensor before any write too (issue 8, item 1), so nothing
    # (parameters, state, step counters) changes: unlike torch.optim's foreach path, which may have
    # applied e.g. the decoupled decay before its op raises.
    foreach = outcomes[f"{name}|False|{case}"]
    assert foreach["raised"], f"{name} foreach, {case}: stepped with a mismatched state instead of raising"
    assert foreach["untouched"], f"{name} foreach, {case}: raised ({foreach['raised']}) after writing"
    for path in (fused, foreach):
        if path is not None:
            assert path["counters"], f"{name}, {case}: a step counter moved before the error ({path['raised']})"
