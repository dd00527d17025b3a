"""--since / --until: the period a report covers.

A value is a date (`2026-11-01`, midnight UTC), an ISO 8601 date-time (`2026-11-01T08:00:00Z`,
UTC when it has no offset) or an age relative to now (`7d`, `24h`, `2w`). `since` is inclusive,
`until` exclusive, so `--since 2026-11-01 --until 2026-11-02` is exactly one day. Messages whose
log gives no time are kept (a filter cannot place them) and the report says how many.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import RelayImpactError
from ..schema import TS

_AGE = re.compile(r"^\s*(\d+)\s*([hdw])\s*$", re.IGNORECASE)
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Period:
    since: datetime | None = None
    until: datetime | None = None

    @property
    def filtered(self) -> bool:
        return self.since is not None or self.until is not None

    def mask(self, ts: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Rows inside the period; rows without a timestamp are always inside."""
        no_time = pc.is_null(ts)
        inside = pc.is_valid(ts)
        if self.since is not None:
            inside = pc.and_(inside, pc.greater_equal(ts, pa.scalar(self.since, TS)))
        if self.until is not None:
            inside = pc.and_(inside, pc.less(ts, pa.scalar(self.until, TS)))
        return pc.or_(no_time, pc.fill_null(inside, False))

    def describe(self) -> str:
        if not self.filtered:
            return "all messages in the WORKDIR"
        parts = []
        if self.since is not None:
            parts.append(f"from {self.since:%Y-%m-%d %H:%M} UTC")
        if self.until is not None:
            parts.append(f"before {self.until:%Y-%m-%d %H:%M} UTC")
        return " ".join(parts)

    def as_json(self) -> dict:
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }


def parse_when(value: str, option: str, now: datetime | None = None) -> datetime:
    """A --since/--until value as an aware UTC datetime; RelayImpactError when it is neither a
    date, an ISO date-time nor an age."""
    now = now or datetime.now(UTC)
    text = value.strip()
    age = _AGE.match(text)
    if age:
        return now - timedelta(**{_UNITS[age.group(2).lower()]: int(age.group(1))})
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise RelayImpactError(
            f"{option} {value!r}: expected a date (2026-11-01), an ISO date-time "
            "(2026-11-01T08:00:00Z) or an age (24h, 7d, 2w)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_period(since: str | None, until: str | None, now: datetime | None = None) -> Period:
    now = now or datetime.now(UTC)
    start = parse_when(since, "--since", now) if since else None
    end = parse_when(until, "--until", now) if until else None
    if start is not None and end is not None and start >= end:
        raise RelayImpactError(
            f"--since {since!r} is not before --until {until!r}: the period would be empty"
        )
    return Period(start, end)
