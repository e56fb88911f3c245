"""The floor of a backfill: `enrich_day`'s graph shape doing no work. The same eight steps (asset keys, deps,
pools, checks, daily partitions, `BackfillPolicy.multi_run(BACKFILL_DAYS_PER_RUN)`, in-process executor), each
recording what the project records per day -- a materialization with a few metadata values, and each check's
evaluation for each day -- and nothing else: no IO manager, no database, no lookups. Run through the daemon like
the project's year, it is what Dagster alone costs per day and per run on this instance. Nothing of the project
is imported; `test_bench_floor_graph` keeps the shape in step with `enrich_day`."""

import os
from collections.abc import Iterator

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetOut,
    BackfillPolicy,
    DailyPartitionsDefinition,
    Definitions,
    MaterializeResult,
    OpExecutionContext,
    Output,
    asset,
    define_asset_job,
    in_process_executor,
    multi_asset,
    multi_asset_check,
)

days = DailyPartitionsDefinition(start_date=os.environ.get("COWRIE_PARTITION_START") or "2018-05-01", timezone="UTC")
policy = BackfillPolicy.multi_run(max_partitions_per_run=int(os.environ.get("BACKFILL_DAYS_PER_RUN") or "31"))
SHAPE = {"partitions_def": days, "backfill_policy": policy}


def _materialize(context: AssetExecutionContext | OpExecutionContext) -> None:
    """Per-day metadata, as `assets.common.report_days` attaches it to each day of a range."""
    for day in context.partition_keys:
        context.add_asset_metadata({"dagster/row_count": 0, "ips": 0}, partition_key=day)


def _checks(context: OpExecutionContext, specs: list[AssetCheckSpec]) -> Iterator[AssetCheckResult | Output]:
    """Each check for each day, as `checks.report_checks` records them (a range logs one evaluation per day)."""
    if context.has_partition_key:
        yield from (AssetCheckResult(passed=True, asset_key=spec.asset_key, check_name=spec.name) for spec in specs)
        return
    for day in context.partition_keys:
        for spec in specs:
            context.log_event(
                AssetCheckEvaluation(
                    asset_key=spec.asset_key, check_name=spec.name, passed=True, blocking=spec.blocking, partition=day
                )
            )
    for output_name in context.assets_def.check_specs_by_output_name:
        if output_name in context.selected_output_names:
            yield Output(None, output_name=output_name)


@multi_asset(outs={"cowrie_source_ips": AssetOut(), "cowrie_sensor_activity": AssetOut()}, **SHAPE)
def cowrie_logs_ingest(context: AssetExecutionContext) -> Iterator[MaterializeResult]:
    for name in ("cowrie_source_ips", "cowrie_sensor_activity"):
        for day in context.partition_keys:
            context.add_asset_metadata({"dagster/row_count": 0}, asset_key=name, partition_key=day)
        yield MaterializeResult(asset_key=name)


@asset(deps=["cowrie_source_ips"], **SHAPE)
def maxmind_results(context: AssetExecutionContext) -> MaterializeResult:
    _materialize(context)
    return MaterializeResult()


@asset(deps=["maxmind_results"], **SHAPE)
def ips_needing_cymru(context: AssetExecutionContext) -> MaterializeResult:
    _materialize(context)
    return MaterializeResult()


CYMRU_CHECK = AssetCheckSpec("no_failed_cymru_batches", asset="cymru_bulk_results", partitions_def=days)
GREYNOISE_CHECK = AssetCheckSpec("no_failed_greynoise_lookups", asset="greynoise_results", partitions_def=days)


@asset(deps=["ips_needing_cymru"], pool="cymru", check_specs=[CYMRU_CHECK], **SHAPE)
def cymru_bulk_results(context: AssetExecutionContext) -> Iterator[MaterializeResult | AssetCheckResult | Output]:
    _materialize(context)
    yield MaterializeResult()
    yield from _checks(context.op_execution_context, [CYMRU_CHECK])


@asset(deps=["cowrie_source_ips"], pool="greynoise", check_specs=[GREYNOISE_CHECK], **SHAPE)
def greynoise_results(context: AssetExecutionContext) -> Iterator[MaterializeResult | AssetCheckResult | Output]:
    _materialize(context)
    yield MaterializeResult()
    yield from _checks(context.op_execution_context, [GREYNOISE_CHECK])


@asset(
    deps=["greynoise_results", "cymru_bulk_results", "cowrie_source_ips", "cowrie_sensor_activity", "maxmind_results"],
    **SHAPE,
)
def merged_inventory(context: AssetExecutionContext) -> MaterializeResult:
    _materialize(context)
    return MaterializeResult()


INVENTORY_CHECKS = [
    AssetCheckSpec(
        "every_ingested_ip_in_inventory",
        asset="merged_inventory",
        partitions_def=days,
        additional_deps=["cowrie_source_ips"],
        blocking=True,
    ),
    AssetCheckSpec(
        "asn_coverage", asset="merged_inventory", partitions_def=days, additional_deps=["cowrie_source_ips"]
    ),
]


@multi_asset_check(specs=INVENTORY_CHECKS, can_subset=True)
def inventory_coverage(context: AssetCheckExecutionContext) -> Iterator[AssetCheckResult | Output]:
    yield from _checks(context.op_execution_context, INVENTORY_CHECKS)


@asset(deps=["merged_inventory"], **SHAPE)
def daily_report(context: AssetExecutionContext) -> MaterializeResult:
    _materialize(context)
    return MaterializeResult()


ASSETS = [cowrie_logs_ingest, maxmind_results, ips_needing_cymru, cymru_bulk_results, greynoise_results]
ASSETS += [merged_inventory, daily_report]
enrich_day = define_asset_job("enrich_day", selection=[*ASSETS])

defs = Definitions(assets=ASSETS, asset_checks=[inventory_coverage], jobs=[enrich_day], executor=in_process_executor)
