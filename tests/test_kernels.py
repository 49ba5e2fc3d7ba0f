"""The native kernels: built at install, loaded without compiling, rebuilt only with a reason said out loud."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from gradwise import _kernels
from gradwise._kernels import FAMILIES, KernelFamily, build_record

INSTALLED = all(f.stale_reason() is None for f in FAMILIES.values())


@pytest.mark.skipif(not INSTALLED, reason="kernels not built at install here (make / pip install -e . builds them)")
def test_loading_after_install_compiles_nothing_whatever_path_holds(tmp_path):
    # a PATH whose compilers and ninja leave a mark if anything tries to build
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    marker = tmp_path / "something-compiled"
    for tool in ("ninja", "c++", "g++", "gcc", "cc"):
        exe = fake_bin / tool
        exe.write_text(f"#!/bin/sh\necho \"$0 $@\" >> {marker}\nexit 1\n")
        exe.chmod(0o755)
    code = textwrap.dedent("""
        import time, torch
        from gradwise._kernels import FAMILIES
        t = time.perf_counter()
        ok = [f.load() for f in FAMILIES.values()]
        dt = time.perf_counter() - t
        print(ok, [f.how for f in FAMILIES.values()], dt)
    """)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    dt = float(out.stdout.split()[-1])
    n = len(FAMILIES)
    assert out.stdout.startswith(f"{[True] * n} {['installed'] * n}"), out.stdout
    assert "compiling" not in out.stderr, out.stderr
    assert not marker.exists(), marker.read_text()
    assert dt < 1.0, f"loading the installed kernels took {dt:.2f} s"


def _copy_family(tmp_path, name="optim"):
    """A family laid out under tmp_path like the package (all of csrc/), with the installed library and its record."""
    real = FAMILIES[name]
    fam_dir = tmp_path / name
    shutil.copytree(real.csrc, fam_dir / "csrc")
    lib = real.installed_library()
    if lib is not None:
        shutil.copy(lib, fam_dir / lib.name)
        shutil.copy(real.package_dir / "_C.build.json", fam_dir / "_C.build.json")
    return KernelFamily(name, real.namespace, real.probe, root=tmp_path)


@pytest.mark.skipif(not INSTALLED, reason="kernels not built at install here")
@pytest.mark.parametrize("name", list(FAMILIES))
def test_stale_reasons_name_what_changed(tmp_path, name):
    fam = _copy_family(tmp_path, name)
    assert fam.stale_reason() is None
    record_path = fam.package_dir / "_C.build.json"
    record = json.loads(record_path.read_text())

    record_path.write_text(json.dumps({**record, "torch": "2.0.0"}))
    assert "torch 2.0.0" in fam.stale_reason() and torch.__version__ in fam.stale_reason()
    record_path.write_text(json.dumps({**record, "cpu_flags_sha1": "0" * 40}))
    assert "another CPU" in fam.stale_reason()
    record_path.write_text(json.dumps(record))
    # the shared header is not compiled on its own, but a library built before it changed is stale
    header = fam.csrc / "common.h"
    original = header.read_text()
    header.write_text(original + "\n// edited\n")
    assert fam.stale_reason() == "csrc/common.h changed since the install"
    header.write_text(original)
    source = fam.sources[-1]
    source.write_text(source.read_text() + "\n// edited\n")
    assert fam.stale_reason() == f"csrc/{source.name} changed since the install"
    source.unlink()
    assert fam.stale_reason() == f"csrc/{source.name} was removed since the install"
    (fam.csrc / "new_kernel.cpp").write_text("// a new kernel\n")
    assert fam.stale_reason() == (f"csrc/new_kernel.cpp was added, csrc/{source.name} was removed "
                                  "since the install")
    record_path.write_text(json.dumps({k: v for k, v in record.items() if k != "sources"}))
    assert "older gradwise" in fam.stale_reason()
    record_path.unlink()
    assert "missing or unreadable" in fam.stale_reason()
    fam.installed_library().unlink()
    assert "installed without them" in fam.stale_reason()


def test_build_record_tracks_every_file_torch_and_cpu(tmp_path):
    src, hdr = tmp_path / "k.cpp", tmp_path / "common.h"
    src.write_text("int x;\n")
    hdr.write_text("#pragma once\n")
    a = build_record([src, hdr])
    assert a["torch"] == torch.__version__ and set(a) >= {"sources", "cpu_flags_sha1", "machine", "cflags"}
    assert list(a["sources"]) == ["common.h", "k.cpp"]
    hdr.write_text("#pragma once\nint y;\n")
    b = build_record([src, hdr])
    assert b["sources"]["common.h"] != a["sources"]["common.h"] and b["sources"]["k.cpp"] == a["sources"]["k.cpp"]
    assert build_record(src)["sources"] == {"k.cpp": a["sources"]["k.cpp"]}  # one file is a list of one


@pytest.mark.parametrize("fam", list(FAMILIES.values()), ids=list(FAMILIES))
def test_a_family_is_every_cpp_of_its_csrc_and_its_record_covers_sources_and_headers(fam):
    on_disk = sorted(p.name for p in fam.csrc.iterdir() if p.suffix in (".cpp", ".h"))
    assert [p.name for p in fam.sources] == sorted(p.name for p in fam.csrc.glob("*.cpp"))
    assert fam.sources and [p.name for p in fam.headers] == ["common.h"]
    assert sorted(fam.build_record()["sources"]) == on_disk
    if fam.stale_reason() is None:  # the installed record was written from the same list
        assert sorted(json.loads((fam.package_dir / "_C.build.json").read_text())["sources"]) == on_disk


_DEF = re.compile(r'm\.def\(\s*"(\w+)\(')


@pytest.mark.parametrize("fam", list(FAMILIES.values()), ids=list(FAMILIES))
def test_every_kernel_declares_its_own_schema_and_has_a_fake(fam):
    # each .cpp registers its own operators (TORCH_LIBRARY_FRAGMENT), so adding a kernel is adding a
    # file; its fake for torch.compile goes in the family's _fakes.py
    import importlib

    declared = {}
    for src in fam.sources:
        text = src.read_text()
        names = _DEF.findall(text)
        assert names and "TORCH_LIBRARY_FRAGMENT(" + fam.namespace in text, src.name
        assert f"TORCH_LIBRARY_IMPL({fam.namespace}, CPU" in text, src.name
        for n in names:
            assert n not in declared, f"{n} declared in {declared.get(n)} and {src.name}"
            declared[n] = src.name
    fakes = importlib.import_module(f"gradwise.{fam.name}._fakes").FAKES
    assert set(fakes) == set(declared)
    if fam.available():
        ops = fam.ops()
        assert all(hasattr(ops, n) for n in declared)


def test_a_needed_build_says_so_in_one_line_and_a_failing_family_leaves_the_others_on(tmp_path, capfd):
    fam_dir = tmp_path / "broken" / "csrc"
    fam_dir.mkdir(parents=True)
    (fam_dir / "broken.cpp").write_text("#error this family does not compile\n")
    broken = KernelFamily("broken", "gradwise_broken_test", "nothing", root=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert broken.load() is False
        assert broken.load() is False  # tried once, not again
    err = capfd.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("gradwise: compiling the broken kernels")]
    assert len(said) == 1 and "installed without them" in said[0], err
    assert any(issubclass(w.category, RuntimeWarning) and "broken kernels unavailable" in str(w.message)
               for w in caught)
    assert broken.error() and "broken" in repr(broken)
    # the real families are untouched by the failure
    for fam in FAMILIES.values():
        if fam.stale_reason() is None:
            assert fam.load() and fam.how == "installed"


def test_disabled_by_environment(monkeypatch, tmp_path):
    fam = KernelFamily("optim", "gradwise_fused", "adamw_", root=tmp_path)
    monkeypatch.setenv("GRADWISE_FUSED", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # switching them off on purpose warns about nothing
        assert fam.load() is False
    assert fam.error() == "disabled by GRADWISE_FUSED=0"


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Invalid kernel family: 'nope' \(accepted: optim, losses, nn\)"):
        _kernels.family("nope")
