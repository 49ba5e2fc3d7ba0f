"""A study's results on disk: the results folder (written all at once), CSV and JSON files, and the
machine and versions every result names; also the studies' progress bar."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["progress", "versions", "machine", "machine_line", "write_csv", "write_json", "json_safe", "results_dir",
           "results_folder", "ResultsFolder", "OUT_ACCEPTS"]


def progress(console: Console, width: int = 24) -> Progress:
    """The studies' transient progress bar: a description ``width`` characters wide, bar, count, time."""
    columns = (TextColumn(f"{{task.description:<{width}}}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True)


def versions() -> dict[str, Any]:
    """The versions and the machine recorded in every results.json."""
    import torch

    import gradwise

    return {"gradwise": gradwise.__version__, "torch": torch.__version__, "machine": machine()}


def machine() -> dict[str, Any]:
    """The CPU behind a result: model name, core count and the vector kernels torch dispatches to.

    PyTorch picks its vectorized CPU kernels per CPU (AVX2, AVX-512, ...), and
    they round differently, so a chaotic training run (a high learning rate,
    loss spikes) follows another trajectory on another CPU.
    """
    import torch

    from gradwise.docsections import cpu_model

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # torch < 2.1
        capability = "unknown"
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_capability": capability, "torch": torch.__version__}


def machine_line() -> str:
    """One line naming the machine, printed under every leaderboard."""
    m = machine()
    return (f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} (CPU kernels: {m['cpu_capability']}); "
            "another CPU gives other numbers, within the intervals")


def write_csv(path: Path, rows: Iterable[dict[str, Any]], fields: Sequence[str]) -> None:
    """A CSV of ``rows`` with columns ``fields`` (other keys ignored; None written as an empty cell)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def write_json(path: Path, doc: Any) -> None:
    """``doc`` as standard JSON (NaN and infinities written as null), indented."""
    path.write_text(json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n")


def results_dir(out: str | Path | None, root: str | Path = "runs") -> Path:
    """``out`` if given, else a fresh ``root/<timestamp>`` folder; created either way.

    Studies use :func:`results_folder`, which writes into a temporary folder and
    renames it into place at the end.
    """
    if out is not None:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = _fresh_path(root)
    path.mkdir(parents=True)
    return path


def _fresh_path(root: str | Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(root) / stamp
    i = 1
    while path.exists():
        i += 1
        path = Path(root) / f"{stamp}-{i}"
    return path


OUT_ACCEPTS = ("--out takes a folder that can be written: a new one (created), an empty one, an earlier arena "
               "results folder (replaced whole) or a folder of other files (kept; results added beside them)")


def _is_results_folder(path: Path) -> bool:
    """An earlier arena run's folder: its results.json names a study (what every study writes last)."""
    try:
        return isinstance(json.loads((path / "results.json").read_text()).get("study"), str)
    except (OSError, ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class ResultsFolder:
    """Where a study writes (``tmp``) and where its results end up (``final``)."""

    final: Path
    tmp: Path


@contextmanager
def results_folder(out: str | Path | None, root: str | Path = "runs") -> Iterator[ResultsFolder]:
    """A study's results folder, written all at once.

    The study writes into ``.tmp``, a fresh hidden folder beside the final one;
    when the block ends normally it is renamed to ``.final`` (an earlier arena
    results folder there is replaced as a whole, so old and new files never
    mix; a folder of other files keeps them, and the results are moved in
    beside them, ``results.json`` last). When the block raises (or is interrupted), the temporary folder is
    removed and nothing appears at ``final``: no folder ever looks complete
    unless the run completed. A process killed outright leaves only a hidden
    ``.<name>.partial-*`` folder.

    ``out`` None means a fresh ``root/<timestamp>``. An unusable ``out`` (a
    file, a place that cannot be written)
    raises :class:`~gradwise.arena.UsageError` naming ``--out``, before any
    work is done.
    """
    from gradwise.arena import UsageError

    final = _fresh_path(root) if out is None else Path(out)
    if final.exists() or final.is_symlink():
        if not final.is_dir():
            raise UsageError(f"--out {final}: is not a folder; {OUT_ACCEPTS}")
        if not os.access(final, os.W_OK | os.X_OK):
            raise UsageError(f"--out {final}: the folder is not writable; {OUT_ACCEPTS}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    except OSError as err:
        raise UsageError(f"--out {final}: cannot write there ({err.strerror or err}); {OUT_ACCEPTS}") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; results are ordinary files
    try:
        yield ResultsFolder(final=final, tmp=tmp)
        if not final.exists():
            os.rename(tmp, final)
        elif not any(final.iterdir()) or _is_results_folder(final):
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.rename(final, old / final.name)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:  # a folder of the user's own files: keep them, move the results in, results.json last
            for f in sorted(tmp.iterdir(), key=lambda f: f.name == "results.json"):
                os.replace(f, final / f.name)
            tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None, so the JSON is standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
