"""Argument checks shared by every family: one place, one message format.

Each check raises ``ValueError("Invalid <name>: <value> (accepted: <what is accepted>)")``
naming the argument and what it accepts, and returns the value (as a ``float``
for real numbers) so a constructor can write ``self.tau = check_positive("tau", tau)``.
Python ``bool`` is refused wherever a number is expected (``True`` is an ``int``
to Python, never a sensible learning rate), and NaN never passes a range check.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["check_range", "check_real", "check_positive", "check_nonneg", "check_unit", "check_int",
           "check_bool", "check_choice", "check_betas", "is_real", "describe_choices"]


def is_real(value: Any) -> bool:
    """An ``int`` or ``float`` that is not a ``bool`` and not NaN."""
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and not (isinstance(value, float) and math.isnan(value)))


def _interval(name: str, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    lo_s = "" if lo is None else (f"{lo} < " if lo_open else f"{lo} <= ")
    hi_s = "" if hi is None else (f" < {hi}" if hi_open else f" <= {hi}")
    return f"{lo_s}{name}{hi_s}"


def check_real(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
               lo_open: bool = False, hi_open: bool = False, finite: bool = True) -> float:
    """A real number (finite unless ``finite=False``) with ``lo <= value <= hi`` (bounds optional,
    each optionally open); returns it as a float."""
    interval = _interval(name, lo, hi, lo_open, hi_open)
    kind = "a finite number" if finite else "a real number"
    accepted = f"{kind} with {interval}" if (lo is not None or hi is not None) else kind
    if not is_real(value) or (finite and not math.isfinite(value)):
        raise ValueError(f"Invalid {name}: {value!r} (accepted: {accepted})")
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or \
          (hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        raise ValueError(f"Invalid {name}: {value!r} (accepted: {accepted})")
    return float(value)


def check_range(name: str, value: Any, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """torch.optim's hyperparameter check: a real number (infinity allowed where the bounds allow it)
    with ``lo <= value <= hi``. Kept apart from :func:`check_real` because optimizers accept what
    torch.optim accepts (``weight_decay=inf`` is torch's business, not ours)."""
    interval = _interval(name, lo, hi, lo_open, hi_open)
    if not is_real(value):
        raise ValueError(f"Invalid {name}: {value!r} (accepted: a real number with {interval})")
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or \
          (hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        raise ValueError(f"Invalid {name}: {value} (accepted: {interval})")


def check_positive(name: str, value: Any) -> float:
    """A finite number > 0."""
    return check_real(name, value, 0.0, lo_open=True)


def check_nonneg(name: str, value: Any) -> float:
    """A finite number >= 0."""
    return check_real(name, value, 0.0)


def check_unit(name: str, value: Any) -> float:
    """A number in [0, 1]."""
    return check_real(name, value, 0.0, 1.0)


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (not a bool) with ``lo <= value <= hi`` (bounds optional)."""
    if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo) \
            or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            accepted = f"an integer with {lo} <= {name} <= {hi}"
        elif lo is not None:
            accepted = f"an integer >= {lo}"
        elif hi is not None:
            accepted = f"an integer <= {hi}"
        else:
            accepted = "an integer"
        raise ValueError(f"Invalid {name}: {value!r} (accepted: {accepted})")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``True`` or ``False`` (not 0/1, not None)."""
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name}: {value!r} (accepted: True or False)")
    return value


def describe_choices(choices: Iterable[Any]) -> str:
    """``'a', 'b' or 'c'``."""
    items = [repr(c) for c in choices]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of ``choices`` (compared with ``==``; a bool never matches an int choice)."""
    choices = tuple(choices)
    if not any(isinstance(value, bool) == isinstance(c, bool) and value == c for c in choices):
        raise ValueError(f"Invalid {name}: {value!r} (accepted: {describe_choices(choices)})")
    return value


def check_betas(betas: Any, n: int = 2, name: str = "betas") -> None:
    """A tuple or list of ``n`` numbers, each in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != n:
        raise ValueError(f"Invalid {name}: {betas!r} (accepted: a tuple of {n} floats in [0, 1))")
    for i, b in enumerate(betas):
        check_range(f"{name}[{i}]", b, 0.0, 1.0, hi_open=True)
