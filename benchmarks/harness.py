"""The harness every benchmark script in this folder uses: workload, interleaved timing, statistics, output.

The scripts (``optim_step.py``, ``loss_step.py``, ``preference_step.py``, ``layer_step.py``,
``state_bits.py``, ``unlearning_step.py``, ``lame_step.py``, ``tta_step.py``, ``diffusion_step.py``, ``sara_step.py``) keep
only what they time; this module holds how: the optimizers' tensor set, the candidates and their
interleaved rounds with warm-up, the statistics (medians, spreads, paired ratios), the machine's
description, peak memory, the common arguments and the markdown/JSON output. ``gradwise bench`` runs ``optim_step.py``.

Method, chosen for a small and noisy machine:

* every candidate is built and warmed up first, in one process;
* then ``rounds`` rounds; in each round every candidate runs in a freshly shuffled order, so that
  machine noise (other tenants, frequency changes) falls on all candidates alike instead of on
  whichever happened to run at a bad moment; each step is timed on its own;
* the Python garbage collector is off while timing; a candidate's ``prepare`` (restoring inputs)
  runs before each step, outside the timed region;
* a candidate's time is the median over all its timed steps; ratios are ratios of medians, and a
  paired estimate (median over rounds of the per-round ratio) should agree with the plain ratio
  when the machine was quiet.

This folder is not part of the installed package: the scripts import ``harness`` from beside
them and ``gradwise`` from the installation, or from ``../src`` in a checkout without one.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import gc
import importlib
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import gradwise  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from gradwise.docsections import cpu_model, machine_description, save_results

__all__ = ["Candidate", "interleave", "stats", "ratio", "paired_ratio", "load_average", "busy_note",
           "machine_info", "machine_description", "package_version", "tensor_specs", "make_tensors",
           "markdown_table", "add_output_args", "apply_threads", "save", "PeakRSS", "cpu_run_fields",
           "cpu_run_lines", "info_lines", "note_lines"]


# ---------------------------------------------------------------------------
# The optimizers' tensor set
# ---------------------------------------------------------------------------


def tensor_specs(small: bool = False) -> list[tuple[tuple[int, ...], str]]:
    """Shapes and kinds (``conv``, ``linear``, ``bias``, ``norm``) of the tensor set.

    Full set: a ResNet-18-like CNN (widths 32-256, 2 blocks per stage, with
    batch-norm weights and biases and a 1000-way classifier) plus an
    8-layer, width-96 transformer-like stack (qkv/proj/MLP linears with
    biases, layer norms): 158 tensors, ~3.9M parameters, from 32 to ~590k
    elements each. ``small`` gives a tiny set for tests.
    """
    specs: list[tuple[tuple[int, ...], str]] = []

    def conv(c_out, c_in, k):
        specs.append(((c_out, c_in, k, k), "conv"))
        specs.append(((c_out,), "norm"))
        specs.append(((c_out,), "bias"))

    def linear(d_out, d_in):
        specs.append(((d_out, d_in), "linear"))
        specs.append(((d_out,), "bias"))

    def layer_norm(d):
        specs.append(((d,), "norm"))
        specs.append(((d,), "bias"))

    if small:
        conv(8, 3, 3)
        conv(8, 8, 3)
        layer_norm(16)
        linear(16, 8 * 4)
        linear(10, 16)
        return specs

    widths, blocks = (32, 64, 128, 256), 2
    conv(widths[0], 3, 3)  # stem
    c_in = widths[0]
    for width in widths:
        for b in range(blocks):
            conv(width, c_in, 3)
            conv(width, width, 3)
            if b == 0 and c_in != width:
                conv(width, c_in, 1)  # downsample shortcut
            c_in = width
    linear(1000, c_in)
    d = 96
    for _ in range(8):
        layer_norm(d)
        linear(3 * d, d)
        linear(d, d)
        layer_norm(d)
        linear(4 * d, d)
        linear(d, 4 * d)
    return specs


def make_tensors(small: bool = False, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Seeded float32 parameters and gradients for :func:`tensor_specs`.

    Weights are Kaiming-scaled normals, norm weights near one, biases small;
    gradients are N(0, 0.01^2) with a 0.1 % sprinkling of 100x spikes so that
    clipping code has something to clip.
    """
    gen = torch.Generator().manual_seed(seed)
    params, grads = [], []
    for shape, kind in tensor_specs(small):
        if kind in ("conv", "linear"):
            fan_in = math.prod(shape[1:])
            p = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif kind == "norm":
            p = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            p = 0.1 * torch.randn(shape, generator=gen)
        g = 0.01 * torch.randn(shape, generator=gen)
        spikes = torch.rand(shape, generator=gen) < 1e-3
        g = torch.where(spikes, 100.0 * g, g)
        params.append(p)
        grads.append(g)
    return params, grads


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


