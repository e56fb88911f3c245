"""Every job of the pipeline: `enrich_day` (the daily-partitioned asset graph, in process), `enrich_day_celery`
(the same graph, each step a Celery task on `make workers`) and `refresh_stale` (the inventory's overdue IPs,
any day)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from dagster import (
    AssetSelection,
    DagsterError,
    DagsterInstance,
    ExecutorDefinition,
    InitExecutorContext,
    define_asset_job,
    job,
)
from dagster_celery import celery_executor
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from enrichment_pipeline.assets import daily_report, merged_inventory
from enrichment_pipeline.assets.common import TRANSIENT_RETRY
from enrichment_pipeline.ops import refresh_stale_ips
from enrichment_pipeline.settings import setting

# `*merged_inventory` and the day's report: the whole graph for one ingest day.
ENRICH_DAY_SELECTION = AssetSelection.assets(merged_inventory).upstream() | AssetSelection.assets(daily_report)
# Steps without their own policy retry transient errors like every asset does (one policy, in assets.common).
ENRICH_DAY_RETRY = TRANSIENT_RETRY

enrich_day_job = define_asset_job(
    "enrich_day",
    selection=ENRICH_DAY_SELECTION,
    description="Enrich every source IP of one Cowrie log day and upsert it into ip_inventory.",
    op_retry_policy=ENRICH_DAY_RETRY,
)


@job(description="Re-enrich the stalest and due-for-retry IPs of the whole ip_inventory (not partitioned).")
def refresh_stale() -> None:
    refresh_stale_ips()


# --- enrich_day on Celery workers ------------------------------------------------------------------------
# The run's own process (launched by the daemon, as for enrich_day) orchestrates: it claims the `cymru` /
# `greynoise` pool slot of a step in the instance's PostgreSQL event log storage, then sends the step to the
# broker as one task; a worker (`make workers`, any host) executes it against the same instance and inventory
# and sends its events back through the result backend; the slot is freed when they arrive. So the pools
# hold whichever worker runs a step. See README, "Scale out with Celery", and deploy/README.md.
CELERY_URL_VARIABLES = ("CELERY_BROKER_URL", "CELERY_BACKEND_URL")
# A task is taken back (and run by another worker) when its worker vanished this long after receiving it, so
# it must be longer than any step takes (a 31-day range's Cymru or GreyNoise pass: minutes), or a slow step
# would run twice at once. The same value on every worker: each sweeps the others' unacknowledged tasks.
VISIBILITY_TIMEOUT_S = 3600
RESTORE_SWEEP_S = 10  # how often each worker looks for such tasks


def celery_settings(visibility_timeout_s: int = VISIBILITY_TIMEOUT_S, restore_sweep_s: int = RESTORE_SWEEP_S) -> dict:
    """Celery's own settings (`config_source`), the same for the run that sends the tasks and the workers."""
    return {
        # A step's task is acknowledged when it has finished, not when a worker takes it: the task of a
        # worker killed mid-step (kill -9, a lost host) stays in the broker's unacknowledged set and is
        # delivered again after the visibility timeout; a pool process that dies (OOM) requeues it at once.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One task per worker process at a time: nothing waits inside a worker while others are idle (a
        # prefetched task would also count against its visibility timeout while it waits).
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # dagster-celery's defaults for publishing (replaced as a whole by this dict, so repeated)...
            "max_retries": 3,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
            # ...and the Redis transport's redelivery of unacknowledged tasks (kombu.transport.redis).
            "visibility_timeout": visibility_timeout_s,
            "unacked_restore_interval": restore_sweep_s,
            "unacked_restore_throttle": 1,
        },
    }


def celery_executor_config(**settings: int) -> dict[str, Any]:
    """The celery executor's config: broker and result backend from CELERY_BROKER_URL / CELERY_BACKEND_URL
    (as `{"env": ...}`, resolved by the process that uses them, when set; else the embedded default)."""
    urls = {name: {"env": name} if os.environ.get(name) else setting(name) for name in CELERY_URL_VARIABLES}
    return {
        "broker": urls["CELERY_BROKER_URL"],
        "backend": urls["CELERY_BACKEND_URL"],
        "config_source": celery_settings(**settings),
    }


class CeleryNeedsSharedStorage(DagsterError):
    """enrich_day_celery was started where its workers cannot share the Dagster instance or the inventory."""


