"""Pytest plugin: materializing the whole asset graph for one day with real resources (the Cymru stand-in comes
from support.cymru_standin). Fixtures: `sqlite_or_postgres_url` (the test runs on each), `asn_db_covering_one_ip`
and `graph_greynoise`. Helpers: `graph_resources`, `run_day` and `keyed_greynoise`."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import materialize

from enrichment_pipeline.assets import enrichment_assets
from enrichment_pipeline.resources import (
    CowrieLogDirectory,
    CymruResource,
    DailyParquetIOManager,
    FreshnessResource,
    GreyNoiseResource,
    InventoryDatabase,
    MaxMindResource,
)
from enrichment_pipeline.standins.asn_database import write_asn_database
from enrichment_pipeline_tests.support.expected_ips import distinct_valid_ips
from enrichment_pipeline_tests.support.greynoise_server import FakeGreyNoise

ASN_DB_DAY = "2018-05-07"  # the sample day one of whose IPs `asn_db_covering_one_ip` covers
GREYNOISE_KEY = "gn-graph-secret-0ddba11"


@pytest.fixture(params=["sqlite", "postgres"])
def sqlite_or_postgres_url(request, tmp_path) -> str:
    """An inventory database URL: the test runs once on a new SQLite file and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    return request.getfixturevalue("pg_engine").url.render_as_string(hide_password=False)


@pytest.fixture
def asn_db_covering_one_ip(tmp_path, sample_log_dir) -> tuple[str, set[str]]:
    """An ASN database covering exactly one of ASN_DB_DAY's IPs (as a /32), so both passes are exercised:
    its path and the covered IP."""
    covered = sorted(distinct_valid_ips(sample_log_dir / f"cowrie.json.{ASN_DB_DAY}"))[0]
    path = write_asn_database(tmp_path / "asn.mmdb", [(f"{covered}/32", 64496, "TEST-NET-AS")])
    return path, {covered}


@pytest.fixture
def graph_greynoise():
    """A loopback GreyNoise (observed for every IP unless scripted); `keyed_greynoise` points a resource at it."""
    with FakeGreyNoise(GREYNOISE_KEY) as server:
        yield server


def keyed_greynoise(server: FakeGreyNoise) -> GreyNoiseResource:
    return GreyNoiseResource(api_key=GREYNOISE_KEY, api_url=server.url, rate_per_s=1000, max_retries=0)


def graph_resources(
    log_dir: Path, db_url: str, cymru_port: int, storage: Path, *, batch_size: int = 500, asn_db: str = ""
) -> dict:
    """Every resource of the graph, offline: the logs, the Cymru stand-in at `cymru_port`, no ASN database
    (unless given), no GreyNoise key, and the per-day Parquet files under `storage` (range runs need them)."""
    return {
        "io_manager": DailyParquetIOManager(base_dir=str(storage)),
        "cowrie_logs": CowrieLogDirectory(log_dir=str(log_dir)),
        "maxmind": MaxMindResource(asn_db=asn_db),
        "freshness": FreshnessResource(),
        "cymru": CymruResource(host="127.0.0.1", port=cymru_port, timeout_s=10, batch_size=batch_size),
        "inventory": InventoryDatabase(url=db_url),
        "greynoise": GreyNoiseResource(),
    }


def run_day(
    day: str,
    log_dir: Path,
    db_url: str,
    cymru_port: int,
    asn_db: str,
    instance,
    greynoise: GreyNoiseResource | None = None,
) -> dict:
    """Materialize the whole graph for `day`; GreyNoise is disabled (no key) unless a resource is given."""
    result = materialize(
        enrichment_assets,
        partition_key=day,
        instance=instance,
        resources={
            "cowrie_logs": CowrieLogDirectory(log_dir=str(log_dir)),
            "maxmind": MaxMindResource(asn_db=asn_db),
            "freshness": FreshnessResource(),
            "cymru": CymruResource(host="127.0.0.1", port=cymru_port, timeout_s=10, batch_size=10),
            "inventory": InventoryDatabase(url=db_url),
            "greynoise": greynoise or GreyNoiseResource(),
        },
    )
    assert result.success
    return {
        event.asset_key.to_user_string(): event.materialization.metadata
        for event in result.get_asset_materialization_events()
    }
