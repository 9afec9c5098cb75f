"""Typed checks of single config values: each bad value is one line that names the key and says what it
must be (integers are integers, numbers finite and in range, booleans true/false)."""
from __future__ import annotations

import numbers
from typing import Any

from robench.errors import RobenchError


def _num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


#: the largest integer a count may take (seeds, query budgets, sizes): torch and numpy keep them in 64 bits
MAX_INT = 2 ** 62


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_int(key: str, v: Any, lo: int = 0, hi: int = MAX_INT, null: bool = False, hint: str = "") -> None:
    """An integer (not 1.5, not true, not 'abc') in [lo, hi], or null when ``null``."""
    if v is None and null:
        return
    if not _int(v) or not lo <= v <= hi:
        rng = f">= {lo}" if hi == MAX_INT else f"in {lo}..{hi}"
        raise RobenchError(f"{key} must be an integer {rng}{' or null' if null else ''}{hint}, got '{v}'")


def check_number(key: str, v: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                 hi_open: bool = False, null: bool = False, hint: str = "") -> None:
    """A finite number (not nan, not inf, not 'abc', not true) in the given bounds, or null when ``null``."""
    import math

    if v is None and null:
        return
    ok = _num(v) and math.isfinite(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        parts = ([f"{'>' if lo_open else '>='} {lo}"] if lo is not None else []) + \
                ([f"{'<' if hi_open else '<='} {hi}"] if hi is not None else [])
        raise RobenchError(f"{key} must be a finite number{' ' + ' and '.join(parts) if parts else ''}"
                           f"{' or null' if null else ''}{hint}, got '{v}'")


def check_bool(key: str, v: Any, null: bool = False, extra: tuple = ()) -> None:
    if isinstance(v, bool) or (v is None and null) or v in extra:
        return
    words = ["true", "false"] + [str(e) for e in extra] + (["null"] if null else [])
    raise RobenchError(f"{key} must be {', '.join(words[:-1])} or {words[-1]}, got '{v}'")


def check_choice(key: str, v: Any, choices: tuple) -> None:
    if not isinstance(v, str) or v not in choices:
        raise RobenchError(f"{key} must be one of {', '.join(choices)}, got '{v}'")


def check_seed(seed: Any) -> None:
    if not _int(seed) or not 0 <= seed < 2 ** 63:
        raise RobenchError(f"seed must be an integer in 0..2**63-1, got '{seed}'")
