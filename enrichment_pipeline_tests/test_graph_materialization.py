"""Real Dagster materializations of the whole graph on real sample days, against the loopback Cymru stand-in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from enrichment_pipeline.assets import enrichment_assets
from enrichment_pipeline.core.inventory import fetch_inventory, make_engine
from enrichment_pipeline.core.ips import canonical_ip
from enrichment_pipeline.resources import (
    CowrieLogDirectory,
    CymruResource,
    GeoIpResource,
    GreyNoiseResource,
    InventoryDatabase,
)
from enrichment_pipeline.standins.asn_database import write_asn_database
from enrichment_pipeline.standins.cymru_server import CymruStandinServer
from enrichment_pipeline_tests.support.greynoise_server import FakeGreyNoise

DAY = "2018-05-07"
GREYNOISE_KEY = "gn-graph-secret-0ddba11"


def distinct_valid_ips(log_file: Path) -> set[str]:
    """Independent of the reader under test: the stdlib json module over every line."""
    ips = set()
    for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        ip = canonical_ip(event.get("src_ip")) if isinstance(event, dict) else None
        if ip:
            ips.add(ip)
    return ips


@pytest.fixture
def standin():
    with CymruStandinServer() as server:
        yield server


@pytest.fixture
def greynoise():
    """A loopback GreyNoise (observed for every IP unless scripted); `keyed_greynoise` points a resource at it."""
    with FakeGreyNoise(GREYNOISE_KEY) as server:
        yield server


def keyed_greynoise(server: FakeGreyNoise) -> GreyNoiseResource:
    return GreyNoiseResource(api_key=GREYNOISE_KEY, api_url=server.url, rate_per_s=1000, max_retries=0)


@pytest.fixture
def asn_db(tmp_path, sample_log_dir) -> tuple[str, set[str]]:
    """An ASN database covering exactly one of the day's IPs (as a /32), so both passes are exercised."""
    covered = sorted(distinct_valid_ips(sample_log_dir / f"cowrie.json.{DAY}"))[0]
    path = write_asn_database(tmp_path / "asn.mmdb", [(f"{covered}/32", 64496, "TEST-NET-AS")])
    return path, {covered}


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
            "geoip": GeoIpResource(asn_db=asn_db),
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


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    return request.getfixturevalue("pg_engine").url.render_as_string(hide_password=False)


def test_one_real_day_puts_every_valid_source_ip_in_the_inventory_and_nothing_else(
    db_url, sample_log_dir, standin, asn_db
):
    asn_path, maxmind_covered = asn_db
    with DagsterInstance.ephemeral() as instance:
        metadata = run_day(DAY, sample_log_dir, db_url, standin.address[1], asn_path, instance)

    expected = distinct_valid_ips(sample_log_dir / f"cowrie.json.{DAY}")
    rows = {row["ip_address"]: row for row in fetch_inventory(make_engine(db_url))}
    assert set(rows) == expected

    # Only IPs without a MaxMind ASN went to Cymru, in batches of 10.
    sent = [ip for request in standin.requests for ip in request]
    assert sorted(sent) == sorted(expected - maxmind_covered)
    assert metadata["cymru_bulk_results"]["batches"].value == -(-len(sent) // 10)
    assert metadata["cymru_bulk_results"]["failed"].value == 0

    (covered,) = maxmind_covered
    assert rows[covered]["current_asn"] == 64496 and rows[covered]["asn_org"] == "TEST-NET-AS"
    assert "cymru" not in rows[covered]["enrichment"]
    for ip in expected - maxmind_covered:
        cymru = rows[ip]["enrichment"]["cymru"]
        assert rows[ip]["current_asn"] == cymru["asn"]  # Cymru fallback (None for an unrouted answer)
        assert rows[ip]["cymru_updated_at"] is not None
    assert all(row["session_count"] >= 0 and row["maxmind_updated_at"] for row in rows.values())
    assert metadata["merged_inventory"]["rows_inserted"].value == len(expected)


def test_rematerializing_a_day_leaves_the_inventory_identical(tmp_path, sample_log_dir, standin, asn_db):
    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    volatile = ("enrichment_updated_at", "maxmind_updated_at", "cymru_updated_at")

    def snapshot():
        return sorted(
            ({k: v for k, v in row.items() if k not in volatile} for row in fetch_inventory(make_engine(db_url))),
            key=lambda row: row["ip_address"],
        )

    with DagsterInstance.ephemeral() as instance:
        run_day(DAY, sample_log_dir, db_url, standin.address[1], asn_db[0], instance)
        first = snapshot()
        second_meta = run_day(DAY, sample_log_dir, db_url, standin.address[1], asn_db[0], instance)
    assert snapshot() == first
    assert second_meta["merged_inventory"]["rows_inserted"].value == 0
    assert second_meta["merged_inventory"]["rows_updated"].value == len(first)


def test_a_missing_day_fails_with_the_file_and_the_env_var_named(tmp_path, standin):
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            enrichment_assets,
            partition_key="2018-05-02",
            instance=instance,
            raise_on_error=False,
            resources={
                "cowrie_logs": CowrieLogDirectory(log_dir=str(tmp_path)),
                "geoip": GeoIpResource(),
                "cymru": CymruResource(host="127.0.0.1", port=standin.address[1]),
                "inventory": InventoryDatabase(url=f"sqlite:///{tmp_path / 'inventory.sqlite'}"),
                "greynoise": GreyNoiseResource(),
            },
        )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert "COWRIE_LOG_DIR" in failure.description and "cowrie.json.2018-05-02" in failure.description
    assert not (tmp_path / "inventory.sqlite").exists()  # nothing was written
