"""Option checks shared by every component: each error names the option and what is allowed.

Called in factories and config validation, i.e. in plain Python before anything is traced, so a
bad value fails fast with a readable message instead of deep inside XLA.
"""
from __future__ import annotations

import numbers
from collections.abc import Iterable


def _where(owner: str) -> str:
  return f"{owner}: " if owner else ""


def check_int(name: str, value, *, low: int | None = None, high: int | None = None,
              owner: str = "") -> int:
  """Returns `value` if it is an int in [low, high], else raises ValueError naming `name`."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{_where(owner)}option {name!r} must be an integer, got {value!r}")
  value = int(value)
  if (low is not None and value < low) or (high is not None and value > high):
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    raise ValueError(
        f"{_where(owner)}option {name!r}={value} is out of range; allowed: {lo} <= {name} <= {hi}")
  return value


def check_float(name: str, value, *, low: float | None = None, high: float | None = None,
                low_inclusive: bool = True, owner: str = "") -> float:
  """Returns `value` as float if it lies in the interval, else raises ValueError naming `name`."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"{_where(owner)}option {name!r} must be a number, got {value!r}")
  value = float(value)
  too_low = low is not None and (value < low if low_inclusive else value <= low)
  too_high = high is not None and value > high
  if too_low or too_high or value != value:  # value != value catches NaN
    op = "<=" if low_inclusive else "<"
    lo = f"{low} {op} " if low is not None else ""
    hi = f" <= {high}" if high is not None else ""
    raise ValueError(f"{_where(owner)}option {name!r}={value} is invalid; allowed: {lo}{name}{hi}")
  return value


def check_choice(name: str, value, choices: Iterable, *, owner: str = ""):
  """Returns `value` if it is one of `choices`, else raises ValueError listing them."""
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(
        f"{_where(owner)}option {name!r}={value!r} is not allowed; allowed: "
        + ", ".join(repr(c) for c in choices))
  return value
