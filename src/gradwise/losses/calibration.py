"""Deprecated: this module's names moved to other families (see ``gradwise.losses._moved``); importing them
from here still works, with a ``DeprecationWarning`` naming the new path, until after version 0.2."""
from __future__ import annotations

from gradwise._deprecation import moved_names
from gradwise.losses._moved import MOVED

__all__ = list(MOVED["calibration"])
__getattr__ = moved_names(__name__, MOVED["calibration"])
