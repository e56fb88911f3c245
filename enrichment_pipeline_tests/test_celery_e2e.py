"""`enrich_day_celery` end to end, beyond one process for real: PostgreSQL (Dagster storage and inventory),
Redis (broker and result backend), the webserver, the daemon and two Celery workers (`dagster-celery worker
start`, as `make workers` runs them), all on 127.0.0.1. A job backfill of four synthetic days is launched
through GraphQL as the job page does; one worker is killed with SIGKILL in the middle of a Cymru step. Every
run still succeeds, each step ran in a worker process (both workers used), the killed step ran again on the
other worker, the Cymru pool never let two steps talk to Cymru at once, and the inventory equals the same
days materialized in process. Also: the job refuses, before any step, an instance or inventory on SQLite."""

from __future__ import annotations

import datetime
import os
import time
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, RunsFilter, execute_job, instance_for_test, materialize
from dagster._core.definitions.reconstruct import ReconstructableRepository
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from enrichment_pipeline.assets import enrichment_assets
from enrichment_pipeline.core.inventory import make_engine
from enrichment_pipeline.definitions import defs
from enrichment_pipeline.jobs import (
    CeleryNeedsSharedStorage,
    create_pool_limits,
    shared_storage_problems,
    write_celery_worker_config,
)
from enrichment_pipeline.resources import (
    CowrieLogDirectory,
    CymruResource,
    DailyParquetIOManager,
    FreshnessResource,
    GreyNoiseResource,
    InventoryDatabase,
    MaxMindResource,
)
from enrichment_pipeline.standins.cymru_server import CymruStandinServer
from enrichment_pipeline_tests.support.celery_services import CeleryWorkers, redis_for_tests
from enrichment_pipeline_tests.support.dagster_services import PROJECT_ROOT, DagsterServices, ServiceError, wait_for
from enrichment_pipeline_tests.support.postgres import FreshDatabase
from enrichment_pipeline_tests.support.synthetic_days import database_state, public_ips, write_overlapping_days

pytestmark = pytest.mark.timeout(480)

JOB = "enrich_day_celery"
DAYS = [datetime.date(2018, 6, 1) + datetime.timedelta(days=n) for n in range(4)]
# Two days per run: two range runs at once, so their Cymru steps compete for the one `cymru` slot from two
# run processes (the pool, not the run queue, must keep them apart), with half the run processes of one-day
# runs on a 2-core machine; the ranges also go through the range-aware assets on the workers.
DAYS_PER_RUN = 2
CYMRU_STEP = "cymru_bulk_results"
CYMRU_BATCH = 5  # with CYMRU_MAX_PARALLEL=1: a Cymru step is ~7 sequential connections, each 0.4 s long
CYMRU_LATENCY_S = 0.4
# Short, so the killed worker's task comes back within seconds; still far above any step's duration here
# (a task running longer than this would be delivered twice, which the assertions below would catch).
VISIBILITY_TIMEOUT_S = 20
WORKERS = ("alpha", "bravo")
BACKFILL_TIMEOUT_S = 240
AN_HOUR_AGO_NS = time.time_ns() - 3600 * 10**9
STEP_END = {DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE}


@pytest.fixture
def redis_url():
    with redis_for_tests() as url:
        yield url


@pytest.fixture
def log_dir(tmp_path) -> Path:
    """Four rotated days of 24 IPs each, drawn from 60 public IPs (so days overlap)."""
    directory = tmp_path / "cowrie"
    for path in write_overlapping_days(directory, DAYS, public_ips(60, seed=16), ips_per_day=24, seed=16):
        os.utime(path, ns=(AN_HOUR_AGO_NS, AN_HOUR_AGO_NS))
    return directory


@dataclass(frozen=True)
class WorkerStep:
    """One execution of a step by a worker, from its engine event ('Executing steps ... in celery worker')."""

    run_id: str
    step_key: str
    worker: str
    timestamp: float


