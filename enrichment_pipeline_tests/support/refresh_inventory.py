"""Pytest plugin: a small inventory for the stale refresh (core.refresh, the `refresh_stale` job, the CLI), seeded
at T0 against a test ASN database, and a loopback GreyNoise that knows KEY. Fixtures: `geoip`,
`refresh_greynoise_server` (per module) and `refresh_greynoise` (that server, reset for each test).
Helper: `seed`."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from enrichment_pipeline.core.frames import maxmind_enrichment, maxmind_frame
from enrichment_pipeline.core.freshness import MaxMindBuilds
from enrichment_pipeline.core.inventory import DayActivity, SourceUpdate, upsert_day
from enrichment_pipeline.core.maxmind import MaxMindLookup
from enrichment_pipeline.standins.asn_database import write_asn_database
from enrichment_pipeline_tests.support.greynoise_server import FakeGreyNoise

DAY = date(2018, 5, 6)
T0 = datetime(2018, 5, 7, 0, 0, tzinfo=UTC)
WITH_ASN = ["198.51.100.1", "198.51.100.2"]  # covered by the test ASN database
WITHOUT_ASN = ["203.0.113.7", "203.0.113.8", "2a01:4f8::1"]
ALL = sorted(WITH_ASN + WITHOUT_ASN)
# GreyNoise asks only global IPv4: two of these, never the private one or the IPv6 one.
GLOBAL_V4 = ["45.33.32.156", "185.220.101.1"]
NOT_ASKABLE = ["10.0.0.5", "2a01:4f8::1"]
KEY = "gn-refresh-secret-51c0ffee"
CYMRU_OLD = {"status": "routed", "asn": 1, "as_name": "OLD", "country_code": "ZZ", "origins": []}


@pytest.fixture
def geoip(tmp_path: Path) -> MaxMindLookup:
    """MaxMind lookups on a test ASN database that covers WITH_ASN (198.51.100.0/24) and nothing else."""
    path = write_asn_database(
        tmp_path / "asn.mmdb", [("198.51.100.0/24", 64496, "TEST-NET-2")], build_epoch=1_600_000_000
    )
    return MaxMindLookup(asn_db=path)


@pytest.fixture(scope="module")
def refresh_greynoise_server():
    """A loopback GreyNoise that accepts KEY, running for the whole test module."""
    with FakeGreyNoise(KEY) as server:
        yield server


@pytest.fixture
def refresh_greynoise(refresh_greynoise_server: FakeGreyNoise):
    """The module's loopback GreyNoise with no scripts and no logged requests."""
    refresh_greynoise_server.reset()
    return refresh_greynoise_server


def seed(engine: Engine, geoip: MaxMindLookup, at: datetime, ips: list[str] = ALL) -> None:
    """`ips` seen on DAY, enriched at `at` with the current MaxMind builds (Cymru for those without ASN)."""
    frame = maxmind_frame(geoip.lookup_many(ips), MaxMindBuilds.of(geoip))
    updates = [
        SourceUpdate(row["ip"], maxmind=maxmind_enrichment(row), cymru=None if row["ip"] in WITH_ASN else CYMRU_OLD)
        for row in frame.to_dict("records")
    ]
    activity = [DayActivity(ip, 2, 5, at - timedelta(hours=3), at - timedelta(hours=1)) for ip in ips]
    upsert_day(engine, DAY, activity, updates, now=at)
