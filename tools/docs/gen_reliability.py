"""Regenerate docs/reliability.md: run the reliability suites and write what they promise and what they measured.

Usage: ``python tools/docs/gen_reliability.py [--out PATH]`` (from the repository root's venv; takes minutes).

It runs only the suites named in ``AREAS`` below (the modules of issue 8, plus the checkpoint, CLI and
arena tests it names by function), in this process with ``pytest -p no:cacheprovider``, records every
test's outcome with a small plugin, and writes one markdown file whose figures are the ones it prints.
For the loss suite it also records each (loss, case) outcome the suite computed, by wrapping the test
module's ``_run`` while the tests run (nothing is run twice).

Exit status: 0 when every test passed (or was skipped / xfailed as marked), 1 otherwise (the doc is still
written, with the failures counted in it, so that what was measured is what is shown).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "reliability.md"
OPT_DOC = "optimizers.md"  # relative to docs/


@dataclass(frozen=True)
class Area:
    """One area of promises: ``select`` maps a test module (path from the repository root) to the test
    functions of it that check this area, or to ``None``: every test of the module not claimed by another area."""

    key: str
    title: str
    promise: str
    select: dict[str, tuple[str, ...] | None]
    notes: tuple[str, ...] = field(default_factory=tuple)


FAULTS = "tests/optim/test_reliability_faults.py"
RELIAB = "tests/optim/test_reliability.py"
PT_INPUTS = "tests/preference/test_trainer_inputs.py"

AREAS: tuple[Area, ...] = (
    Area(
        "contract", "Optimizers: torch.optim's contract",
        "Every registered optimizer (and the `OrthoGrad` wrapper) passes PyTorch's own generic optimizer "
        "tests (`TestOptimRenewed`), adapted, on both update paths (fused kernels and `_foreach_`): "
        "no step without gradients, deep copies and pickles that step like the original, deterministic "
        "and bit-identical `state_dict` round trips that load torch's format, hooks, `maximize`, tensor "
        f"`lr`, complex parameters. The details are in [optimizers.md]({OPT_DOC}#torchoptims-contract).",
        {"tests/optim/test_contract.py": None, RELIAB: None},
    ),
    Area(
        "bad-arguments", "Optimizers: bad arguments",
        "Every constructor argument of every registered optimizer, grad transform and optimizer wrapper, "
        "given a bad value, is refused with a `ValueError` that names that argument and what is accepted, "
        "also through `add_param_group` (a refused group is not added); sparse gradients are a "
        "`RuntimeError`.",
        {FAULTS: None,  # test_a_bad_*_refused_naming_it (and any test of it no other area names)
         RELIAB: ("test_invalid_hyperparameters_name_the_argument", "test_specific_invalid_arguments",
                  "test_bad_param_group_is_not_added", "test_sparse_gradient_is_rejected",
                  "test_fused_true_needs_a_supported_dtype")},
    ),
    Area(
        "mismatched-state", "Optimizers: mismatched state",
        "A step whose state does not fit its parameter (a parameter resized or retyped after its state was "
        "made, a loaded state of another shape, a gradient of another shape) raises a `RuntimeError` naming "
        "the parameter index and the state key, and changes nothing: parameters, state, step counters.",
        {FAULTS: ("test_mismatched_state_raises_and_changes_nothing",)},
    ),
    Area(
        "kernel-safety", "Optimizers: fused-kernel memory safety",
        "Each fused CPU kernel checks every tensor it is given (shape, dtype, device, layout) before it "
        "writes any, so a mismatched state raises instead of writing past a buffer; the cases run in a "
        "subprocess, so a crash would fail the test instead of ending the run.",
        {"tests/optim/test_kernel_safety.py": None},
    ),
    Area(
        "overflow", "Optimizers: non-finite and large gradients",
        "Gradients up to float32's max never write NaN or inf into parameters when the authors' math stays "
        "finite (norms and dot products are taken on power-of-two downscaled values, or summed in double); "
        "where the math itself overflows, and for gradients holding inf or NaN, `skip_nonfinite=True` "
        "skips the step with parameters and state untouched. Without it NaNs propagate, as in torch.optim.",
        {"tests/optim/test_reliability_overflow.py": None,
         RELIAB: ("test_skip_nonfinite_leaves_params_and_state_untouched",
                  "test_skip_nonfinite_does_not_skip_large_finite_gradients",
                  "test_without_skip_nonfinite_nan_propagates_like_torch")},
    ),
    Area(
        "other-checkpoints", "Optimizers: checkpoints of other optimizers",
        "`load_state_dict` of another optimizer's state_dict (another class, missing hyperparameters, other "
        "per-parameter state keys, an invalid saved value) fails at load with a `ValueError` naming what "
        "differs, and leaves the optimizer as it was, not at a later `step()`.",
        {FAULTS: ("test_another_optimizers_state_dict_fails_at_load",
                  "test_missing_hyperparameters_fail_at_load_naming_them",
                  "test_other_state_keys_fail_at_load_naming_them",
                  "test_an_invalid_saved_value_fails_at_load_naming_it",
                  "test_own_state_dict_still_loads_with_and_without_the_class_name",
                  "test_lion_state_dict_without_class_name_fails_in_adabelief")},
    ),
    Area(
        "losses", "Losses: bad input",
        "Every registered loss, given labels out of range or of the wrong type, NaN or inf inputs, an empty "
        "batch, a batch whose labels are all `ignore_index`, or float16/bfloat16 inputs near their range's "
        "end, gives either a `ValueError` naming the argument, or torch's `cross_entropy`'s behaviour "
        "(NaN for NaN input, a NaN mean over no samples, finite for -inf masking and large half-precision "
        "logits), or a documented behaviour with its reason (below): never an IndexError or RuntimeError "
        "from inside a kernel, never a silently finite number for NaN input.",
        {"tests/losses/test_reliability.py": None},
    ),
    Area(
        "trainer-inputs", "Preference trainer: inputs",
        "Cached reference log-probs are never another example's (the cache is keyed by content, so "
        "duplicate ids within a dataset or across train and eval sets are safe); token ids given as floats "
        "or bools, negative (e.g. -100 copied from labels) or beyond the vocabulary get a `ValueError` "
        "naming the field and the example, before any update.",
        {PT_INPUTS: ("test_duplicate_ids_within_a_dataset_get_their_own_reference_logps",
                     "test_train_and_eval_sets_sharing_ids_do_not_share_cached_reference_logps",
                     "test_bad_token_ids_name_the_field_and_the_example",
                     "test_collate_names_the_example_by_place_and_id_and_checks_vocab_size",
                     "test_vocab_read_from_the_logits_when_the_model_does_not_say_it",
                     "test_revision_prompts_with_bad_token_ids_are_refused")},
    ),
    Area(
        "trainer-checkpoints", "Preference trainer: checkpoints",
        "`load_checkpoint` validates the whole file before changing anything, so a failing load leaves "
        "model, optimizer and trainer exactly as they were; a file that is not a trainer checkpoint (a bare "
        "`state_dict`, an optimizer's, truncated, text, another format or version) gets one clear error "
        "saying what it is and what was expected; a checkpoint resumes training identically.",
        {PT_INPUTS: None,
         "tests/preference/test_trainer.py": ("test_checkpoint_resume_continues_identically",),
         "tests/preference/test_trainer_extra.py": ("test_checkpoint_keeps_extra_cache_and_resumes_identically",)},
    ),
    Area(
        "cli", "CLI: user mistakes",
        "A user mistake on the command line (an unknown command, study or option, a bad option value, a "
        "study's own usage error) is one line naming the argument and what is accepted, with exit code 2, "
        "never a Python traceback.",
        {"tests/test_cli.py": ("test_unknown_command_and_study_are_usage_errors",
                               "test_bench_without_pytorch_optimizer_is_a_clear_error",
                               "test_every_study_option_with_a_bad_value_is_one_line_and_exit_2",
                               "test_named_examples_from_the_issue",
                               "test_good_values_still_reach_the_study",
                               "test_usage_error_from_a_study_is_one_line")},
    ),
    Area(
        "arena-results", "Arena: results folders",
        "An arena study writes its CSV, JSON and plots into a temporary folder renamed into place at the "
        "end, so a failed or interrupted run leaves no results folder and a rerun replaces an earlier one "
        "whole (never mixing old and new files); an unusable `--out` is a one-line error.",
        {"tests/arena/test_report.py": ("test_out_is_a_file", "test_out_cannot_be_written",
                                        "test_out_in_a_read_only_place", "test_out_keeps_the_users_other_files",
                                        "test_a_failed_run_leaves_no_results_folder",
                                        "test_rerun_replaces_an_earlier_results_folder_whole",
                                        "test_results_folder_direct_use")},
    ),
)

#: every test module the script runs, in order of first mention
SUITES: tuple[str, ...] = tuple(dict.fromkeys(m for a in AREAS for m in a.select))

#: where gradwise deliberately differs from torch.optim (each stated in docs/optimizers.md)
DIFFERENCES = (
    "**Complex parameters in AdamP and SGDP** are refused at construction with a `ValueError`; torch.optim "
    "steps complex parameters as `view_as_real`, and so do all other gradwise optimizers, but AdamP/SGDP's "
    "projection depends on the tensor's dimensions, which `view_as_real` changes.",
    "**A tensor `lr`** (0-dim or one element) is accepted by every optimizer on both paths and read at each "
    "step, so a scheduler can change it in place; torch.optim refuses one in some configurations (e.g. Adam "
    "with `foreach=True` and `capturable=False`).",
    "**`maximize=True`** is accepted by every optimizer and stored per group, as in torch.optim (the same "
    "behaviour, listed because the authors' optimizers lack it).",
    "**`capturable=True` and `differentiable=True`** are refused with a `ValueError` that says why (the step "
    "computes per-tensor coefficients on the host and runs under `no_grad` with in-place writes); `False` "
    "is accepted.",
    "**`foreach=True`/`False`** both select gradwise's `_foreach_` path: there is no separate per-tensor "
    "loop; `fused=True` is checked for every parameter before any math.",
    "**Mismatched state** is checked on the `_foreach_` path too before anything is written, where "
    "torch.optim's foreach path may already have applied e.g. its decoupled decay when its op raises.",
    "**`load_state_dict`** checks the class that saved the state_dict, the group hyperparameters and the "
    "per-parameter state keys before loading anything; torch.optim checks group and parameter counts only "
    "and fails (if at all) at a later `step()`. A torch.optim checkpoint of the same update still loads.",
    "**Non-finite gradients**: `skip_nonfinite=True` (off by default) skips such steps; torch.optim has no "
    "such option outside `GradScaler`.",
)


# ------------------------------------------------------------------------------------------------ the run

def _func(nodeid: str) -> tuple[str, str]:
    """(module path, test function name) of a pytest node id."""
    path, _, rest = nodeid.partition("::")
    return path, rest.split("::")[-1].split("[")[0]


def _area_of(nodeid: str) -> str:
    module, func = _func(nodeid)
    for a in AREAS:
        if func in (a.select.get(module) or ()):
            return a.key
    rest = [a.key for a in AREAS if module in a.select and a.select[module] is None]
    if len(rest) != 1:
        raise SystemExit(f"{nodeid}: belongs to no area (add it to AREAS in {Path(__file__).name})")
    return rest[0]


def _pytest_args() -> list[str]:
    args = []
    for module in SUITES:
        funcs = [f for a in AREAS for f in (a.select.get(module) or ()) if module in a.select]
        whole = any(module in a.select and a.select[module] is None for a in AREAS)
        args += [module] if whole else [f"{module}::{f}" for f in funcs]
    return args


class Recorder:
    """A pytest plugin: the outcome of every test, and the loss suite's (loss, case) outcomes."""

    def __init__(self):
        self.collected: list[str] = []
        self.deselected = 0
        self.outcome: dict[str, str] = {}
        self.loss_outcomes: dict[tuple[str, str], str] = {}
        self.modules: dict[str, object] = {}

    def pytest_collection_finish(self, session):
        self.collected = [item.nodeid for item in session.items]

    def pytest_deselected(self, items):
        self.deselected += len(items)

    def pytest_runtest_setup(self, item):
        mod = getattr(item, "module", None)
        if mod is None:
            return
        self.modules.setdefault(mod.__name__.rpartition(".")[2], mod)
        self.modules.setdefault(mod.__name__, mod)  # also by package: tests/<family>/ may reuse a module name
        if mod.__name__ == "losses.test_reliability" and not getattr(mod._run, "_recorded", False):
            real = mod._run

            def recorded(name, case, *args, **kwargs):
                got = real(name, case, *args, **kwargs)
                self.loss_outcomes[(name, case)] = got
                return got

            recorded._recorded = True
            mod._run = recorded

    def pytest_runtest_logreport(self, report):
        xfail = hasattr(report, "wasxfail")
        if report.skipped:
            self.outcome[report.nodeid] = "xfailed" if xfail else "skipped"
        elif report.failed:
            self.outcome[report.nodeid] = "failed" if report.when == "call" else "error"
        elif report.when == "call":
            self.outcome.setdefault(report.nodeid, "xpassed" if xfail else "passed")