def worker_steps(instance: DagsterInstance, run_ids: list[str]) -> list[WorkerStep]:
    found = []
    for run_id in run_ids:
        for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
            metadata = entry.dagster_event.engine_event_data.metadata
            if "Celery worker" in metadata:
                worker = metadata["Celery worker"].value
                found.append(WorkerStep(run_id, entry.step_key, worker, entry.timestamp))
    return sorted(found, key=lambda step: step.timestamp)


def ended_steps(instance: DagsterInstance, run_ids: list[str]) -> set[tuple[str, str]]:
    return {(run_id, entry.step_key) for run_id in run_ids for entry in instance.all_logs(run_id, of_type=STEP_END)}


def pool_windows(instance: DagsterInstance, run_ids: list[str], step_key: str) -> list[tuple[float, float]]:
    """For each run, from its process sending the step (after its pool slot was claimed) to the step's success
    (written by the worker that ran it to the end): the time the step held its slot, at least."""
    windows = []
    for run_id in run_ids:
        logs = instance.all_logs(run_id, of_type={DagsterEventType.ENGINE_EVENT, DagsterEventType.STEP_SUCCESS})
        sent = [
            e.timestamp
            for e in logs
            if e.step_key == step_key and "Submitting celery task" in (e.dagster_event.message or "")
        ]
        done = [e.timestamp for e in logs if e.step_key == step_key and e.dagster_event_type in STEP_END]
        windows.append((min(sent), max(done)))
    return sorted(windows)


def in_process_reference(tmp_path: Path, log_dir: Path, db_url: str) -> None:
    """The same four days, one in-process run per day, into another database (its own Cymru stand-in)."""
    with CymruStandinServer() as cymru, DagsterInstance.ephemeral() as instance:
        resources = {
            "io_manager": DailyParquetIOManager(base_dir=str(tmp_path / "reference_storage")),
            "cowrie_logs": CowrieLogDirectory(log_dir=str(log_dir)),
            "maxmind": MaxMindResource(),
            "freshness": FreshnessResource(),
            "cymru": CymruResource(host="127.0.0.1", port=cymru.address[1], timeout_s=10),
            "inventory": InventoryDatabase(url=db_url),
            "greynoise": GreyNoiseResource(),
        }
        for day in DAYS:
            result = materialize(
                enrichment_assets, partition_key=day.isoformat(), instance=instance, resources=resources
            )
            assert result.success


def state(db_url: str) -> dict:
    engine = make_engine(db_url)
    try:
        return database_state(engine, volatile=False)
    finally:
        engine.dispose()


def pg_env(storage_url: str) -> dict[str, str]:
    url = make_url(storage_url)
    return {
        "DAGSTER_PG_HOST": url.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_USER": url.username or "postgres",
        "DAGSTER_PG_PASSWORD": url.password or "unused-with-trust-auth",
        "DAGSTER_PG_DB": url.database or "postgres",
    }


def postgres_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "dagster_home" / "postgres" / "dagster.yaml").read_text())
    return home


