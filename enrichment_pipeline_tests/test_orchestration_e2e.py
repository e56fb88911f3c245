"""End to end, as a user drives it: real `dagster-webserver` and `dagster-daemon` (127.0.0.1) on each committed
instance configuration (PostgreSQL, then the default SQLite), a two-day backfill launched through the
webserver's GraphQL API as the UI does, then the log sensor picking up a newly rotated day; and a failed
day's run re-executed from failure, in process."""

import os
import shutil
import time
from datetime import date
from pathlib import Path

import pytest
from dagster import (
    AssetSelection,
    Definitions,
    ReexecutionOptions,
    define_asset_job,
    execute_job,
    instance_for_test,
    reconstructable,
)
from sqlalchemy.engine import make_url

from enrichment_pipeline.core.inventory import fetch_inventory, ips_seen_on, make_engine
from enrichment_pipeline.definitions import defs
from enrichment_pipeline.resources import (
    CowrieLogDirectory,
    CymruResource,
    FreshnessResource,
    InventoryDatabase,
    MaxMindResource,
)
from enrichment_pipeline.sensors import SENSOR_NAME, LogCursor
from enrichment_pipeline.standins.cymru_server import CymruStandinServer
from enrichment_pipeline_tests.support.dagster_services import (
    PROJECT_ROOT,
    DagsterServices,
    ServiceError,
    wait_for,
)
from enrichment_pipeline_tests.support.expected_ips import distinct_valid_ips
from enrichment_pipeline_tests.support.postgres import FreshDatabase

pytestmark = pytest.mark.timeout(900)

BACKFILL_DAYS = ["2018-05-06", "2018-05-07"]
SENSOR_DAY = "2018-05-08"
RUNS_TIMEOUT_S = 240
FINISHED_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
FINISHED_RUN = {"SUCCESS", "FAILURE", "CANCELED"}
CHECKS = {"every_ingested_ip_in_inventory", "asn_coverage", "no_failed_cymru_batches", "no_failed_greynoise_lookups"}
AN_HOUR_AGO_NS = time.time_ns() - 3600 * 10**9


@pytest.fixture
def cymru():
    with CymruStandinServer() as server:
        yield server


@pytest.fixture
def log_dir(tmp_path, sample_log_dir) -> Path:
    """A Cowrie log directory holding the two backfill days, rotated an hour ago."""
    directory = tmp_path / "cowrie"
    directory.mkdir()
    for day in BACKFILL_DAYS:
        rotate_in(sample_log_dir, directory, day)
    return directory


def rotate_in(source_dir: Path, log_dir: Path, day: str) -> Path:
    target = log_dir / f"cowrie.json.{day}"
    shutil.copyfile(source_dir / target.name, target)
    os.utime(target, ns=(AN_HOUR_AGO_NS, AN_HOUR_AGO_NS))
    return target


def instance_home(tmp_path: Path, config: str) -> Path:
    """A temporary DAGSTER_HOME holding a copy of one committed dagster.yaml."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PROJECT_ROOT / config, home / "dagster.yaml")
    return home


def pipeline_env(log_dir: Path, cymru: CymruStandinServer, db_url: str) -> dict[str, str]:
    """Everything offline: sample logs, the Cymru stand-in, no GreyNoise key, a throwaway inventory."""
    return {
        "COWRIE_LOG_DIR": str(log_dir),
        "CYMRU_HOST": "127.0.0.1",
        "CYMRU_PORT": str(cymru.address[1]),
        "CYMRU_TIMEOUT_S": "10",
        "GEOIP_ASN_DB": "",
        "GREYNOISE_API_KEY": "",
        "GREYNOISE_API_URL": "http://127.0.0.1:9",
        "ENRICHMENT_DB_URL": db_url,
        "COWRIE_SENSOR_INTERVAL_S": "2",
        # One run per day here; batched range runs have their own end-to-end test (test_backfill_e2e.py).
        "BACKFILL_DAYS_PER_RUN": "1",
    }


def backfill_and_sense(services: DagsterServices, log_dir: Path, sample_log_dir: Path, db_url: str) -> None:
    """The user journey; any failure carries the services' logs."""
    try:
        services.start_webserver()
        # Switched off in the UI first, so only the backfill runs until the sensor is switched back on.
        assert {SENSOR_NAME, "enrich_day_schedule"} <= set(services.stop_all_automation())
        services.start_daemon()
        check_backfill(services, sample_log_dir, db_url)
        check_sensor(services, log_dir, sample_log_dir, db_url)
    except (AssertionError, ServiceError) as error:
        raise AssertionError(f"{error}\n{services.logs()}") from error


