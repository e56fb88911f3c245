"""Pass 1: offline MaxMind City + ASN lookup of every source IP of the run (each distinct IP once)."""

import time

import pandas as pd
from dagster import AssetExecutionContext, Failure, MaterializeResult, asset

from enrichment_pipeline.assets.common import GROUP, TRANSIENT_RETRY, report_days
from enrichment_pipeline.core.frames import distinct_ips, for_days, maxmind_frame
from enrichment_pipeline.core.freshness import MaxMindBuilds
from enrichment_pipeline.core.maxmind import MaxMindError
from enrichment_pipeline.partitions import ingest_backfill_policy, ingest_days
from enrichment_pipeline.resources import MaxMindResource


@asset(
    partitions_def=ingest_days,
    backfill_policy=ingest_backfill_policy,
    group_name=GROUP,
    kinds={"pandas"},
    retry_policy=TRANSIENT_RETRY,
)
def maxmind_results(
    context: AssetExecutionContext, cowrie_source_ips: pd.DataFrame, maxmind: MaxMindResource
) -> MaterializeResult:
    """Country, city, location and (with an ASN database) ASN per IP; unknown IPs are a normal outcome."""
    started = time.perf_counter()
    try:
        lookup = maxmind.lookup()
    except MaxMindError as error:  # bad configuration: retrying cannot help
        raise Failure(description=str(error), allow_retries=False) from error
    if lookup.asn_warning:
        context.log.warning(lookup.asn_warning)
    answers = maxmind_frame(lookup.lookup_many(distinct_ips(cowrie_source_ips)["ip"]), MaxMindBuilds.of(lookup))
    databases = {
        "city_db": lookup.city_info.path,
        "city_db_build_epoch": lookup.city_info.build_epoch,
        "asn_db": lookup.asn_info.path if lookup.asn_info else "none",
        **({"asn_db_build_epoch": lookup.asn_info.build_epoch} if lookup.asn_info else {}),
    }
    return report_days(
        context,
        for_days(answers, cowrie_source_ips),
        _counts,
        **databases,
        distinct_ips=len(answers),
        seconds=round(time.perf_counter() - started, 3),
    )


def _counts(_day: str, rows: pd.DataFrame) -> dict[str, int]:
    with_asn = int(rows["asn"].notna().sum())
    return {
        "ips": len(rows),
        "found": int(rows["found"].sum()),
        "unknown": int((~rows["found"]).sum()),
        "with_asn": with_asn,
        "without_asn": len(rows) - with_asn,
    }
