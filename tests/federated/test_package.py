"""gradwise.federated imports and computes without flwr; only the strategies and apps need it."""
import subprocess
import sys

CODE = """
import sys
sys.modules['flwr'] = None  # as if flwr were not installed
import gradwise, gradwise.federated as f
from gradwise.registry import methods
assert {m.name for m in methods(family='federated')} >= {'FedAU', 'FedLD'}
print(f.fedau_weights([[1, 0], [1, 1]]).tolist(), len(f.dirichlet_partition([0, 1] * 10, 2, 1.0)))
try:
    f.fedau_strategy()
except ImportError as e:
    print('ImportError', 'pip install' in str(e))
"""


def test_package_imports_without_flwr():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[[1.0, nan], [1.0, 1.0]] 2", "ImportError True"]