@dataclass
class Candidate:
    """One thing timed: ``step`` is timed, ``prepare`` (restoring its inputs) runs untimed before each step.

    ``label`` is unique within a run ("gradwise:AdaBelief", "peer:AdaBelief:loop", "ldr_loss");
    ``obj`` keeps whatever the script needs afterwards (the optimizer, its parameters).
    """

    label: str
    step: Callable[[], Any]
    prepare: Callable[[], Any] | None = None
    obj: Any = None
    samples_ms: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)  # round index of each sample
    error: str | None = None

    def run(self, n: int, record_round: int | None) -> None:
        for _ in range(n):
            if self.prepare is not None:
                self.prepare()
            t0 = time.perf_counter_ns()
            self.step()
            t1 = time.perf_counter_ns()
            if record_round is not None:
                self.samples_ms.append((t1 - t0) / 1e6)
                self.rounds.append(record_round)


def interleave(cands: dict[str, Candidate], *, rounds: int, steps: int, warmup: int, seed: int = 0,
               mode: str = "blocks", notes: list[str] | None = None,
               progress: Callable[[str], None] | None = None) -> None:
    """Warm every candidate up, then time ``rounds`` rounds of ``steps`` steps each, interleaved.

    ``mode="blocks"``: warm-up is ``warmup`` steps of each candidate in turn (a candidate whose step
    fails is reported in ``notes`` and dropped from ``cands``); each round shuffles the candidates'
    order and runs each one's ``steps`` steps back to back. ``mode="shuffled"``: warm-up is
    ``warmup`` rounds of one step of every candidate; each round runs every candidate ``steps``
    times, all those steps shuffled together. A step that fails while timing marks its candidate
    with ``error`` (and a note); the others go on.
    """
    if mode not in ("blocks", "shuffled"):
        raise ValueError(f"Invalid mode: {mode!r} (accepted: blocks, shuffled)")
    notes = notes if notes is not None else []
    say = progress or (lambda _msg: None)

    def fail(label: str, exc: Exception) -> str:
        msg = f"{type(exc).__name__}: {exc}"
        notes.append(f"{label}: step failed ({msg})")
        return msg

    if mode == "blocks":
        for label in list(cands):
            try:
                cands[label].run(warmup, None)
            except Exception as exc:  # noqa: BLE001 - report, don't crash the whole benchmark
                fail(label, exc)
                del cands[label]
    else:
        for _ in range(warmup):
            for cand in cands.values():
                if not cand.error:
                    try:
                        cand.run(1, None)
                    except Exception as exc:  # noqa: BLE001
                        cand.error = fail(cand.label, exc)

    order = list(cands)
    rng = random.Random(seed)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            if mode == "blocks":
                rng.shuffle(order)
                todo = [(label, steps) for label in order]
            else:
                todo = [(label, 1) for label in order for _ in range(steps)]
                rng.shuffle(todo)
            say(f"round {r + 1}/{rounds}")
            for label, n in todo:
                cand = cands[label]
                if cand.error:
                    continue
                try:
                    cand.run(n, r)
                except Exception as exc:  # noqa: BLE001
                    cand.error = fail(label, exc)
    finally:
        if gc_was_enabled:
            gc.enable()


