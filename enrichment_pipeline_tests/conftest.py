"""Shared fixtures: a real PostgreSQL server (support.postgres) and the sample Cowrie logs."""

from pathlib import Path

import pytest

pytest_plugins = ["enrichment_pipeline_tests.support.postgres"]

SHARED_LOGS = Path(__file__).resolve().parents[1] / "data" / "sample_logs"


@pytest.fixture
def sample_log_dir() -> Path:
    return SHARED_LOGS