@pytest.mark.postgres
def test_a_celery_backfill_survives_a_killed_worker_and_keeps_the_cymru_pool(
    tmp_path, postgres_url, redis_url, log_dir, monkeypatch
):
    databases = [FreshDatabase(postgres_url) for _ in range(3)]
    try:
        storage_url, inventory_url, reference_url = (database.create() for database in databases)
        home = postgres_home(tmp_path)
        with CymruStandinServer(latency_s=CYMRU_LATENCY_S) as cymru:
            env = {
                **pg_env(storage_url),
                "COWRIE_LOG_DIR": str(log_dir),
                "CYMRU_HOST": "127.0.0.1",
                "CYMRU_PORT": str(cymru.address[1]),
                "CYMRU_TIMEOUT_S": "10",
                "CYMRU_MAX_PARALLEL": "1",
                "CYMRU_BATCH_SIZE": str(CYMRU_BATCH),
                "GEOIP_ASN_DB": "",  # no ASN database: every IP goes to Cymru
                "GREYNOISE_API_KEY": "",
                "GREYNOISE_API_URL": "http://127.0.0.1:9",
                "ENRICHMENT_DB_URL": inventory_url,
                "BACKFILL_DAYS_PER_RUN": str(DAYS_PER_RUN),
                "CELERY_BROKER_URL": redis_url,
                "CELERY_BACKEND_URL": redis_url,
            }
            for name, value in {**env, "DAGSTER_HOME": str(home)}.items():
                monkeypatch.setenv(name, value)  # this process reads the instance's event log and writes the YAML
            config = write_celery_worker_config(
                home / "celery_worker.yaml", visibility_timeout_s=VISIBILITY_TIMEOUT_S, restore_sweep_s=1
            )
            with (
                DagsterServices(home, env) as services,
                CeleryWorkers(config, services.env, home) as workers,
                DagsterInstance.from_config(str(home)) as instance,
            ):
                try:
                    run_ids, killed, seen_pids = backfill_killing_a_worker(services, workers, instance, cymru)
                except (AssertionError, ServiceError) as error:
                    raise AssertionError(f"{error}\n{services.logs()}\n{workers.logs()}") from error
                check_runs(instance, run_ids, killed, seen_pids, workers)
            cymru_requests, cymru_peak = cymru.requests, cymru.peak_connections

        # The Cymru pool held across both workers and both runs: never two connections open at once,
        # over many (each step opens one at a time: CYMRU_MAX_PARALLEL=1, batches of CYMRU_BATCH).
        assert len(cymru_requests) >= 4 * len(run_ids), len(cymru_requests)
        assert cymru_peak == 1

        # Nothing lost, nothing doubled: the same rows as the days materialized in process.
        in_process_reference(tmp_path, log_dir, reference_url)
        assert state(inventory_url) == state(reference_url)
    finally:
        for database in databases:
            database.drop()


def backfill_killing_a_worker(services, workers, instance, cymru) -> tuple[list[str], WorkerStep, dict]:
    """Start everything, launch the backfill, SIGKILL the worker running a Cymru step mid-lookups, wait."""
    workers.spawn(*WORKERS)  # they start (import the definitions) while the webserver does
    services.start_webserver()
    services.stop_all_automation()  # the log sensor and the schedule would run enrich_day
    backfill_id = services.launch_job_backfill(JOB, [day.isoformat() for day in DAYS], title="e2e: celery")
    services.start_daemon()  # its first backfill iteration submits the runs
    workers.wait_ready()
    nodes = {workers.nodename(name): name for name in WORKERS}
    seen_pids: dict[str, set[int]] = {name: set() for name in WORKERS}
    requests_when_seen: dict[tuple[str, str], int] = {}

    def run_ids() -> list[str]:
        return [run.run_id for run in instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))]

    def victim() -> WorkerStep | None:
        for name in WORKERS:
            seen_pids[name] |= workers.pids(name)
        ids = run_ids()
        steps = worker_steps(instance, ids)
        if {step.worker for step in steps} != set(nodes):
            return None  # both workers first, so the kill is not what spreads the steps
        ended = ended_steps(instance, ids)
        for step in steps:
            if step.step_key != CYMRU_STEP or (step.run_id, step.step_key) in ended:
                continue
            asked = requests_when_seen.setdefault((step.run_id, step.step_key), len(cymru.requests))
            if len(cymru.requests) > asked:  # its lookups have begun: kill in the middle of them
                return step
        return None

    killed = wait_for("a Cymru step in flight, both workers used", victim, BACKFILL_TIMEOUT_S, every_s=0.2)
    workers.kill(nodes[killed.worker])

    def finished() -> str | None:
        seen_pids[survivor] |= workers.pids(survivor)
        status = services.backfill_status(backfill_id)
        return status if status.startswith("COMPLETED") or status in {"FAILED", "CANCELED"} else None

    survivor = next(name for name in WORKERS if name != nodes[killed.worker])
    status = wait_for("the backfill to finish", finished, BACKFILL_TIMEOUT_S, every_s=1)
    assert status == "COMPLETED_SUCCESS", status
    return run_ids(), killed, seen_pids


