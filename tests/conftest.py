import sys
from pathlib import Path

# tests import helpers that sit beside them (optim_problem)
sys.path.insert(0, str(Path(__file__).parent))

# Hypothesis: no per-example deadline (CI machines vary in speed) and derandomized
# examples, so a CI run explores the same inputs as a local one.
from hypothesis import settings  # noqa: E402

settings.register_profile("gradwise", deadline=None, derandomize=True)
settings.load_profile("gradwise")
