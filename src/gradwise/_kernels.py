"""gradwise's native CPU kernels: one shared library per family, built at install.

A family (``optim``: the optimizers' fused steps, ``losses``: row-wise loss
kernels, ``nn``: layers' forward and backward) is a folder ``<family>/csrc/``: one ``.cpp`` per kernel or small group
of kernels and a shared ``common.h`` (the tensor checks, the parallel and
vectorized helpers). Every ``.cpp`` there is compiled into the family's library
(found by glob: adding a kernel is adding a file); each registers its own
operators with ``TORCH_LIBRARY_FRAGMENT`` under the family's namespace
(``torch.ops.gradwise_fused``, ``torch.ops.gradwise_losses``, ``torch.ops.gradwise_nn``), and the family's
``_fakes.py`` gives their fake implementations for ``torch.compile`` (registered
in Python once the library is loaded). Adding a family is one entry of
:data:`FAMILIES`, a ``csrc/`` folder and a ``_fakes.py``.

``pip install`` (``make``) compiles each family into ``gradwise/<family>/_C*.so``
beside a small ``_C.build.json`` that records what it was built from: a hash of
every source and header of the family, the torch version and the CPU's flags
(the code is built with ``-march=native``).

Loading takes a ``dlopen``: nothing compiles at import or at the first step,
whatever ``PATH`` holds. Only when the installed library does not match (a
source or header was edited, added or removed, torch was upgraded, the
environment moved to another CPU, or gradwise was installed without a compiler)
does a family compile itself at run time, once per machine, through
``torch.utils.cpp_extension.load`` into torch's extension cache, after printing
one line that says so and why (naming the file that changed). Where it cannot
be built the family's users fall back to their ``torch`` path with one warning;
one family failing does not switch off another. ``GRADWISE_FUSED=0`` disables
every family.

This module imports only torch and the standard library, so ``setup.py`` runs
it from its path to share the flags, the source lists and the build record.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import shutil
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["KernelFamily", "FAMILIES", "CFLAGS", "LDFLAGS", "build_record", "family"]

_PKG = Path(__file__).parent

CFLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
if platform.machine() in ("x86_64", "AMD64"):
    CFLAGS.append("-march=native")
# glibc's libmvec supplies the vector exp/log1p the kernels declare
LDFLAGS = ["-fopenmp", "-lmvec"] if sys.platform.startswith("linux") else ["-fopenmp"]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# what a family is compiled from: its kernels (compiled) and its headers (hashed, they are included)
SOURCE_SUFFIXES = (".cpp",)
HEADER_SUFFIXES = (".h",)


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def build_record(files: Path | str | Sequence[Path | str]) -> dict:
    """What a library built now from ``files`` (a family's sources and headers) depends on.

    Stored beside the library at install as ``_C.build.json``: one hash per file (by file name, so
    that a stale record can say which file changed), the torch version, the machine and its CPU flags.
    """
    paths = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
    return {
        "sources": {p.name: _sha1(p) for p in sorted(paths, key=lambda p: p.name)},
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_flags_sha1": hashlib.sha1(_cpu_flags().encode()).hexdigest(),
        "cflags": CFLAGS,
    }


def _changed_files(recorded: dict, now: dict) -> str | None:
    """Which of a family's files differ between a stored record and now, said in words, or None."""
    said = [f"csrc/{n} changed" for n in sorted(set(recorded) & set(now)) if recorded[n] != now[n]]
    said += [f"csrc/{n} was added" for n in sorted(set(now) - set(recorded))]
    said += [f"csrc/{n} was removed" for n in sorted(set(recorded) - set(now))]
    return ", ".join(said) + " since the install" if said else None


class KernelFamily:
    """One family's kernels: where they are, whether they load, and why not.

    Args:
        name: the family (``"optim"``, ``"losses"``); the library is ``gradwise/<name>/_C*.so``, built
            from every ``.cpp`` in ``gradwise/<name>/csrc/`` (with the ``.h`` files there).
        namespace: the ``torch.ops`` namespace its kernels register.
        probe: an operator that must exist after loading.
        root: the folder holding the families' folders (gradwise's package; tests point it elsewhere).
    """

    def __init__(self, name: str, namespace: str, probe: str, root: Path = _PKG) -> None:
        self.name, self.namespace, self.probe = name, namespace, probe
        self.package_dir = Path(root) / name
        self.csrc = self.package_dir / "csrc"
        self._lock = threading.Lock()
        self._tried = False
        self._ok = False
        self._error: str | None = None
        self.how: str | None = None  # "installed" or "built at run time"
        self._fakes_registered = False

    # -- what it is built from ------------------------------------------------
    def _files(self, suffixes: tuple[str, ...]) -> list[Path]:
        if not self.csrc.is_dir():
            return []
        return sorted(p for p in self.csrc.iterdir() if p.suffix in suffixes and p.is_file())

    @property
    def sources(self) -> list[Path]:
        """The family's translation units: every ``csrc/*.cpp``, sorted by name."""
        return self._files(SOURCE_SUFFIXES)

    @property
    def headers(self) -> list[Path]:
        """The family's headers (``csrc/*.h``): not compiled on their own, but in the build record."""
        return self._files(HEADER_SUFFIXES)

    def build_record(self) -> dict:
        """:func:`build_record` of every source and header of the family."""
        return build_record(self.sources + self.headers)

    # -- where the installed library is -----------------------------------
    def installed_library(self) -> Path | None:
        libs = sorted(self.package_dir.glob("_C*.so")) + sorted(self.package_dir.glob("_C*.pyd"))
        return libs[0] if libs else None

    def stale_reason(self) -> str | None:
        """Why the installed library cannot be used here, or None when it can."""
        lib = self.installed_library()
        if lib is None:
            return "gradwise was installed without them (no compiler or no torch at install time)"
        record_path = self.package_dir / "_C.build.json"
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            return f"{record_path.name} is missing or unreadable"
        now = self.build_record()
        if "sources" not in record:
            return f"{record_path.name} is from an older gradwise (no per-file hashes)"
        changed = _changed_files(record["sources"], now["sources"])
        if changed:
            return changed
        if record.get("torch") != now["torch"]:
            return f"they were built for torch {record.get('torch')}, this is torch {now['torch']}"
        if record.get("machine") != now["machine"] or record.get("cpu_flags_sha1") != now["cpu_flags_sha1"]:
            return "they were built for another CPU (-march=native)"
        return None

    # -- loading -------------------------------------------------------------
    def load(self) -> bool:
        """Load (once) the installed library, or build it if it cannot be used; return whether usable."""
        if self._tried:
            return self._ok
        with self._lock:
            if self._tried:
                return self._ok
            try:
                self._ok = self._load()
            finally:
                self._tried = True
            if self._ok:
                self._register_fakes()
        return self._ok

    def _load(self) -> bool:
        if os.environ.get("GRADWISE_FUSED", "1") == "0":
            self._error = "disabled by GRADWISE_FUSED=0"
            return False
        try:
            reason = self.stale_reason()
            if reason is None:
                torch.ops.load_library(str(self.installed_library()))
                self.how = "installed"
            else:
                self._build_now(reason)
                self.how = "built at run time"
            if not hasattr(getattr(torch.ops, self.namespace), self.probe):
                raise RuntimeError(f"torch.ops.{self.namespace}.{self.probe} is missing after loading")
            return True
        except Exception as exc:  # no compiler, no ninja, ...: the torch path still works
            self._error = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"gradwise: {self.name} kernels unavailable, using the torch path "
                          f"({self._error[:300]})", RuntimeWarning, stacklevel=4)
            return False

    def _build_now(self, reason: str) -> None:
        print(f"gradwise: compiling the {self.name} kernels now, once for this machine "
              f"(about 30 s), because {reason}; `make` or `pip install -e .` builds them at install",
              file=sys.stderr, flush=True)
        if shutil.which("ninja") is None:
            # `.venv/bin/python` run without the venv on PATH: ninja sits beside it
            os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
        from torch.utils import cpp_extension

        if not self.sources:
            raise FileNotFoundError(f"no kernel sources (*.cpp) in {self.csrc}")
        rec = self.build_record()
        key = hashlib.sha1(json.dumps(rec, sort_keys=True).encode() + str(self.csrc).encode()).hexdigest()[:12]
        cpp_extension.load(name=f"gradwise_{self.name}_{key}", sources=[str(p) for p in self.sources],
                           extra_cflags=CFLAGS, extra_ldflags=LDFLAGS, is_python_module=False, verbose=False)

    def _register_fakes(self) -> None:
        # each family keeps its operators' fake implementations in gradwise/<family>/_fakes.py
        if self._fakes_registered:
            return
        self._fakes_registered = True
        module = f"gradwise.{self.name}._fakes"
        try:
            fakes = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name not in (module, f"gradwise.{self.name}"):
                raise
            return
        fakes.register()

    def available(self) -> bool:
        return self.load()

    def error(self) -> str | None:
        """Why the kernels are unavailable, if they are."""
        return self._error

    def ops(self):
        return getattr(torch.ops, self.namespace)

    def __repr__(self) -> str:
        state = "not loaded" if not self._tried else (f"loaded ({self.how})" if self._ok else f"unavailable: {self._error}")
        return f"KernelFamily({self.name!r}, {state})"


FAMILIES: dict[str, KernelFamily] = {
    "optim": KernelFamily("optim", "gradwise_fused", "adamw_"),
    "losses": KernelFamily("losses", "gradwise_losses", "ldr_softplus"),
    "nn": KernelFamily("nn", "gradwise_nn", "power_norm_forward"),
}


def family(name: str) -> KernelFamily:
    """The kernel family ``name`` (one of :data:`FAMILIES`)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"Invalid kernel family: {name!r} (accepted: {', '.join(FAMILIES)})") from None