def shared_storage_problems(instance: DagsterInstance, inventory_url: str) -> list[str]:
    """Why Celery workers could not share this instance and inventory: the Dagster instance must keep runs
    and events in PostgreSQL (workers on other hosts write step events and claim pool slots there) and so
    must the inventory (ENRICHMENT_DB_URL); empty when both do."""
    # Here, not at the top: these modules cost ~0.4 s of imports that an in-process run never needs.
    from dagster._core.storage.event_log import (
        ConsolidatedSqliteEventLogStorage,
        InMemoryEventLogStorage,
        SqliteEventLogStorage,
    )
    from dagster._core.storage.runs import InMemoryRunStorage, SqliteRunStorage

    local_run_storages = (SqliteRunStorage, InMemoryRunStorage)
    local_event_storages = (SqliteEventLogStorage, ConsolidatedSqliteEventLogStorage, InMemoryEventLogStorage)
    problems = []
    storages = (type(instance.run_storage).__name__, type(instance.event_log_storage).__name__)
    if isinstance(instance.run_storage, local_run_storages) or isinstance(
        instance.event_log_storage, local_event_storages
    ):
        problems.append(
            f"the Dagster instance (DAGSTER_HOME={instance.root_directory}) keeps runs and events in "
            f"{' / '.join(storages)}, local to this host: use DAGSTER_HOME=<repo>/dagster_home/postgres with the "
            "DAGSTER_PG_* variables"
        )
    try:
        url = make_url(inventory_url)
        shown, backend = url.render_as_string(hide_password=True), url.get_backend_name()
    except ArgumentError:
        shown, backend = "(not a database URL)", "unknown"
    if backend != "postgresql":
        problems.append(
            f"the inventory ENRICHMENT_DB_URL={shown} is {backend}, not PostgreSQL: set it to "
            "postgresql+psycopg2://... (the same database on every worker)"
        )
    return problems


def refuse_unshared_storage(instance: DagsterInstance, inventory_url: str) -> None:
    problems = shared_storage_problems(instance, inventory_url)
    if problems:
        raise CeleryNeedsSharedStorage(
            "enrich_day_celery runs its steps on Celery workers, possibly on other hosts, so it refuses to "
            f"start: {'; and '.join(problems)}. On one machine, run enrich_day instead."
        )


def create_pool_limits(instance: DagsterInstance, pools: set[str]) -> None:
    """Give each pool without a limit row its default limit now, before any step claims a slot.

    Dagster creates that row at a pool's first claim, inside a transaction that on PostgreSQL cannot survive
    a concurrent run having just created it (the duplicate-key error aborts the transaction, and its fallback
    UPDATE then fails the run: "current transaction is aborted"). Two runs of one backfill meet exactly
    there on a new instance; done here, a collision is harmless and re-checked."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits or instance.global_op_concurrency_default_limit is None:
        return
    missing = pools - {limit.name for limit in storage.get_pool_limits()}
    for pool in sorted(missing):
        try:
            storage.initialize_concurrency_limit_to_default(pool)
        except DBAPIError:
            if pool not in {limit.name for limit in storage.get_pool_limits()}:
                raise  # not the race: another run did not create it


def _celery_on_shared_storage(init_context: InitExecutorContext):
    # Runs when the run starts, in its own process, before any step is claimed or sent: the run fails at once
    # with the message (a run-retry, if the instance enables them, fails the same way).
    refuse_unshared_storage(init_context.instance, setting("ENRICHMENT_DB_URL"))
    job_def = init_context.job.get_definition()
    create_pool_limits(init_context.instance, {op.pool for op in job_def.graph.iterate_op_defs() if op.pool})
    return celery_executor.executor_creation_fn(init_context)  # type: ignore[misc]


celery_on_shared_storage = ExecutorDefinition(
    name=celery_executor.name,
    config_schema=celery_executor.config_schema,
    requirements=celery_executor.get_requirements,
    executor_creation_fn=_celery_on_shared_storage,
    description="dagster-celery's executor, refusing an instance or inventory the workers cannot share.",
).configured(celery_executor_config())

enrich_day_celery_job = define_asset_job(
    "enrich_day_celery",
    selection=ENRICH_DAY_SELECTION,
    description="enrich_day with each step a Celery task on `make workers` (PostgreSQL instance and inventory, "
    "a Redis broker at CELERY_BROKER_URL).",
    op_retry_policy=ENRICH_DAY_RETRY,
    executor_def=celery_on_shared_storage,
)


def write_celery_worker_config(path: Path | str, **settings: int) -> Path:
    """Refuse a worker environment that does not share the instance and the inventory, then write the YAML
    `dagster-celery worker start -y` reads: the executor's own config (`make workers`)."""
    refuse_unshared_storage(DagsterInstance.get(), setting("ENRICHMENT_DB_URL"))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump({"execution": {"config": celery_executor_config(**settings)}}))
    return target
