"""Passes 2 and 3: the IPs MaxMind left without an ASN and with no fresh Cymru answer, looked up through
Team Cymru bulk whois."""

import time

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, asset

from enrichment_pipeline.assets.common import GROUP, NETWORK_RETRY, frame_metadata
from enrichment_pipeline.core import freshness as clock
from enrichment_pipeline.core.cymru import BatchOutcome
from enrichment_pipeline.core.eligibility import needs_cymru_in_frame
from enrichment_pipeline.core.frames import CYMRU_FAILED, CYMRU_UNROUTED, cymru_frame
from enrichment_pipeline.core.inventory import fresh_ips
from enrichment_pipeline.partitions import ingest_days
from enrichment_pipeline.resources import (
    CymruResource,
    FreshnessResource,
    InventoryDatabase,
)


@asset(partitions_def=ingest_days, group_name=GROUP, kinds={"pandas"})
def ips_needing_cymru(
    context: AssetExecutionContext,
    maxmind_results: pd.DataFrame,
    inventory: InventoryDatabase,
    freshness: FreshnessResource,
) -> MaterializeResult:
    """The IPs pass 1 left without an ASN, minus those whose stored Cymru answer is still fresh.

    A failed lookup stored no answer, so it is not fresh: every run of a day containing it retries it.
    """
    without_asn = maxmind_results.loc[needs_cymru_in_frame(maxmind_results), "ip"]
    ttl = freshness.policy().cymru_ttl
    fresh = fresh_ips(inventory.engine(), without_asn, "cymru", ttl, now=clock.utc_now())
    frame = pd.DataFrame({"ip": without_asn[~without_asn.isin(fresh)]}).reset_index(drop=True)
    return MaterializeResult(
        value=frame,
        metadata=frame_metadata(
            frame,
            ips=len(frame),
            had_maxmind_asn=len(maxmind_results) - len(without_asn),
            skipped_fresh=len(fresh),
            cymru_ttl_days=freshness.cymru_ttl_days,
        ),
    )


@asset(
    partitions_def=ingest_days,
    group_name=GROUP,
    kinds={"pandas"},
    pool="cymru",  # limits Cymru lookups across concurrent runs (backfills)
    retry_policy=NETWORK_RETRY,
)
def cymru_bulk_results(
    context: AssetExecutionContext, ips_needing_cymru: pd.DataFrame, cymru: CymruResource
) -> MaterializeResult:
    """Team Cymru bulk whois answers: routed (ASN, prefix, registry...), unrouted (NA) or failed."""
    started = time.perf_counter()

    def report(batch: BatchOutcome) -> None:
        if batch.error:
            context.log.warning(f"Cymru batch {batch.number}/{batch.total} failed: {batch.error}")
        else:
            context.log.info(f"Cymru batch {batch.number}/{batch.total}: {len(batch.ips)} IPs, {batch.seconds:.1f} s")

    result = cymru.client().lookup(ips_needing_cymru["ip"].tolist(), on_batch=report)
    frame = cymru_frame(result)
    status = frame["status"]
    return MaterializeResult(
        value=frame,
        metadata=frame_metadata(
            frame,
            ips=len(frame),
            routed=int((status == "routed").sum()),
            unrouted=int((status == CYMRU_UNROUTED).sum()),
            failed=int((status == CYMRU_FAILED).sum()),
            multi_origin=sum(len(answer.origins) > 1 for answer in result.answers.values()),
            batches=len(result.batches),
            batches_ok=len(result.batches) - result.batches_failed,
            batches_failed=result.batches_failed,
            seconds=round(time.perf_counter() - started, 3),
        ),
    )