def stats(samples: Sequence[float]) -> dict[str, float] | None:
    """Median, quartiles, minimum, relative inter-quartile spread and count of ``samples`` (None if empty)."""
    if not samples:
        return None
    med = statistics.median(samples)
    if len(samples) >= 2:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1 = q3 = med
    return {"median_ms": med, "q1_ms": q1, "q3_ms": q3, "min_ms": min(samples),
            "spread": (q3 - q1) / med if med > 0 else 0.0, "n": len(samples)}


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is not positive."""
    if a is None or b is None or b <= 0:
        return None
    return a / b


def paired_ratio(a: Candidate | None, b: Candidate | None) -> float | None:
    """Median over rounds of (a's median in the round / b's median in the round)."""
    if a is None or b is None or a.error or b.error:
        return None
    per_round = []
    for r in sorted(set(a.rounds) & set(b.rounds)):
        sa = [t for t, k in zip(a.samples_ms, a.rounds) if k == r]
        sb = [t for t, k in zip(b.samples_ms, b.rounds) if k == r]
        mb = statistics.median(sb)
        if mb > 0:
            per_round.append(statistics.median(sa) / mb)
    return statistics.median(per_round) if per_round else None


# ---------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------


def load_average() -> float | None:
    """The 1-minute load average, where the system has one."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def busy_note(load: float | None) -> str | None:
    """A note when the machine was busy at the start (load above half its cores), else None."""
    cores = os.cpu_count() or 1
    if load is not None and load > 0.5 * cores:
        return (f"machine busy at start (1-min load average {load:.1f} on {os.cpu_count()} cores): "
                "timings are noisy; --threads 1 is steadier")
    return None


def package_version(name: str) -> str | None:
    """The installed version of ``name``, or None when it cannot be imported."""
    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any failure means "not there"
        return None
    version = getattr(module, "__version__", None)
    if version is None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        try:
            version = dist_version(name)
        except PackageNotFoundError:
            return None
    return version


def cpu_run_fields(load: float | None) -> dict[str, Any]:
    """What a CPU step benchmark's result records about its run: machine, torch, threads, Python, date,
    load average at start (``load``)."""
    return dict(machine=machine_description(), torch=torch.__version__, threads=torch.get_num_threads(),
                python=platform.python_version(),
                date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), loadavg=load)


def cpu_run_lines(res: dict[str, Any]) -> list[str]:
    """The machine, software and date lines of a CPU step benchmark's markdown, from :func:`cpu_run_fields`."""
    return [f"- Machine: {res['machine']}, device `cpu`",
            f"- Software: torch {res['torch']} ({res['threads']} threads), Python {res['python']}",
            f"- Date: {res['date']}; load average at start: {res['loadavg']:.1f}" if res["loadavg"] is not None
            else f"- Date: {res['date']}"]


def info_lines(res: dict[str, Any], package: str | None = None) -> list[str]:
    """The machine, software (torch, threads, Python, and ``package``'s version) and date lines of a CPU
    benchmark's markdown, from a result holding :func:`machine_info`'s fields and ``machine``."""
    extra = f", {package} {package_version(package)}" if package else ""
    return [f"- Machine: {res['machine']}, device `cpu`",
            f"- Software: torch {res['torch']} ({res['torch_threads']} threads), Python {res['python']}{extra}",
            f"- Date: {res['date']}; load average at start: {res['load_average']:.1f}"
            if res["load_average"] is not None else f"- Date: {res['date']}"]


def note_lines(res: dict[str, Any]) -> list[str]:
    """The markdown "Note:" paragraphs of a result's ``notes`` and, when the machine was busy, :func:`busy_note`."""
    busy = busy_note(res["load_average"])
    return [line for note in res["notes"] + ([busy] if busy else []) for line in ("", f"Note: {note}.")]


