"""ISO 8601 durations for retention rules, strictly: ``P`` followed by years, months
and/or days (``P7Y``, ``P24M``, ``P3Y6M``, ``P90D``). No weeks, no time part, no
fractions, no signs: a retention period is a calendar span, and anything looser is
more likely a typo than an intent. Parsed here rather than by a general library so
that what is accepted is exactly what is documented.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

_DURATION = re.compile(r"P(?:([0-9]{1,4})Y)?(?:([0-9]{1,5})M)?(?:([0-9]{1,6})D)?")
MAX_YEARS = 200  # a retention rule beyond two centuries is a typo


@dataclass(frozen=True, slots=True)
class Duration:
    years: int = 0
    months: int = 0
    days: int = 0

    @classmethod
    def parse(cls, text: str) -> Duration:
        """``ValueError`` for anything but a positive ``PnYnMnD`` with at least one part."""
        match = _DURATION.fullmatch(text) if isinstance(text, str) else None
        if match is None or not any(match.groups()):
            raise ValueError("an ISO 8601 duration of years, months and days, such as P7Y, P24M or P90D")
        years, months, days = (int(g or 0) for g in match.groups())
        if years * 366 + months * 31 + days == 0:
            raise ValueError("a retention period must be longer than zero")
        if years * 12 + months > MAX_YEARS * 12 or days > MAX_YEARS * 366:
            raise ValueError(f"a retention period is at most {MAX_YEARS} years")
        return cls(years, months, days)

    def __str__(self) -> str:
        parts = [f"{v}{u}" for v, u in ((self.years, "Y"), (self.months, "M"), (self.days, "D")) if v]
        return "P" + "".join(parts)

    def after(self, moment: datetime) -> datetime:
        """``moment`` plus this span on the calendar: months first (clamped to the
        month's last day, so 31 Jan + P1M = 28/29 Feb), then days."""
        total = moment.month - 1 + self.months + 12 * self.years
        year, month = moment.year + total // 12, total % 12 + 1
        day = min(moment.day, calendar.monthrange(year, month)[1])
        shifted = moment.replace(year=year, month=month, day=day)
        return shifted + timedelta(days=self.days)


def start_of(day: date) -> datetime:
    """Midnight UTC of a calendar date (treatment dates have no time)."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
