"""--since / --until values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.errors import RelayImpactError
from pipeline.report.period import parse_period, parse_when

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("value", "expected"), [
    ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
    ("2026-11-01T08:30:00Z", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
    ("2026-11-01T09:30:00+01:00", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
    ("2026-11-01T08:30", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
    ("7d", datetime(2026, 11, 21, 12, 0, tzinfo=UTC)),
    ("24h", datetime(2026, 11, 27, 12, 0, tzinfo=UTC)),
    ("2w", datetime(2026, 11, 14, 12, 0, tzinfo=UTC)),
    (" 3D ", datetime(2026, 11, 25, 12, 0, tzinfo=UTC)),
])
def test_dates_and_ages(value, expected):
    assert parse_when(value, "--since", NOW) == expected


@pytest.mark.parametrize("value", ["yesterday", "7", "7m", "2026-13-01", "", "-7d"])
def test_bad_values_say_what_is_expected(value):
    with pytest.raises(RelayImpactError, match=r"--since .*expected a date \(2026-11-01\).*age \(24h, 7d, 2w\)"):
        parse_when(value, "--since", NOW)


def test_empty_period_is_refused():
    with pytest.raises(RelayImpactError, match="not before --until"):
        parse_period("2026-11-02", "2026-11-01", NOW)
    assert parse_period(None, None).filtered is False