def check_backfill(services: DagsterServices, sample_log_dir: Path, db_url: str) -> None:
    # The whole graph of a day, as "Materialize all" over a partition range in the asset graph.
    assets = sorted(key.path for key in defs.resolve_job_def("enrich_day").asset_layer.executable_asset_keys)
    backfill_id = services.launch_asset_backfill(assets, BACKFILL_DAYS, title="e2e: two sample days")

    def finished_status() -> str | None:
        status = services.backfill_status(backfill_id)
        return status if status in FINISHED_BACKFILL else None

    status = wait_for("the backfill to finish", finished_status, RUNS_TIMEOUT_S, every_s=1)
    runs = services.runs("dagster/backfill", backfill_id)
    assert status == "COMPLETED_SUCCESS", (status, runs)
    assert sorted(run_day(run) for run in runs) == BACKFILL_DAYS
    assert {run["status"] for run in runs} == {"SUCCESS"}
    for run in runs:  # the checks ran with the assets, and passed
        assert check_results(services, run["runId"]) == {name: True for name in CHECKS}

    engine = make_engine(db_url)
    try:
        expected = {day: distinct_valid_ips(sample_log_dir / f"cowrie.json.{day}") for day in BACKFILL_DAYS}
        rows = {row["ip_address"]: row for row in fetch_inventory(engine)}
        assert set(rows) == set().union(*expected.values())
        assert all(row["current_asn"] is not None and row["cymru_updated_at"] for row in rows.values())
        for day, ips in expected.items():
            assert ips_seen_on(engine, date.fromisoformat(day)) == ips
    finally:
        engine.dispose()


def check_sensor(services: DagsterServices, log_dir: Path, sample_log_dir: Path, db_url: str) -> None:
    # Switched back on with the cursor past the days already run, as after a first quiet evaluation.
    seen = max(path.stat().st_ctime_ns for path in log_dir.iterdir())
    services.start_sensor(SENSOR_NAME, cursor=LogCursor(watermark_ns=seen + 1).to_json())
    rotated = rotate_in(sample_log_dir, log_dir, SENSOR_DAY)

    def finished_sensor_runs():
        runs = services.runs("dagster/sensor_name", SENSOR_NAME)
        return runs if runs and all(run["status"] in FINISHED_RUN for run in runs) else None

    runs = wait_for("the sensor's run to finish", finished_sensor_runs, RUNS_TIMEOUT_S, every_s=1)
    assert [(tags(run)["dagster/partition"], run["status"]) for run in runs] == [(SENSOR_DAY, "SUCCESS")]
    stat = rotated.stat()
    assert tags(runs[0])["dagster/run_key"] == f"{SENSOR_DAY}:{stat.st_size}:{stat.st_mtime_ns}"
    assert tags(runs[0])["cowrie/log_file"] == rotated.name

    engine = make_engine(db_url)
    try:
        assert ips_seen_on(engine, date.fromisoformat(SENSOR_DAY)) == distinct_valid_ips(rotated)
    finally:
        engine.dispose()


def tags(run: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["tags"]}


def run_day(run: dict) -> str:
    """The one day a run covers: its partition, or a backfill range of one day (BACKFILL_DAYS_PER_RUN=1)."""
    run_tags = tags(run)
    if "dagster/partition" in run_tags:
        return run_tags["dagster/partition"]
    first, last = run_tags["dagster/asset_partition_range_start"], run_tags["dagster/asset_partition_range_end"]
    assert first == last, (first, last)
    return first


def check_results(services: DagsterServices, run_id: str) -> dict[str, bool]:
    """The asset check evaluations in one run's event log: check name -> passed."""
    events = services.graphql(
        "query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {"
        " __typename ... on AssetCheckEvaluationEvent { evaluation { checkName success } } } } } }",
        {"id": run_id},
    )["logsForRun"]["events"]
    evaluations = [event["evaluation"] for event in events if event["__typename"] == "AssetCheckEvaluationEvent"]
    return {evaluation["checkName"]: evaluation["success"] for evaluation in evaluations}


