"""Old import paths of the preference family (before the objectives/, trainer/ and online/ split) keep
working, warn with the new path, and give the very objects of the new one; current paths do not warn."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings

import pytest

import gradwise.preference as pref

OBJECTIVE_MODULES = ("accel_apo", "cpl", "degree_sspo", "dpo", "fdpo", "hybrid_hypo", "ipo", "nash_dno", "nash_egpo",
                     "nash_inpo", "reward_ensemble", "robust_srpo", "rpo", "selfplay_spo", "simpo", "superhf_sft",
                     "token_credit")

# run in a fresh interpreter: a module imported once is cached, and its second import warns no more
_SCRIPT = r"""
import importlib, json, sys, warnings
out = {}
for old, new in json.loads(sys.argv[1]):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        mod = importlib.import_module(old)
        exec(f"from {old} import *")
    msgs = [str(x.message) for x in w if issubclass(x.category, DeprecationWarning)]
    out[old] = {"same": mod is importlib.import_module(new), "msgs": msgs,
                "names": sorted(getattr(mod, "__all__", []))}
print(json.dumps(out))
"""


def test_import_of_every_old_module_path_warns_and_gives_the_new_module():
    moved = [(f"gradwise.preference.{m}", f"gradwise.preference.objectives.{m}") for m in OBJECTIVE_MODULES]
    moved.append(("gradwise.preference.curry_dpo", "gradwise.schedules.curry_dpo"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(moved)], capture_output=True, text=True,
                         env=env, timeout=300, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    for old, new in moved:
        r = result[old]
        assert r["same"] and r["names"], old
        assert r["msgs"] and all(f"{old} is deprecated; import from {new}" in m and "0.2" in m for m in r["msgs"])


@pytest.mark.parametrize("name", OBJECTIVE_MODULES)
def test_every_old_objective_module_path_works_with_a_warning(name):
    new = importlib.import_module(f"gradwise.preference.objectives.{name}")
    with pytest.warns(DeprecationWarning, match=rf"gradwise\.preference\.{name} is deprecated; import from "
                                                rf"gradwise\.preference\.objectives\.{name}"):
        old = getattr(pref, name)
    assert old is new
    for export in new.__all__:  # every name the old module had is there, the same object
        assert getattr(pref, export) is getattr(new, export)


def test_curry_dpo_names_moved_to_schedules():
    import gradwise.schedules as schedules
    for name in ("curry_dpo_pairs", "curry_dpo_schedule", "curry_dpo_next_reference"):
        with pytest.warns(DeprecationWarning, match=rf"gradwise\.preference\.{name} is deprecated; import from "
                                                    r"gradwise\.schedules"):
            assert getattr(pref, name) is getattr(schedules, name)
        assert name not in pref.__all__  # `from gradwise.preference import *` does not warn


def test_current_paths_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        from gradwise.preference import (ONLINE_METHODS, OnlinePreferenceLoop, PreferenceObjective,  # noqa: F401
                                         PreferenceTrainer, dpo_loss, online_method)
        from gradwise.preference.online import OnlineMethod, build_pairs, generate  # noqa: F401
        from gradwise.preference.trainer import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, QUANTITIES,  # noqa: F401
                                                 REVISION_QUANTITIES, build_revision_prompt)
        assert pref.trainer.PreferenceTrainer is PreferenceTrainer
        assert pref.online.OnlinePreferenceLoop is OnlinePreferenceLoop
        assert pref.dpo_loss is pref.objectives.dpo_loss is dpo_loss


def test_unknown_attribute_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        pref.no_such_thing  # noqa: B018
