"""The daily-partitioned asset graph: ingest -> MaxMind -> Cymru -> inventory."""

from enrichment_pipeline.assets.cymru import cymru_bulk_results, ips_needing_cymru
from enrichment_pipeline.assets.ingest import cowrie_source_ips
from enrichment_pipeline.assets.inventory import merged_inventory
from enrichment_pipeline.assets.maxmind import maxmind_results

enrichment_assets = [cowrie_source_ips, maxmind_results, ips_needing_cymru, cymru_bulk_results, merged_inventory]
