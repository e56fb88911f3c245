"""The daily-partitioned asset graph: ingest -> MaxMind -> Cymru (+ GreyNoise) -> inventory -> daily report."""

from enrichment_pipeline.assets.cymru import cymru_bulk_results, ips_needing_cymru
from enrichment_pipeline.assets.greynoise import greynoise_results
from enrichment_pipeline.assets.ingest import cowrie_logs_ingest
from enrichment_pipeline.assets.inventory import merged_inventory
from enrichment_pipeline.assets.maxmind import maxmind_results
from enrichment_pipeline.assets.report import daily_report

enrichment_assets = [
    cowrie_logs_ingest,
    maxmind_results,
    ips_needing_cymru,
    cymru_bulk_results,
    greynoise_results,
    merged_inventory,
    daily_report,
]
