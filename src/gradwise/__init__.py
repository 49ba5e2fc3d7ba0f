"""gradwise: faithful, fast PyTorch implementations of modern training methods."""
from gradwise.registry import methods, register  # noqa: F401

__version__ = "0.1.0"
