"""Passes 2 and 3: the IPs MaxMind left without an ASN and with no fresh Cymru answer, looked up through
Team Cymru bulk whois."""

import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
from dagster import AssetCheckResult, AssetExecutionContext, MaterializeResult, Output, asset

from enrichment_pipeline.assets.common import GROUP, NETWORK_RETRY, TRANSIENT_RETRY, report_days
from enrichment_pipeline.checks import NO_FAILED_CYMRU_BATCHES, cymru_failures, report_checks
from enrichment_pipeline.core import freshness as clock
from enrichment_pipeline.core.cymru import BatchOutcome
from enrichment_pipeline.core.day_files import DAY_COLUMN
from enrichment_pipeline.core.eligibility import needs_cymru_in_frame
from enrichment_pipeline.core.frames import (
    CYMRU_FAILED,
    CYMRU_ROUTED,
    CYMRU_UNROUTED,
    cymru_frame,
    distinct_ips,
    for_days,
    split_days,
)
from enrichment_pipeline.core.inventory import fresh_ips
from enrichment_pipeline.partitions import ingest_backfill_policy, ingest_days
from enrichment_pipeline.resources import (
    CymruResource,
    FreshnessResource,
    InventoryDatabase,
)


@asset(
    partitions_def=ingest_days,
    backfill_policy=ingest_backfill_policy,
    group_name=GROUP,
    kinds={"pandas"},
    retry_policy=TRANSIENT_RETRY,
)
def ips_needing_cymru(
    context: AssetExecutionContext,
    maxmind_results: pd.DataFrame,
    inventory: InventoryDatabase,
    freshness: FreshnessResource,
) -> MaterializeResult:
    """The IPs pass 1 left without an ASN, minus those whose stored Cymru answer is still fresh.

    A failed lookup stored no answer, so it is not fresh: every run of a day containing it retries it.
    """
    without_asn = maxmind_results.loc[needs_cymru_in_frame(maxmind_results), [DAY_COLUMN, "ip"]]
    ttl = freshness.policy().cymru_ttl
    fresh = fresh_ips(inventory.engine(), set(without_asn["ip"]), "cymru", ttl, now=clock.utc_now())
    needed = without_asn.loc[~without_asn["ip"].isin(fresh)].reset_index(drop=True)

    # Counted per day once for the whole range, not by filtering the frames again for each day.
    looked_up = maxmind_results[DAY_COLUMN].value_counts()
    without = without_asn[DAY_COLUMN].value_counts()
    skipped = without_asn.loc[without_asn["ip"].isin(fresh), DAY_COLUMN].value_counts()

    def counts(day: str, rows: pd.DataFrame) -> dict[str, Any]:
        return {
            "ips": len(rows),
            "had_maxmind_asn": int(looked_up.get(day, 0)) - int(without.get(day, 0)),
            "skipped_fresh": int(skipped.get(day, 0)),
            "cymru_ttl_days": freshness.cymru_ttl_days,
        }

    return report_days(context, needed, counts, distinct_ips=needed["ip"].nunique(), skipped_fresh=len(fresh))


@asset(
    partitions_def=ingest_days,
    backfill_policy=ingest_backfill_policy,
    group_name=GROUP,
    kinds={"pandas"},
    pool="cymru",  # limits Cymru lookups across concurrent runs (backfills)
    retry_policy=NETWORK_RETRY,
    check_specs=[NO_FAILED_CYMRU_BATCHES],
)
def cymru_bulk_results(
    context: AssetExecutionContext, ips_needing_cymru: pd.DataFrame, cymru: CymruResource
) -> Iterator[MaterializeResult | AssetCheckResult | Output]:
    """Team Cymru bulk whois answers: routed (ASN, prefix, registry...), unrouted (NA) or failed."""
    started = time.perf_counter()

    def report(batch: BatchOutcome) -> None:
        if batch.error:
            context.log.warning(f"Cymru batch {batch.number}/{batch.total} failed: {batch.error}")
        else:
            context.log.info(f"Cymru batch {batch.number}/{batch.total}: {len(batch.ips)} IPs, {batch.seconds:.1f} s")

    result = cymru.client().lookup(distinct_ips(ips_needing_cymru)["ip"].tolist(), on_batch=report)
    multi_origin = {ip for ip, answer in result.answers.items() if len(answer.origins) > 1}

    def counts(_day: str, rows: pd.DataFrame) -> dict[str, int]:
        status = rows["status"]
        return {
            "ips": len(rows),
            "routed": int((status == CYMRU_ROUTED).sum()),
            "unrouted": int((status == CYMRU_UNROUTED).sum()),
            "failed": int((status == CYMRU_FAILED).sum()),
            "multi_origin": int(rows["ip"].isin(multi_origin).sum()),
        }

    answers = for_days(cymru_frame(result), ips_needing_cymru)
    yield report_days(
        context,
        answers,
        counts,
        distinct_ips=len(result.answers) + len(result.failed),
        batches=len(result.batches),
        batches_ok=len(result.batches) - result.batches_failed,
        batches_failed=result.batches_failed,
        seconds=round(time.perf_counter() - started, 3),
    )
    # A failed batch of a range run is a failed batch of each of its days: each may miss an answer.
    days = split_days(answers, context.partition_keys)
    check = {NO_FAILED_CYMRU_BATCHES.name: lambda day: cymru_failures(result.batches_failed, days[day])}
    yield from report_checks(context, check)
