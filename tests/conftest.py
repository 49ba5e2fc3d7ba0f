import sys
from pathlib import Path

# tests import helpers that sit beside them (optim_problem)
sys.path.insert(0, str(Path(__file__).parent))
