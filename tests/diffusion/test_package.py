"""gradwise.diffusion imports without diffusers, and importing it (as every registry listing does) does not
import diffusers; building a guider or scheduler needs it and says how to install it."""
import os
import subprocess
import sys
from pathlib import Path

CODE = """
import sys
import gradwise.diffusion as d
from gradwise.registry import methods
assert {'AG', 'APG', 'DC-Solver'} <= {m.name for m in methods(family='diffusion')}
print('diffusers' in sys.modules)
sys.modules['diffusers'] = None  # as if diffusers were not installed
for build in (lambda: d.adaptive_guidance(gamma_bar=0.9), lambda: d.dc_solver_scheduler(),
              lambda: d.adaptive_projected_guidance(momentum=0.0, norm_threshold=0.0), lambda: d.AdaptiveGuidance):
    try:
        build()
    except ImportError as e:
        print('ImportError', 'pip install' in str(e))
"""


def test_package_imports_without_diffusers():
    src = str(Path(__file__).parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:5] == ["False"] + ["ImportError True"] * 4
