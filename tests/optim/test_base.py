"""The composable step of GradwiseOptimizer: which hook runs, and what a new optimizer has to write."""
import pytest
import torch

from gradwise.optim import GradwiseOptimizer
from gradwise.optim._state import zeros_state


class Recorder(GradwiseOptimizer):
    """Momentum SGD written as the two hooks, recording which one ran."""

    def __init__(self, params, lr=0.1, momentum=0.5, **kwargs):
        self.calls = []
        super().__init__(params, dict(lr=lr, momentum=momentum), **kwargs)

    def _init_state(self, p, group):
        return zeros_state(p, "buf")

    def _fused_eligible(self, t):
        # no kernel needed for this test: "fused" is any float32 CPU tensor
        return (t.dtype == torch.float32, "float32 only")

    def _step_foreach(self, group, params, grads, states):
        self.calls.append("foreach")
        bufs = [s["buf"] for s in states]
        torch._foreach_mul_(bufs, group["momentum"])
        torch._foreach_add_(bufs, grads)
        torch._foreach_add_(params, bufs, alpha=-group["lr"])

    def _step_fused(self, group, params, grads, states):
        self.calls.append("fused")
        for p, g, s in zip(params, grads, states):
            s["buf"].mul_(group["momentum"]).add_(g)
            p.add_(s["buf"], alpha=-group["lr"])


def _step(opt, *params):
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()


@pytest.mark.parametrize("kwargs,expected", [({}, "fused"), ({"fused": True}, "fused"),
                                             ({"fused": False}, "foreach"), ({"foreach": True}, "foreach")])
def test_the_base_picks_the_hook_from_fused_and_foreach(kwargs, expected):
    p = torch.nn.Parameter(torch.zeros(3))
    opt = Recorder([p], **kwargs)
    _step(opt, p)
    assert opt.calls == [expected]
    torch.testing.assert_close(p.detach(), torch.full((3,), -0.1))


def test_a_groups_own_setting_and_the_tensors_choose_per_bucket():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(3))
    c = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))  # not eligible: the foreach hook
    opt = Recorder([{"params": [a]}, {"params": [b], "foreach": True}, {"params": [c]}])
    _step(opt, a, b, c)
    assert opt.calls == ["fused", "foreach", "foreach"]
    with pytest.raises(RuntimeError, match=r"Recorder\(fused=True\): float32 only"):
        Recorder([c], fused=True).step() if c.grad is not None else None


def test_an_optimizer_with_only_a_foreach_hook_runs_when_not_fusable():
    class Plain(Recorder):
        _step_fused = GradwiseOptimizer._step_fused

        def _fusable(self, group):
            return False

    p = torch.nn.Parameter(torch.zeros(3))
    opt = Plain([p])
    _step(opt, p)
    assert opt.calls == ["foreach"]
    with pytest.raises(ValueError, match="Invalid fused: True, but Plain has no fused kernel"):
        Plain([p], fused=True)
