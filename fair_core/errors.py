"""Error types and argument checks shared by the library, the training CLIs and the nodes.

Every check names the parameter, the allowed values and what was received; nothing is silently corrected.
"""
from __future__ import annotations

import math
from collections.abc import Iterable


class FairSamplingError(ValueError):
    """Base class: bad input the user can fix."""


class ConfigError(FairSamplingError):
    """A configuration that cannot be built."""


class CheckpointError(FairSamplingError):
    """A file that is not a loadable fair-sampling checkpoint."""


class DataError(FairSamplingError):
    """A data split that cannot be built."""


def check_choice(name: str, value, allowed: Iterable):
    allowed = list(allowed)
    if value not in allowed:
        raise FairSamplingError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_range(name: str, value, low=None, high=None, *, low_open=False, high_open=False, integer=False):
    """Check ``low <(=) value <(=) high``; the message states the interval in mathematical notation. NaN and
    infinities are refused even where a side is unbounded (``low`` or ``high`` None)."""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        kind = "an integer" if integer else "a finite number"
        raise FairSamplingError(f"{name} must be {kind}, got {value!r}")
    bad = (low is not None and (value <= low if low_open else value < low)) or (
        high is not None and (value >= high if high_open else value > high)
    )
    if bad:
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise FairSamplingError(f"{name} must be in {left}{lo}, {hi}{right}, got {value!r}")
    return value