KINDS = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


def run_suites() -> dict:
    import pytest

    rec = Recorder()
    args = ["-p", "no:cacheprovider", "-q", "--no-header", "-rfEs", *_pytest_args()]
    print("running: pytest " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    rc = pytest.main(args, plugins=[rec])
    wall = time.perf_counter() - t0
    if not rec.collected:
        raise SystemExit(f"pytest collected nothing (exit {int(rc)})")
    for area in AREAS:  # a function named in AREAS that no longer exists would silently count nothing
        for module, funcs in area.select.items():
            for f in funcs or ():
                if not any(_func(n) == (module, f) for n in rec.collected):
                    raise SystemExit(f"{area.key}: {module}::{f} was not collected (renamed? update AREAS)")
    per_area = {a.key: Counter() for a in AREAS}
    per_module = {m: Counter() for m in SUITES}
    for nodeid in rec.collected:
        kind = rec.outcome.get(nodeid, "error")  # collected but never reported: count it against the run
        for c in (per_area[_area_of(nodeid)], per_module[_func(nodeid)[0]]):
            c["collected"] += 1
            c[kind] += 1
    return dict(rc=int(rc), wall=wall, per_area=per_area, per_module=per_module, rec=rec)


# ---------------------------------------------------------------------------------------- the figures

def loss_figures(rec: Recorder) -> dict | None:
    mod = rec.modules.get("losses.test_reliability")
    if mod is None:
        return None
    pairs = mod._cases()
    got = {p: rec.loss_outcomes.get(p, "not run") for p in pairs}
    expected = mod.EXPECTED
    by_case = {c: Counter() for c in mod.CASES}
    for (name, case), outcome in got.items():
        by_case[case][outcome] += 1
    return dict(
        losses=len({n for n, _ in pairs}), pairs=len(pairs),
        error=sum(o == "error" for o in got.values()),
        torch_like=sum(o in ("nan", "finite") and p not in expected for p, o in got.items()),
        documented=sum(o in ("nan", "finite") and p in expected for p, o in got.items()),
        other=Counter(o for o in got.values() if o not in ("error", "nan", "finite")),
        by_case=by_case,
        expected=sorted((n, c, sorted(outs), why, got.get((n, c), "not run"))
                        for (n, c), (outs, why) in expected.items()),
    )


def optimizer_figures(rec: Recorder) -> dict:
    from gradwise.registry import methods

    out = dict(optimizers=len(methods(kind="optimizer")), wrappers=len(methods(kind="optimizer-wrapper")))
    contract = rec.modules.get("optim.test_contract")
    if contract is not None:
        table = contract.TORCH_TESTS
        out.update(torch_tests=len(table), adapted=sum(not v.startswith("n/a") for v in table.values()),
                   configs=len(contract.CONFIGS))
    return out


def cli_figures(rec: Recorder) -> dict:
    mod = rec.modules.get("test_cli")
    if mod is None or not hasattr(mod, "_bad_cases"):
        return {}
    cases = mod._bad_cases()
    return dict(bad_values=len(cases), studies=len({s for s, _, _ in cases}),
                options=len({(s, o) for s, o, _ in cases}))


# ------------------------------------------------------------------------------------------ the document

def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def _counts(c: Counter) -> str:
    return " | ".join(str(c[k]) for k in ("collected", *KINDS))


def summary_lines(res: dict, figs: dict, meta: dict) -> list[str]:
    """The figures as printed (the doc's tables are built from the same numbers)."""
    lines = [f"{'area':<22} {'collected':>9} " + " ".join(f"{k:>8}" for k in KINDS)]
    total = Counter()
    for a in AREAS:
        c = res["per_area"][a.key]
        total.update(c)
        lines.append(f"{a.key:<22} {c['collected']:>9} " + " ".join(f"{c[k]:>8}" for k in KINDS))
    lines.append(f"{'total':<22} {total['collected']:>9} " + " ".join(f"{total[k]:>8}" for k in KINDS))
    lf = figs["losses"]
    if lf:
        lines.append(f"losses: {lf['losses']} losses, {lf['pairs']} (loss, case) pairs: {lf['error']} ValueError, "
                     f"{lf['torch_like']} torch's behaviour, {lf['documented']} documented behaviour"
                     + (f", other: {dict(lf['other'])}" if lf["other"] else ""))
    of = figs["optim"]
    lines.append(f"optimizers: {of['optimizers']} registered + {_n(of['wrappers'], 'wrapper')}"
                 + (f"; {of['configs']} configurations; torch's TestOptimRenewed: {of['torch_tests']} tests, "
                    f"{of['adapted']} adapted" if "torch_tests" in of else ""))
    if figs["cli"]:
        cf = figs["cli"]
        lines.append(f"cli: {cf['bad_values']} bad values of {cf['options']} options across {cf['studies']} studies")
    lines.append(f"wall time: {res['wall']:.0f} s; pytest exit status {res['rc']}")
    lines.append(f"date: {meta['date']} UTC; machine: {meta['machine']}")
    return lines


def markdown(res: dict, figs: dict, meta: dict) -> str:
    import torch

    L: list[str] = []
    w = L.append
    w("# Reliability: what gradwise promises under bad input and faults")
    w("")
    w("<!-- Generated by tools/docs/gen_reliability.py from one run of the suites; edit the script, not this file. -->")
    w("")
    w("gradwise is used as a drop-in `torch.optim` replacement, as a loss library and as a trainer. This page "
      "states what it promises when given bad input or hit by a fault, which tests check each promise, and what "
      "one run of those tests measured. The tests are registry-driven, in the spirit of torch's OptimizerInfo "
      "matrix: an optimizer or loss is covered by every case the day it is registered. The optimizer "
      f"conventions behind these promises are in [optimizers.md]({OPT_DOC}).")
    w("")
    w("Regenerate with `python tools/docs/gen_reliability.py`: it runs the suites below and rewrites this file "
      "with the figures it prints.")
    w("")
    w("## The run")
    w("")
    w(f"- Date: {meta['date']} (UTC)")
    w(f"- Machine: {meta['machine']}; torch {torch.__version__}, Python {platform.python_version()}")
    w(f"- Wall time: {res['wall']:.0f} s; pytest exit status {res['rc']}"
      + ("" if res["rc"] == 0 else " (**some tests failed**: see the table)"))
    w(f"- Suites run ({len(SUITES)} modules; only the reliability suites and the named tests of the others, "
      "not the whole test suite; the project's `-m 'not slow'` applies):")
    for m in SUITES:
        pm = res["per_module"][m]
        whole = any(a.select.get(m, ()) is None and m in a.select for a in AREAS)
        w(f"  - `{m}`{'' if whole else ' (named tests)'}: {_n(pm['collected'], 'test')}")
    w("")
    w("## Figures")
    w("")
    w("Cases tried per area: tests collected (one per parametrized case), and their outcomes.")
    w("")
    w("| area | collected | " + " | ".join(KINDS) + " |")
    w("|---|" + "---:|" * (1 + len(KINDS)))
    total = Counter()
    for a in AREAS:
        c = res["per_area"][a.key]
        total.update(c)
        w(f"| [{a.title}](#{a.key}) | {_counts(c)} |")
    w(f"| **total** | {_counts(total)} |")
    w("")
    of, lf, cf = figs["optim"], figs["losses"], figs["cli"]
    w(f"- Optimizers: {_n(of['optimizers'], 'registered optimizer')} and {_n(of['wrappers'], 'wrapper')}"
      + (f", in {of['configs']} configurations; of torch's {of['torch_tests']} `TestOptimRenewed` tests, "
         f"{of['adapted']} are adapted and {of['torch_tests'] - of['adapted']} do not apply (e.g. CUDA-only, "
         "tensors of 64 GB, sparse gradients, closure-only optimizers: each with its reason in "
         "`TORCH_TESTS`, tests/optim/test_contract.py)." if "torch_tests" in of else "."))
    if lf:
        w(f"- Losses: {lf['losses']} registered losses, {lf['pairs']} (loss, case) pairs: **{lf['error']}** give a "
          f"clear `ValueError`, **{lf['torch_like']}** torch's `cross_entropy`'s behaviour and "
          f"**{lf['documented']}** a documented behaviour with its reason"
          + (f"; other outcomes: {dict(lf['other'])}" if lf["other"] else "") + ".")
    if cf:
        w(f"- CLI: {cf['bad_values']} bad values of {cf['options']} options across {cf['studies']} studies, each "
          "one line and exit code 2.")
    w("")
    w("## Promises and how each is tested")
    for a in AREAS:
        c = res["per_area"][a.key]
        w("")
        w(f'<a id="{a.key}"></a>')
        w(f"### {a.title}")
        w("")
        w(a.promise)
        w("")
        tested = []
        for m, funcs in a.select.items():
            if funcs is not None:
                tested.append(f"`{m}` (" + ", ".join(f"`{f}`" for f in funcs) + ")")
            elif any(m in b.select for b in AREAS if b is not a):
                tested.append(f"`{m}` (its other tests)")
            else:
                tested.append(f"`{m}`")
        w("Tested by " + "; ".join(tested) + ".")
        w("")
        w(f"Measured: {c['collected']} cases, {c['passed']} passed, {c['failed'] + c['error']} failed, "
          f"{c['skipped']} skipped, {c['xfailed']} xfailed.")
        if a.key == "losses" and lf:
            w("")
            w("Per case (outcome of each registered loss the case applies to; NaN means NaN or inf in the output):")
            w("")
            w("| case | pairs | ValueError | NaN | finite |")
            w("|---|---:|---:|---:|---:|")
            for case, cnt in lf["by_case"].items():
                w(f"| `{case}` | {sum(cnt.values())} | {cnt['error']} | {cnt['nan']} | "
                  f"{cnt['finite']} |")
            w("")
            w("Documented behaviours that differ from torch's `cross_entropy` (the suite's `EXPECTED` table):")
            w("")
            w("| loss | case | outcome | why |")
            w("|---|---|---|---|")
            for name, case, _outs, why, got in lf["expected"]:
                w(f"| `{name}` | `{case}` | {got} | {why} |")
    w("")
    w("## torch.optim's arguments, and where gradwise differs on purpose")
    w("")
    w(f"Each is described in [optimizers.md]({OPT_DOC}) and tested in the suites above.")
    w("")
    for d in DIFFERENCES:
        w(f"- {d}")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT, help=f"markdown file to write (default {OUT.relative_to(ROOT)})")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from gradwise.docsections import machine_description

    import os
    os.chdir(ROOT)
    meta = dict(date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"), machine=machine_description())
    res = run_suites()
    rec = res["rec"]
    figs = dict(losses=loss_figures(rec), optim=optimizer_figures(rec), cli=cli_figures(rec))
    print()
    print("\n".join(summary_lines(res, figs, meta)))
    text = markdown(res, figs, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    ok = res["rc"] == 0 and all(res["per_area"][a.key][k] == 0 for a in AREAS for k in ("failed", "error", "xpassed"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
