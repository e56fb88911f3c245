"""GreyNoise pass: the run's IPv4 sources whose stored answer is not fresh, each distinct IP asked once, within
rate, daily budget and the pass deadline.
Without an API key every row is "disabled" and nothing is asked; a rejected key (401) fails the step clearly."""

import time
from collections import Counter
from collections.abc import Iterator

import pandas as pd
from dagster import AssetCheckResult, AssetExecutionContext, Failure, MaterializeResult, Output, asset

from enrichment_pipeline.assets.common import GROUP, NETWORK_RETRY, report_days
from enrichment_pipeline.checks import NO_FAILED_GREYNOISE_LOOKUPS, greynoise_failures, report_checks
from enrichment_pipeline.core import freshness as clock
from enrichment_pipeline.core.frames import distinct_ips, for_days, greynoise_frame, split_days, status_counts
from enrichment_pipeline.core.greynoise import GreyNoiseAuthError, budgeted_lookup
from enrichment_pipeline.core.inventory import fresh_ips
from enrichment_pipeline.partitions import ingest_backfill_policy, ingest_days
from enrichment_pipeline.resources import (
    FreshnessResource,
    GreyNoiseResource,
    InventoryDatabase,
)

NO_KEY_NOTE = "GREYNOISE_API_KEY is not set: GreyNoise lookups skipped (rows marked 'disabled')"


@asset(
    partitions_def=ingest_days,
    backfill_policy=ingest_backfill_policy,
    group_name=GROUP,
    kinds={"pandas"},
    pool="greynoise",  # limits GreyNoise lookups across concurrent runs (backfills)
    retry_policy=NETWORK_RETRY,
    check_specs=[NO_FAILED_GREYNOISE_LOOKUPS],
)
def greynoise_results(
    context: AssetExecutionContext,
    cowrie_source_ips: pd.DataFrame,
    greynoise: GreyNoiseResource,
    inventory: InventoryDatabase,
    freshness: FreshnessResource,
) -> Iterator[MaterializeResult | AssetCheckResult | Output]:
    """GreyNoise community answers (noise, RIOT, classification) per IP: observed, not_observed, fresh, skipped,
    failed (kept for retry) or disabled."""
    result = _lookup(context, cowrie_source_ips, greynoise, inventory, freshness)
    answers = result.value
    yield result
    days = split_days(answers, context.partition_keys)
    check = {NO_FAILED_GREYNOISE_LOOKUPS.name: lambda day: greynoise_failures(days[day])}
    yield from report_checks(context, check)


def _lookup(
    context: AssetExecutionContext,
    cowrie_source_ips: pd.DataFrame,
    greynoise: GreyNoiseResource,
    inventory: InventoryDatabase,
    freshness: FreshnessResource,
) -> MaterializeResult:
    """The pass itself: the answers of the run's IPs, with their metadata."""
    started = time.perf_counter()
    ips = distinct_ips(cowrie_source_ips)["ip"].tolist()
    if not greynoise.enabled:
        context.log.info(NO_KEY_NOTE)
        return report_days(
            context,
            for_days(greynoise_frame(ips, None), cowrie_source_ips),
            _counts,
            requests_made=0,
            stopped_early="",
            not_reached=0,
            skipped_reason=NO_KEY_NOTE,
            seconds=round(time.perf_counter() - started, 3),
        )

    engine = inventory.engine()
    now = clock.utc_now()
    fresh = fresh_ips(engine, ips, "greynoise", freshness.policy().greynoise_ttl, now=now)
    budget = greynoise.daily_budget(engine)
    try:
        with greynoise.client() as client:
            result = budgeted_lookup(client, budget, [ip for ip in ips if ip not in fresh], day=now.date())
    except GreyNoiseAuthError as error:  # a bad key stays bad: retrying the step cannot help
        raise Failure(description=str(error), allow_retries=False) from error

    if result.failed:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in Counter(result.failed.values()).most_common())
        # One warning event: the stop, when there was one, is told in the same line.
        stop = f"; stopped early, {result.not_reached} IPs not asked" if result.stop_reason else ""
        context.log.warning(f"GreyNoise: {len(result.failed)} lookups failed, kept for retry ({reasons}){stop}")
    context.log.info(
        f"GreyNoise: {len(fresh)} fresh, {len(result.answers)} answered, {len(result.skipped)} skipped,"
        f" {len(result.failed)} failed with {result.requests_made} requests"
    )
    return report_days(
        context,
        for_days(greynoise_frame(ips, result, fresh=fresh), cowrie_source_ips),
        _counts,
        requests_made=result.requests_made,
        stopped_early=result.stop_reason or "",  # "" when every IP was asked
        not_reached=result.not_reached,
        daily_limit=budget.daily_limit,
        budget_left=budget.left(now.date()),
        seconds=round(time.perf_counter() - started, 3),
    )


def _counts(_day: str, rows: pd.DataFrame) -> dict[str, int]:
    return status_counts(rows)