def check_runs(instance, run_ids, killed: WorkerStep, seen_pids, workers) -> None:
    runs = [instance.get_run_by_id(run_id) for run_id in run_ids]
    # Two range runs of two days, both successful, and no run retried (the worker's death is not a run's).
    ranges = sorted(
        (run.tags["dagster/asset_partition_range_start"], run.tags["dagster/asset_partition_range_end"]) for run in runs
    )
    days = [day.isoformat() for day in DAYS]
    assert ranges == [(days[0], days[1]), (days[2], days[3])]
    assert {run.status.value for run in runs} == {"SUCCESS"}
    assert all(run.job_name == JOB and "dagster/parent_run_id" not in run.tags for run in runs)

    steps = worker_steps(instance, run_ids)
    name_of = {workers.nodename(name): name for name in WORKERS}
    # Both workers ran steps; the killed step began on the killed worker and ran again, to the end, on the other.
    assert {step.worker for step in steps} == set(name_of)
    again = [s for s in steps if (s.run_id, s.step_key) == (killed.run_id, killed.step_key)]
    assert [s.worker for s in again][0] == killed.worker and len(again) == 2, again
    assert again[1].worker != killed.worker
    # Any other step went to a worker once: none outlived the visibility timeout and was delivered twice.
    deliveries = Counter((s.run_id, s.step_key) for s in steps)
    del deliveries[(killed.run_id, killed.step_key)]
    assert set(deliveries.values()) == {1}, (
        f"delivered twice (a step slower than the visibility timeout?): {deliveries}"
    )

    # The `cymru` pool held the step of one run from its sending to its success, through the kill and the
    # redelivery: the other run's Cymru step was sent only after (without the pool it is sent meanwhile).
    windows = pool_windows(instance, run_ids, CYMRU_STEP)
    assert all(later[0] >= earlier[1] for earlier, later in pairwise(windows)), windows

    for run in runs:
        logs = instance.all_logs(run.run_id)
        orchestrator = {e.dagster_event.pid for e in logs if e.dagster_event_type == DagsterEventType.RUN_START}
        starts = [e for e in logs if e.dagster_event_type == DagsterEventType.STEP_START]
        successes = Counter(e.step_key for e in logs if e.dagster_event_type == DagsterEventType.STEP_SUCCESS)
        executed = {s.step_key for s in steps if s.run_id == run.run_id}
        # Every step of the run succeeded exactly once, and every one was sent to a worker.
        assert set(successes) == executed and set(successes.values()) == {1}, successes
        assert not any(e.dagster_event_type == DagsterEventType.STEP_FAILURE for e in logs)
        # ...and started in a worker's pool process, not in the run's own process.
        for start in starts:
            pid = start.dagster_event.pid
            assert pid not in orchestrator
            assert any(pid in seen_pids[name] for name in WORKERS), (start.step_key, pid, seen_pids)
        # One materialization of each asset for each of the run's days: the killed attempt left none.
        materialized = Counter(
            (e.dagster_event.asset_key.to_user_string(), e.dagster_event.partition)
            for e in logs
            if e.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION
        )
        assert set(materialized.values()) == {1}, materialized
        assert len(materialized) == DAYS_PER_RUN * len({key for key, _ in materialized})


# --- the refusal ---------------------------------------------------------------------------------------------
def celery_job():
    repository = ReconstructableRepository.for_module("enrichment_pipeline.definitions", "defs", str(PROJECT_ROOT))
    return repository.get_reconstructable_job(JOB)


def test_on_the_sqlite_instance_the_run_fails_before_any_step_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("ENRICHMENT_DB_URL", f"sqlite:///{tmp_path / 'inventory.sqlite'}")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:9/0")  # never contacted
    with instance_for_test() as instance:
        result = execute_job(celery_job(), instance, tags={"dagster/partition": DAYS[0].isoformat()})
        assert not result.success
        events = {event.event_type for event in result.all_events}
        assert DagsterEventType.STEP_START not in events
        failure = next(event for event in result.all_events if event.event_type == DagsterEventType.RUN_FAILURE)
        message = failure.event_specific_data.error.message
    assert "CeleryNeedsSharedStorage" in message and "refuses to start" in message
    assert "SqliteRunStorage" in message and "dagster_home/postgres" in message
    assert "ENRICHMENT_DB_URL=sqlite:///" in message and "run enrich_day instead" in message
    assert not (tmp_path / "inventory.sqlite").exists()  # nothing was written


