"""The README's "Use" section: every Python snippet parses, and the preference example runs as written."""
from __future__ import annotations

import ast
import contextlib
import io
import math
import re
from pathlib import Path

import torch

from lm_fixtures import TinyGRULM

README = Path(__file__).resolve().parents[1] / "README.md"


def _use_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Use\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", _use_section(), re.S)


def _preference_snippet() -> str:
    found = [b for b in _python_blocks() if "PreferenceTrainer(" in b]
    assert len(found) == 1, "the Use section should hold one preference example"
    return found[0]


def _run(code: str, **names) -> tuple[dict, str]:
    """Execute a snippet in a fresh namespace (plus ``names``); return the namespace and what it printed."""
    namespace: dict = {"__name__": "readme_snippet", **names}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{README}:Use", "exec"), namespace)  # noqa: S102 - our own README
    return namespace, out.getvalue()


def test_use_snippets_parse():
    blocks = _python_blocks()
    assert len(blocks) >= 4
    for block in blocks:
        ast.parse(block)


def test_other_use_snippets_run_given_a_model_and_logits():
    """The optimizer and loss snippets use a ``model``, ``logits`` and ``target`` of the reader's."""
    torch.manual_seed(0)
    for block in _python_blocks():
        if "PreferenceTrainer(" in block:
            continue
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 10))
        ns, _ = _run(block, model=model, logits=torch.randn(8, 10), target=torch.randint(0, 10, (8,)))
        if "opt" in ns:
            assert isinstance(ns["opt"], torch.optim.Optimizer)


def test_preference_example_runs_as_written():
    torch.set_num_threads(1)
    ns, out = _run(_preference_snippet())
    # the four log-probabilities, computed by hand: the policy is still the reference, so DPO gives log 2
    assert ns["losses"].shape == (2,)
    torch.testing.assert_close(ns["losses"], torch.full((2,), math.log(2.0)))
    # ... and the trainer computes the same ones (its reference is its own copy of the initial model)
    q = ns["trainer"].compute_logps(ns["dataset"][:2])
    torch.testing.assert_close(q["ref_chosen_logps"], ns["ref_chosen"])
    torch.testing.assert_close(q["ref_rejected_logps"], ns["ref_rejected"])
    history = ns["history"]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"] and history[-1]["reward_accuracy"] == 1.0
    assert out.startswith("loss 0.693 -> ")


def test_preference_example_runs_with_another_model():
    """"Any nn.Module from token ids to logits": the same example with a tiny GRU language model."""
    code = _preference_snippet()
    pattern = re.compile(r"^model = .*$", re.M)
    assert len(pattern.findall(code)) == 1
    ns, _ = _run(pattern.sub("model = TinyGRULM(0, vocab=VOCAB)", code), TinyGRULM=TinyGRULM)
    assert isinstance(ns["model"], TinyGRULM)
    assert ns["history"][-1]["loss"] < ns["history"][0]["loss"]


def test_the_arena_line_names_every_registered_study():
    # the `gradwise arena [STUDY]` comment lists the studies; a new study must be added there
    from gradwise.arena.study import studies

    text = README.read_text(encoding="utf-8")
    start = text.index("gradwise arena [STUDY] [options]")
    end = text.index("gradwise bench", start)
    listed = set(re.findall(r"[a-z][a-z0-9-]*", text[start:end].replace("--ray", "")))
    missing = [name for name in studies() if name not in listed]
    assert not missing, f"README's arena line does not name {missing}"
