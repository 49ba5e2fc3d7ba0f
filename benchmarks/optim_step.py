"""Optimizer step-time benchmark: gradwise vs torch.optim and pytorch_optimizer.

    python benchmarks/optim_step.py [--steps N] [--rounds N] [--only A,B] [--threads N]
                                    [--markdown PATH] [--json PATH]

Same as ``gradwise bench``; see ``gradwise.bench`` for the method.
"""
import sys
from pathlib import Path

try:
    from gradwise.bench import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from gradwise.bench import main

if __name__ == "__main__":
    sys.exit(main())
