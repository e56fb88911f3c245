"""A batched UI backfill end to end: real `dagster-webserver` and `dagster-daemon` on the default SQLite
instance, ten days launched through GraphQL as the UI does with BACKFILL_DAYS_PER_RUN=4: three range runs
whose inventory equals ten single-day runs, each distinct IP asked at most once per run, every day with its
own materialization and check results."""

from __future__ import annotations

import datetime
import os
import random
import time
from pathlib import Path

import pytest
from dagster import AssetCheckKey, AssetKey, AssetRecordsFilter, DagsterInstance, materialize
from sqlalchemy import select

from enrichment_pipeline.assets import enrichment_assets
from enrichment_pipeline.core.inventory import DAILY_ACTIVITY, fetch_failures, fetch_inventory, make_engine
from enrichment_pipeline.definitions import defs
from enrichment_pipeline.standins.cymru_server import CymruStandinServer
from enrichment_pipeline_tests.support.dagster_services import PROJECT_ROOT, DagsterServices, ServiceError, wait_for
from enrichment_pipeline_tests.support.graph_run import graph_resources
from enrichment_pipeline_tests.support.synthetic_days import event, write_day

pytestmark = pytest.mark.timeout(600)

FIRST_DAY = datetime.date(2018, 5, 1)
DAYS = [FIRST_DAY + datetime.timedelta(days=n) for n in range(10)]
EVERY_DAY_IP = "198.51.100.77"  # seen on all ten days
DAYS_PER_RUN = 4
STAMPS = ("enrichment_updated_at", "maxmind_updated_at", "cymru_updated_at", "greynoise_updated_at")
CHECKS = {"every_ingested_ip_in_inventory", "asn_coverage", "no_failed_cymru_batches", "no_failed_greynoise_lookups"}
CHECKED_ASSET = {"no_failed_cymru_batches": "cymru_bulk_results", "no_failed_greynoise_lookups": "greynoise_results"}
AN_HOUR_AGO_NS = time.time_ns() - 3600 * 10**9


@pytest.fixture
def log_dir(tmp_path) -> Path:
    """Ten rotated days of 12 IPs each from a pool of 40, plus one IP seen every day."""
    rng = random.Random(13)
    pool = [f"203.0.113.{n}" for n in range(1, 41)]
    directory = tmp_path / "cowrie"
    for day in DAYS:
        noon = datetime.datetime(day.year, day.month, day.day, 12, tzinfo=datetime.UTC)
        ips = [EVERY_DAY_IP, *rng.sample(pool, 12)]
        lines = [event(ip, f"s{day:%d}{n}", noon + datetime.timedelta(minutes=n)) for n, ip in enumerate(ips)]
        os.utime(write_day(directory, day, lines), ns=(AN_HOUR_AGO_NS, AN_HOUR_AGO_NS))
    return directory


def state(db_url: str) -> tuple[list, list, list]:
    engine = make_engine(db_url)
    try:
        rows = [{k: v for k, v in row.items() if k not in STAMPS} for row in fetch_inventory(engine)]
        with engine.connect() as conn:
            daily = sorted(tuple(row) for row in conn.execute(select(DAILY_ACTIVITY)))
        failures = [{k: v for k, v in row.items() if not k.endswith("_at")} for row in fetch_failures(engine)]
        return rows, daily, failures
    finally:
        engine.dispose()


def one_run_per_day(tmp_path: Path, log_dir: Path, cymru_port: int) -> str:
    """The reference: ten single-day runs of the same days, in order (in process)."""
    db_url = f"sqlite:///{tmp_path / 'per_day.sqlite'}"
    resources = graph_resources(log_dir, db_url, cymru_port, tmp_path / "per_day_storage")
    with DagsterInstance.ephemeral() as instance:
        for day in DAYS:
            run = materialize(enrichment_assets, partition_key=day.isoformat(), instance=instance, resources=resources)
            assert run.success
    return db_url


def test_a_ten_day_backfill_runs_as_three_range_runs_equal_to_ten_single_day_runs(tmp_path, log_dir):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "dagster_home" / "dagster.yaml").read_text())
    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    days = [day.isoformat() for day in DAYS]
    with CymruStandinServer() as cymru:
        env = {
            "COWRIE_LOG_DIR": str(log_dir),
            "CYMRU_HOST": "127.0.0.1",
            "CYMRU_PORT": str(cymru.address[1]),
            "CYMRU_TIMEOUT_S": "10",
            "GEOIP_ASN_DB": "",
            "GREYNOISE_API_KEY": "",
            "ENRICHMENT_DB_URL": db_url,
            "COWRIE_PARTITION_START": "2018-05-01",
            "BACKFILL_DAYS_PER_RUN": str(DAYS_PER_RUN),
        }
        with DagsterServices(home, env) as services:
            try:
                services.start_webserver()
                services.stop_all_automation()
                services.start_daemon()
                assets = sorted(
                    key.path for key in defs.resolve_job_def("enrich_day").asset_layer.executable_asset_keys
                )
                backfill_id = services.launch_asset_backfill(assets, days, title="e2e: ten days, batched")
                status = wait_for(
                    "the backfill to finish",
                    lambda: (
                        (s if (s := services.backfill_status(backfill_id)).startswith("COMPLETED") else None)
                        or (s if s in {"FAILED", "CANCELED"} else None)
                    ),
                    420,
                    every_s=1,
                )
                runs = services.runs("dagster/backfill", backfill_id)
            except (AssertionError, ServiceError) as error:
                raise AssertionError(f"{error}\n{services.logs()}") from error
            assert status == "COMPLETED_SUCCESS", (status, runs, services.logs()[-5000:])
        requests_by_run = list(cymru.requests)
        reference_url = one_run_per_day(tmp_path, log_dir, cymru.address[1])

    # Three runs over contiguous ranges of at most four days, each a success.
    ranges = sorted(
        (tags(run)["dagster/asset_partition_range_start"], tags(run)["dagster/asset_partition_range_end"])
        for run in runs
    )
    assert ranges == [(days[0], days[3]), (days[4], days[7]), (days[8], days[9])]
    assert {run["status"] for run in runs} == {"SUCCESS"}

    # The same inventory, daily activity and retry list as ten single-day runs.
    assert state(db_url) == state(reference_url)

    # No request repeats an IP, and the IP seen every day was asked at most once per run.
    for request in requests_by_run:
        assert len(request) == len(set(request))
    asked = sum(EVERY_DAY_IP in request for request in requests_by_run)
    assert 1 <= asked <= len(runs)

    # Every day has its own materialization (with its own row count) and its own check results.
    with DagsterInstance.from_config(str(home)) as instance:
        for day in days:
            records = instance.fetch_materializations(
                AssetRecordsFilter(AssetKey("cowrie_source_ips"), asset_partitions=[day]), 1
            ).records
            assert records[0].asset_materialization.metadata["dagster/row_count"].value == 13
            for check in CHECKS:
                key = AssetCheckKey(AssetKey(CHECKED_ASSET.get(check, "merged_inventory")), check)
                history = instance.event_log_storage.get_asset_check_execution_history(key, limit=50)
                assert day in {record.partition for record in history}, (check, day)


def tags(run: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["tags"]}
