"""A 30-day backfill of overlapping synthetic days as concurrent Dagster runs in separate processes: 4 at once
on PostgreSQL (Dagster storage and inventory), 2 at once on SQLite (both). Nothing lost, nothing doubled, no
lock errors, and a second backfill over days already done changes nothing."""

from __future__ import annotations

import datetime
import multiprocessing
import os
import re
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize
from sqlalchemy import func, select

from enrichment_pipeline.assets import enrichment_assets
from enrichment_pipeline.core.inventory import (
    DAILY_ACTIVITY,
    fetch_inventory,
    make_engine,
)
from enrichment_pipeline.resources import (
    CowrieLogDirectory,
    CymruResource,
    FreshnessResource,
    GreyNoiseResource,
    InventoryDatabase,
    MaxMindResource,
)
from enrichment_pipeline.standins.asn_database import write_asn_database
from enrichment_pipeline.standins.cymru_server import (
    CymruStandinServer,
    standin_origins,
)
from enrichment_pipeline_tests.support.asn_state import assert_asn_inventory_exact
from enrichment_pipeline_tests.support.postgres import FreshDatabase
from enrichment_pipeline_tests.support.synthetic_days import (
    database_state,
    expected_inventory,
    public_ips,
    write_overlapping_days,
)

DAYS = [datetime.date(2018, 5, 1) + datetime.timedelta(days=n) for n in range(30)]
REPEATED_DAYS = DAYS[::5]  # the second backfill: six days already done, still run concurrently
POOL_SIZE = 300
IPS_PER_DAY = 40
MAXMIND_ASN = 64496
RUN_TIMEOUT_S = 300
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # the event log still gets everything
# What a run must never report, even if a retry later hid it behind a success.
LOCK_ERRORS = re.compile(r"database is locked|deadlock detected|could not serialize|lock timeout", re.IGNORECASE)


@dataclass(frozen=True)
class Setup:
    """Everything a worker process needs to materialize one day (picklable)."""

    log_dir: str
    db_url: str
    cymru_port: int
    asn_db: str


@dataclass(frozen=True)
class RunReport:
    day: str
    success: bool
    lock_errors: list[str]
    failures: list[str]


def _use_instance(dagster_home: str) -> None:
    os.environ["DAGSTER_HOME"] = dagster_home


def _materialize_day(day: str, setup: Setup) -> RunReport:
    """Worker: one real run of the whole graph for `day` on the instance in DAGSTER_HOME."""
    instance = DagsterInstance.get()
    result = materialize(
        enrichment_assets,
        partition_key=day,
        instance=instance,
        raise_on_error=False,
        run_config=QUIET,
        resources={
            "cowrie_logs": CowrieLogDirectory(log_dir=setup.log_dir),
            "maxmind": MaxMindResource(asn_db=setup.asn_db),
            "freshness": FreshnessResource(),
            "cymru": CymruResource(host="127.0.0.1", port=setup.cymru_port, timeout_s=30, batch_size=10),
            "inventory": InventoryDatabase(url=setup.db_url),
            "greynoise": GreyNoiseResource(),
        },
    )
    logged = [str(entry) for entry in instance.all_logs(result.run_id)]
    failures = [str(event.step_failure_data) for event in result.get_step_failure_events()]
    return RunReport(day, result.success, [text[:300] for text in logged if LOCK_ERRORS.search(text)], failures)


def run_workers(dagster_home: Path, concurrency: int) -> ProcessPoolExecutor:
    """`concurrency` fresh interpreters (spawned, like the daemon's run workers) on the instance in `dagster_home`."""
    return ProcessPoolExecutor(
        max_workers=concurrency,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_use_instance,
        initargs=(str(dagster_home),),
    )


def backfill(days: Iterable[datetime.date], setup: Setup, workers: ProcessPoolExecutor) -> list[RunReport]:
    """Every day as its own run, as many at a time as there are workers."""
    futures = [workers.submit(_materialize_day, day.isoformat(), setup) for day in days]
    return [future.result(timeout=RUN_TIMEOUT_S) for future in futures]


