"""Float ranges as people mean them: range(0.01,0.05,0.01) is 0.01, 0.02, 0.03, 0.04.

Hydra computes a float range by adding floats: 0.01 + 0.01 + ... stays below 0.05 after
four steps, so it makes a fifth job, and it writes 0.060000000000000005 into run names.
Here start, stop and step are taken as typed (a float's shortest repr is the text the
user wrote) and stepped in decimal, the stop excluded as in Python's range; the values are
written back as short decimals. Integer ranges stay Hydra's.
"""

from __future__ import annotations

import math
import random
from decimal import ROUND_CEILING, Decimal

from hydra.core.override_parser.types import ChoiceSweep, Glob, Override, RangeSweep

from runner.config import ConfigError


def float_range(o: Override) -> list[str] | None:
    """The values of a float range(...) override as text, or None for any other override."""
    swept = o.value()
    if not isinstance(swept, RangeSweep):
        return None
    if not any(isinstance(v, float) for v in (swept.start, swept.stop, swept.step)):
        return None  # an integer range: Hydra's
    start, stop, step = _ends(o, swept)
    values = []
    value = start
    while value < stop if step > 0 else value > stop:
        values.append(_text(value))
        value += step  # exact: decimal digits, no binary rounding
    if swept.shuffle:  # shuffle(range(...)), as Hydra does it
        random.shuffle(values)
    return values


def _text(value: Decimal) -> str:
    """Short and plain: 0.5, not 0.50 or 5E-1; a whole number keeps its .0 (a float range)."""
    text = format(value.normalize(), "f")
    return text if "." in text else f"{text}.0"


def count(o: Override) -> int:
    """How many values an override sets, computed without making them (a range of a
    trillion is one division, not a trillion values)."""
    if not o.is_sweep_override():
        return 1
    swept = o.value()
    if isinstance(swept, RangeSweep):
        start, stop, step = _ends(o, swept)
        return max(0, int(((stop - start) / step).to_integral_value(ROUND_CEILING)))
    if isinstance(swept, ChoiceSweep):
        return len(swept.list)
    allowed = "a comma list or range(start,stop,step) in a grid (interval() is for search=optuna)"
    if isinstance(swept, Glob):
        allowed = "a comma list of options (glob() is not taken: name the options)"
    raise ConfigError(o.get_key_element(), o.input_line.split("=", 1)[-1], allowed)


def _ends(o: Override, swept: RangeSweep) -> tuple[Decimal, Decimal, Decimal]:
    """A range's start, stop and step as typed (exact decimals): finite, the step not 0."""
    shown = f"range({swept.start},{swept.stop},{swept.step})"
    ends = (swept.start, swept.stop, swept.step)
    if not all(math.isfinite(v) for v in ends):
        raise ConfigError(o.get_key_element(), shown, "a range of finite numbers")
    start, stop, step = (Decimal(repr(v)) for v in ends)
    if step == 0:
        raise ConfigError(o.get_key_element(), shown, "a range whose step is not 0")
    return start, stop, step
