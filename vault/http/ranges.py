"""HTTP Range (RFC 9110 §14) for one byte range: ``bytes=a-b``, ``bytes=a-``, ``bytes=-n``.

A multi-range request is answered with the whole representation (allowed by the RFC);
an unsatisfiable one with 416.
"""

from __future__ import annotations

import re

from vault.errors import RangeNotSatisfiable

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# Positions past any object we store; more digits than this are read as "past the end"
# rather than converted (Python refuses int() of over 4300 digits with a ValueError).
_MAX_DIGITS = 18


def _position(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` with ``end`` exclusive, or None to send everything."""
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None:
        return None  # unknown unit or several ranges: ignore, send the whole
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last n bytes
        n = _position(last)
        if n == 0:
            raise RangeNotSatisfiable(details={"size": size})
        return max(0, size - n), size
    start = _position(first)
    end = size if not last else min(_position(last) + 1, size)
    if start >= size or (last and _position(last) < start):
        raise RangeNotSatisfiable(details={"size": size})
    return start, end
