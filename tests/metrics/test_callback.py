import pytest

from gradwise.metrics import TrainingCallback, call_callbacks


class Counter(TrainingCallback):
    def on_step(self, step, *, model=None, loss=None, **ctx):
        if self.due(step):
            self.record(step, (loss, ctx.get("task")))

    def on_eval(self, step, *, model=None, **ctx):
        self.record(step, "eval")


def test_hooks_every_and_history():
    a, b = Counter(every=3), Counter()
    for step in range(7):
        call_callbacks([a, b], "on_step", step, loss=float(step), task=1, unused="ignored")
    call_callbacks([a], "on_eval", 7)
    assert [s for s, _ in a.history] == [0, 3, 6, 7]
    assert a.history[1] == (3, (3.0, 1)) and a.latest == "eval"
    assert len(b.history) == 7
    assert TrainingCallback().latest is None


def test_bad_input():
    with pytest.raises(ValueError, match="every"):
        TrainingCallback(every=0)
    with pytest.raises(ValueError, match="hook"):
        call_callbacks([Counter()], "on_batch", 0)
    with pytest.raises(ValueError, match="callbacks"):
        call_callbacks([object()], "on_step", 0)