def dagster_home(directory: Path, storage_url: str | None) -> Path:
    """An instance directory; with `storage_url`, runs, events and schedules live in that PostgreSQL database."""
    directory.mkdir()
    config = "telemetry:\n  enabled: false\n"
    if storage_url:
        config += f'storage:\n  postgres:\n    postgres_url: "{storage_url}"\n'
    (directory / "dagster.yaml").write_text(config)
    # Create the storage schema once, so the concurrent first runs do not race to migrate it.
    DagsterInstance.from_config(str(directory)).dispose()
    return directory


@pytest.fixture(scope="module")
def days_on_disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], str, set[str]]:
    """30 days drawn from one pool of 300 IPs, and an ASN database covering every third IP of the pool."""
    root = tmp_path_factory.mktemp("backfill")
    pool = public_ips(POOL_SIZE, seed=21)
    paths = write_overlapping_days(root / "logs", DAYS, pool, ips_per_day=IPS_PER_DAY, seed=22)
    covered = set(pool[::3])
    asn_db = write_asn_database(root / "asn.mmdb", [(f"{ip}/32", MAXMIND_ASN, "MAXMIND-TEST") for ip in covered])
    return root / "logs", paths, asn_db, covered


@pytest.mark.parametrize(
    ("backend", "concurrency"), [pytest.param("postgres", 4, marks=pytest.mark.postgres), ("sqlite", 2)]
)
def test_concurrent_backfill_loses_and_doubles_nothing_and_a_repeat_changes_nothing(
    backend, concurrency, days_on_disk, tmp_path, request
):
    log_dir, paths, asn_db, covered = days_on_disk
    if backend == "postgres":
        server_url = request.getfixturevalue("postgres_url")
        inventory_db, storage_db = FreshDatabase(server_url), FreshDatabase(server_url)
        request.addfinalizer(inventory_db.drop)
        request.addfinalizer(storage_db.drop)
        db_url = inventory_db.create()
        storage_url = storage_db.create().replace("postgresql+psycopg2://", "postgresql://")
        home = dagster_home(tmp_path / "dagster_home", storage_url)
    else:
        db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
        home = dagster_home(tmp_path / "dagster_home", None)

    with CymruStandinServer() as standin, run_workers(home, concurrency) as workers:
        setup = Setup(str(log_dir), db_url, standin.address[1], asn_db)
        first = backfill(DAYS, setup, workers)
        engine = make_engine(db_url)
        after_first = database_state(engine)
        repeat = backfill(REPEATED_DAYS, setup, workers)

    for report in first + repeat:
        assert report.success, (report.day, report.failures)
        assert report.lock_errors == [], (report.day, report.lock_errors)

    expected = expected_inventory(paths)
    rows = {row["ip_address"]: row for row in fetch_inventory(engine)}
    assert len(fetch_inventory(engine)) == len(rows) == len(expected)
    for ip, want in expected.items():
        row = rows[ip]
        assert (row["session_count"], row["first_seen"], row["last_seen"]) == (
            want.session_count,
            want.first_seen,
            want.last_seen,
        ), ip
        assert row["current_asn"] == (MAXMIND_ASN if ip in covered else standin_origins(ip)[0].asn), ip
    with engine.connect() as conn:
        activity_rows = conn.execute(select(func.count()).select_from(DAILY_ACTIVITY)).scalar_one()
    assert activity_rows == len(DAYS) * IPS_PER_DAY
    # The ASN inventory the concurrent runs kept equals a recomputation from ip_inventory + ip_daily_activity.
    assert sum(row["ip_count"] for row in assert_asn_inventory_exact(engine).values()) == len(expected)

    # A backfill over days already done: identical, down to when each answer was stored.
    assert database_state(engine) == after_first
    engine.dispose()
