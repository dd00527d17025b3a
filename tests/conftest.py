"""Shared fixtures. Real public samples live in ../shared/samples/real (never copied here):
tests that read them skip cleanly when that folder is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_LOGS = ROOT / "sample_logs"
TEST_DATA = Path(__file__).resolve().parent / "data"
SHARED_REAL = ROOT.parent / "shared" / "samples" / "real"


@pytest.fixture
def real_samples() -> Path:
    """../shared/samples/real, or skip when it is not there (a clone without shared/)."""
    if not SHARED_REAL.is_dir():
        pytest.skip("../shared/samples/real is not present")
    return SHARED_REAL


@pytest.fixture
def sample_logs() -> Path:
    return SAMPLE_LOGS


@pytest.fixture
def test_data() -> Path:
    return TEST_DATA
