"""Builds gradwise's native CPU kernels at install time (metadata lives in pyproject.toml).

One shared library per kernel family (src/gradwise/_kernels.py lists them), from
every ``csrc/*.cpp`` of the family, compiled against the torch already installed
(ninja compiles a family's files in parallel). Install without build isolation
(``pip install --no-build-isolation -e .``, as the Makefile does): an isolated
build would install its own, unpinned torch (a multi-GB CUDA build) and build
against that. Without torch or without a compiler the install still succeeds,
with no kernels; gradwise then compiles them on first use (saying so) or falls
back to its torch path.
"""
import importlib.util
import json
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
ext_modules, cmdclass = [], {}

try:
    import torch  # noqa: F401
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:
    print("gradwise: torch is not importable at build time; installing without compiled kernels "
          "(they compile on first use)", file=sys.stderr)
else:
    spec = importlib.util.spec_from_file_location("_gradwise_kernels", HERE / "src" / "gradwise" / "_kernels.py")
    kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernels)

    for fam in kernels.FAMILIES.values():
        # headers as `depends`: an edited common.h rebuilds every file of its family
        ext_modules.append(CppExtension(f"gradwise.{fam.name}._C", [str(p.relative_to(HERE)) for p in fam.sources],
                                        depends=[str(p.relative_to(HERE)) for p in fam.headers],
                                        extra_compile_args=kernels.CFLAGS, extra_link_args=kernels.LDFLAGS))

    class BuildKernels(BuildExtension):
        """Builds each family and records what it was built from beside the library.

        One family after the other: torch's ninja-based build writes one build.ninja per build folder,
        so building the extensions in parallel (build_ext --parallel) races on it; within a family,
        ninja compiles the files in parallel.
        """

        @staticmethod
        def _record(ext, folder):
            fam = kernels.FAMILIES[ext.name.split(".")[1]]
            (Path(folder) / "_C.build.json").write_text(json.dumps(fam.build_record(), indent=1) + "\n")

        def build_extension(self, ext):
            super().build_extension(ext)
            self._record(ext, Path(self.get_ext_fullpath(ext.name)).parent)  # goes into a wheel

        def run(self):
            super().run()
            if self.inplace:  # editable install: the libraries were copied into src/, their records go beside them
                for ext in self.extensions:
                    self._record(ext, kernels.FAMILIES[ext.name.split(".")[1]].package_dir)

    cmdclass["build_ext"] = BuildKernels.with_options(no_python_abi_suffix=True)

setup(ext_modules=ext_modules, cmdclass=cmdclass)