@pytest.mark.postgres
def test_backfill_and_sensor_on_the_postgres_instance(tmp_path, postgres_url, log_dir, sample_log_dir, cymru):
    storage, inventory = FreshDatabase(postgres_url), FreshDatabase(postgres_url)
    try:
        storage_url = make_url(storage.create())
        inventory_url = inventory.create()
        env = {
            **pipeline_env(log_dir, cymru, inventory_url),
            "DAGSTER_PG_HOST": storage_url.host or "127.0.0.1",
            "DAGSTER_PG_PORT": str(storage_url.port or 5432),
            "DAGSTER_PG_USER": storage_url.username or "postgres",
            "DAGSTER_PG_PASSWORD": storage_url.password or "unused-with-trust-auth",
            "DAGSTER_PG_DB": storage_url.database or "postgres",
        }
        with DagsterServices(instance_home(tmp_path, "dagster_home/postgres/dagster.yaml"), env) as services:
            backfill_and_sense(services, log_dir, sample_log_dir, inventory_url)
    finally:
        storage.drop()
        inventory.drop()


def test_backfill_and_sensor_on_the_default_sqlite_instance(tmp_path, log_dir, sample_log_dir, cymru):
    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    env = pipeline_env(log_dir, cymru, db_url)
    with DagsterServices(instance_home(tmp_path, "dagster_home/dagster.yaml"), env) as services:
        backfill_and_sense(services, log_dir, sample_log_dir, db_url)


# --- re-execution from failure -------------------------------------------------------------------------------
def asset_job_from_env():
    """Every asset, as a backfill from the asset graph runs them, with resources from this test's REEXEC_*
    variables. Reconstructable, so each execution builds it anew and sees the variables as they are then."""
    resources = {
        **defs.resources,
        "cowrie_logs": CowrieLogDirectory(log_dir=os.environ["REEXEC_LOG_DIR"]),
        "maxmind": MaxMindResource(),
        "freshness": FreshnessResource(),
        "cymru": CymruResource(host="127.0.0.1", port=int(os.environ["REEXEC_CYMRU_PORT"]), timeout_s=5),
        "inventory": InventoryDatabase(url=os.environ["REEXEC_DB_URL"]),
    }
    whole_day = define_asset_job("whole_day", AssetSelection.all())
    project = Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=[whole_day],
        resources=resources,
        executor=defs.executor,
    )
    return project.resolve_job_def("whole_day")


def test_a_failed_day_is_re_executed_from_failure_without_repeating_what_succeeded(
    tmp_path, sample_log_dir, cymru, monkeypatch
):
    day = BACKFILL_DAYS[1]
    in_the_way = tmp_path / "inventory.sqlite"
    in_the_way.mkdir()  # a directory where the inventory file belongs: the database's first use fails
    monkeypatch.setenv("REEXEC_LOG_DIR", str(sample_log_dir))
    monkeypatch.setenv("REEXEC_CYMRU_PORT", str(cymru.address[1]))
    monkeypatch.setenv("REEXEC_DB_URL", f"sqlite:///{in_the_way}")
    job = reconstructable(asset_job_from_env)
    with instance_for_test() as instance:
        failed = execute_job(job, instance, tags={"dagster/partition": day})
        assert not failed.success
        done_first = {event.step_key for event in failed.get_step_success_events()}
        assert {"cowrie_logs_ingest", "maxmind_results"} <= done_first
        assert cymru.requests == []  # it failed before any Cymru lookup

        in_the_way.rmdir()  # the operator fixes the cause, then: Re-execute -> From failure
        from_failure = ReexecutionOptions.from_failure(failed.run_id, instance)
        # The UI copies the parent's tags (the partition among them) into the re-execution; so do we.
        again = execute_job(job, instance, tags=failed.dagster_run.tags, reexecution_options=from_failure)
        assert again.success
        done_again = {event.step_key for event in again.get_step_success_events()}
        assert done_again.isdisjoint(done_first) and {"ips_needing_cymru", "merged_inventory"} <= done_again
        assert again.dagster_run.tags["dagster/partition"] == day

    engine = make_engine(os.environ["REEXEC_DB_URL"])
    try:
        assert ips_seen_on(engine, date.fromisoformat(day)) == distinct_valid_ips(sample_log_dir / f"cowrie.json.{day}")
    finally:
        engine.dispose()
