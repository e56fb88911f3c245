"""Pass 1: offline MaxMind City + ASN lookup of every source IP."""

import time

import pandas as pd
from dagster import AssetExecutionContext, Failure, MaterializeResult, asset

from enrichment_pipeline.assets.common import GROUP, frame_metadata
from enrichment_pipeline.core.frames import maxmind_frame
from enrichment_pipeline.core.freshness import MaxMindBuilds
from enrichment_pipeline.core.maxmind import MaxMindError
from enrichment_pipeline.partitions import ingest_days
from enrichment_pipeline.resources import MaxMindResource


@asset(partitions_def=ingest_days, group_name=GROUP, kinds={"pandas"})
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
    frame = maxmind_frame(lookup.lookup_many(cowrie_source_ips["ip"]), MaxMindBuilds.of(lookup))
    with_asn = int(frame["asn"].notna().sum())
    return MaterializeResult(
        value=frame,
        metadata=frame_metadata(
            frame,
            ips=len(frame),
            found=int(frame["found"].sum()),
            unknown=int((~frame["found"]).sum()),
            with_asn=with_asn,
            without_asn=len(frame) - with_asn,
            city_db=lookup.city_info.path,
            city_db_build_epoch=lookup.city_info.build_epoch,
            asn_db=lookup.asn_info.path if lookup.asn_info else "none",
            **({"asn_db_build_epoch": lookup.asn_info.build_epoch} if lookup.asn_info else {}),
            seconds=round(time.perf_counter() - started, 3),
        ),
    )
