import pytest


@pytest.fixture
def flwr_run():
    """Flower's process-wide run identity, which a Message needs, set while a test drives a strategy by hand."""
    task = pytest.importorskip("flwr.supercore.task_identity").TaskIdentity
    saved = dict(vars(task))
    task._run_id, task._node_id, task._task_id = 1, 0, 1
    yield
    for name in ("_run_id", "_node_id", "_task_id"):
        if name in saved:
            setattr(task, name, saved[name])