@pytest.mark.postgres
def test_on_the_postgres_instance_only_a_sqlite_inventory_is_refused(tmp_path, postgres_url, monkeypatch):
    storage = FreshDatabase(postgres_url)
    try:
        for name, value in pg_env(storage.create()).items():
            monkeypatch.setenv(name, value)
        with DagsterInstance.from_config(str(postgres_home(tmp_path))) as instance:
            [problem] = shared_storage_problems(instance, "sqlite:///inventory.sqlite")
            assert problem.startswith("the inventory ENRICHMENT_DB_URL=sqlite:///inventory.sqlite is sqlite")
            assert shared_storage_problems(instance, "postgresql+psycopg2://u:secret@db/inventory") == []
            assert "secret" not in "".join(shared_storage_problems(instance, "mysql://u:secret@db/x"))
    finally:
        storage.drop()


@pytest.mark.postgres
def test_pool_limits_exist_before_the_first_claim_even_when_two_runs_race(tmp_path, postgres_url, monkeypatch):
    storage = FreshDatabase(postgres_url)
    try:
        for name, value in pg_env(storage.create()).items():
            monkeypatch.setenv(name, value)
        with DagsterInstance.from_config(str(postgres_home(tmp_path))) as instance:
            event_log = instance.event_log_storage
            event_log.initialize_concurrency_limit_to_default("cymru")
            # Dagster's own creation, at a claim that still believes the pool has no row, fails on PostgreSQL
            # once another run made it: the duplicate key aborts the transaction its fallback UPDATE runs in.
            with pytest.raises(DBAPIError, match="current transaction is aborted"):
                event_log.initialize_concurrency_limit_to_default("cymru")
            # The run-start version shrugs off the same collision (it saw no row, another run made it).
            real, calls = event_log.get_pool_limits, []

            def first_without_cymru():
                calls.append(len(calls))
                return [] if len(calls) == 1 else real()

            monkeypatch.setattr(event_log, "get_pool_limits", first_without_cymru)
            create_pool_limits(instance, {"cymru", "greynoise"})
            assert len(calls) == 2  # the collision was seen, and the row found made by the "other run"
            limits = {limit.name: (limit.limit, limit.from_default) for limit in event_log.get_pool_limits()}
            assert limits == {"cymru": (1, True), "greynoise": (1, True)}
    finally:
        storage.drop()


def test_make_workers_refuses_a_worker_on_the_sqlite_instance(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # no dagster.yaml: Dagster's default, SQLite
    monkeypatch.setenv("ENRICHMENT_DB_URL", "postgresql+psycopg2://u@db/inventory")
    with pytest.raises(CeleryNeedsSharedStorage, match="SqliteRunStorage"):
        write_celery_worker_config(tmp_path / "worker.yaml")
    assert not (tmp_path / "worker.yaml").exists()


def test_enrich_day_celery_is_enrich_day_on_the_celery_executor():
    celery, in_process = defs.resolve_job_def(JOB), defs.resolve_job_def("enrich_day")
    assert celery.asset_layer.executable_asset_keys == in_process.asset_layer.executable_asset_keys
    assert celery.asset_layer.asset_graph.asset_check_keys == in_process.asset_layer.asset_graph.asset_check_keys
    assert sorted(node.name for node in celery.graph.node_defs) == sorted(n.name for n in in_process.graph.node_defs)
    assert celery.op_retry_policy == in_process.op_retry_policy
    assert celery.partitions_def == in_process.partitions_def
    assert celery.executor_def.name == "celery"
    assert in_process.executor_def.name != "celery"  # enrich_day stays in process
