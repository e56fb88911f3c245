"""Shared fixtures: a real PostgreSQL server (support.postgres), the Cymru stand-in (support.cymru_standin),
whole-graph runs (support.graph_run), the refresh's seeded inventory (support.refresh_inventory) and the
sample Cowrie logs."""

from pathlib import Path

import pytest

pytest_plugins = [
    "enrichment_pipeline_tests.support.postgres",
    "enrichment_pipeline_tests.support.cymru_standin",
    "enrichment_pipeline_tests.support.graph_run",
    "enrichment_pipeline_tests.support.refresh_inventory",
]

SHARED_LOGS = Path(__file__).resolve().parents[1] / "data" / "sample_logs"


@pytest.fixture
def sample_log_dir() -> Path:
    return SHARED_LOGS