def machine_info(device: torch.device | str = "cpu", load: float | None = None,
                 versions: Iterable[str] = ()) -> dict[str, Any]:
    """CPU model, cores, torch and Python versions (and of each package in ``versions``), date, load average."""
    device = torch.device(device)
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **{name: package_version(name) for name in versions},
        "python": platform.python_version(),
        "device": str(device),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average": load if load is not None else load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class PeakRSS:
    """Rise of the peak resident set size over a phase (Linux: VmHWM reset via clear_refs)."""

    def __init__(self) -> None:
        self.base = None
        self.ok = False

    @staticmethod
    def _status_kb(name: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def start(self) -> None:
        gc.collect()
        try:  # give freed heap memory back, so the phase's peak is its own
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.ok = True
        except OSError:
            self.ok = False
        self.base = self._status_kb("VmRSS")

    def stop(self) -> float | None:
        """MiB by which the peak RSS rose above the RSS at start()."""
        hwm = self._status_kb("VmHWM")
        if not self.ok or hwm is None or self.base is None:
            return None
        return (hwm - self.base) / 1024


# ---------------------------------------------------------------------------
# Arguments and output
# ---------------------------------------------------------------------------


def add_output_args(p: argparse.ArgumentParser) -> None:
    """The arguments every script takes: ``--threads``, ``--markdown PATH``, ``--json PATH``."""
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--markdown", type=Path, default=None, metavar="PATH",
                   help="write the results as this script's section of a markdown file")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write all results as JSON")


# glibc serves each multi-MB tensor from a fresh mmap and unmaps it on free, so every step pays thousands of
# page faults per tensor, and how many depends on what ran before (glibc adapts its threshold): ratios then
# swing by 2x between runs. Keeping freed memory in the heap, as PyTorch's caching allocators do on GPU,
# removes that noise for every candidate and peer alike.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**36)}


def reexec_with_malloc_env() -> None:
    """Re-run this script with :data:`MALLOC_ENV` set (Linux, once: a no-op when it is already set)."""
    if sys.platform.startswith("linux") and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})


def apply_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` when given."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"Invalid threads: {threads} (must be >= 1)")
        torch.set_num_threads(threads)


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[str]], left: Iterable[int] = (0,)) -> list[str]:
    """A markdown table's lines; the columns whose index is in ``left`` are left-aligned, the others right."""
    left = set(left)
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if i in left else "---:" for i in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def int_options_main(argv: list[str] | None, description: str, defaults: dict[str, int], run, to_markdown,
                     section: str, row_line, *, flags: dict[str, str] | None = None, footer=None) -> int:
    """The ``main()`` of a script whose workload options are integers (``defaults``: name -> default) and
    on/off switches (``flags``: name -> help): parse them and :func:`add_output_args`, run
    ``run(**options)``, print ``row_line(row)`` per result row, ``footer(res)`` if given, and the notes, then
    :func:`save` under ``section``."""
    if argv is None:
        reexec_with_malloc_env()
    p = argparse.ArgumentParser(description=description)
    for key, help_text in (flags or {}).items():
        p.add_argument(f"--{key}", action="store_true", help=help_text)
    for key, value in defaults.items():
        p.add_argument(f"--{key}", type=int, default=value)
    add_output_args(p)
    args = p.parse_args(argv)
    apply_threads(args.threads)
    res = run(**{key: getattr(args, key) for key in [*(flags or {}), *defaults]})
    print("\n".join(row_line(r) for r in res["rows"]))
    if footer is not None:
        print(footer(res))
    print("\n".join(f"note: {n}" for n in res["notes"]))
    save(res, args, section, to_markdown(res))
    return 0


def save(res: dict, args: argparse.Namespace, section: str, markdown: str) -> None:
    """``res`` as JSON to ``args.json`` and ``markdown`` as section ``section`` of ``args.markdown`` (each if given)."""
    save_results(res, json_path=args.json, markdown_path=args.markdown, section=section, markdown=markdown)
