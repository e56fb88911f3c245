"""The benchmarks' floor graph (bench/floor_graph_definitions.py) keeps `enrich_day`'s shape -- the same
steps, asset keys, deps, checks, pools and backfill policy -- and records, per day of a range, what the
project records: one materialization per asset and one evaluation per check. Otherwise the floor the year
benchmark compares against would be the floor of another graph."""

from __future__ import annotations

from collections import Counter

from dagster import DagsterEventType, DagsterInstance, Definitions

from bench.floor_graph_definitions import defs as floor_defs
from enrichment_pipeline.definitions import defs as project_defs


def _shape(defs: Definitions) -> dict[str, object]:
    job = defs.resolve_job_def("enrich_day")
    graph = job.asset_layer.asset_graph
    keys = sorted(job.asset_layer.executable_asset_keys)
    nodes = {key.to_user_string(): graph.get(key) for key in keys}
    return {
        "steps": sorted(node.name for node in job.graph.node_defs),
        "deps": {name: sorted(parent.to_user_string() for parent in node.parent_keys) for name, node in nodes.items()},
        "checks": sorted((check.asset_key.to_user_string(), check.name) for check in graph.asset_check_keys),
        "blocking": sorted(check.name for check in graph.asset_check_keys if graph.get(check).blocking),
        "pools": {node.name: node.pools for node in job.graph.node_defs if node.pools},
        "backfill_policy": {name: node.backfill_policy for name, node in nodes.items()},
        "partitions": {name: node.partitions_def.get_partition_keys()[:3] for name, node in nodes.items()},
    }


def test_floor_graph_has_the_shape_of_enrich_day() -> None:
    assert _shape(floor_defs) == _shape(project_defs)


def test_floor_range_run_records_every_day_of_every_asset_and_check(tmp_path) -> None:
    days = ["2018-05-01", "2018-05-02", "2018-05-03"]
    tags = {"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]}
    with DagsterInstance.ephemeral(tempdir=str(tmp_path)) as instance:
        result = floor_defs.resolve_job_def("enrich_day").execute_in_process(instance=instance, tags=tags)
        assert result.success
        events = [record.dagster_event for record in instance.all_logs(result.run_id) if record.dagster_event]
    materialized = Counter(
        (event.asset_key.to_user_string(), event.partition)
        for event in events
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION
    )
    evaluated = Counter(
        (event.asset_check_evaluation_data.check_name, event.asset_check_evaluation_data.partition)
        for event in events
        if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
    )
    job = floor_defs.resolve_job_def("enrich_day")
    assets = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    checks = {check.name for check in floor_defs.resolve_asset_graph().asset_check_keys}
    assert materialized == Counter({(asset, day): 1 for asset in assets for day in days})
    assert evaluated == Counter({(check, day): 1 for check in checks for day in days})
