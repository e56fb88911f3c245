"""Batched backfill runs over a range of days, materialized in process with real resources: the same inventory
as one run per day, each distinct IP asked once per run, per-day metadata and check results, all-or-nothing
writes, and the per-day Parquet files."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from dagster import AssetCheckKey, AssetKey, AssetRecordsFilter, DagsterInstance, Failure, materialize
from sqlalchemy import select

from enrichment_pipeline.assets import enrichment_assets
from enrichment_pipeline.checks import inventory_coverage
from enrichment_pipeline.core.inventory import DAILY_ACTIVITY, fetch_failures, fetch_inventory, make_engine, upsert
from enrichment_pipeline_tests.support.cymru_standin import sent
from enrichment_pipeline_tests.support.expected_ips import distinct_valid_ips
from enrichment_pipeline_tests.support.graph_run import graph_resources

DAYS = ["2018-05-06", "2018-05-07", "2018-05-08"]
CHECKS = [inventory_coverage]  # the lookups' checks come with their assets
STAMPS = ("enrichment_updated_at", "maxmind_updated_at", "cymru_updated_at", "greynoise_updated_at")


def range_tags(first: str, last: str) -> dict[str, str]:
    # What the backfill daemon puts on a run of a BackfillPolicy.multi_run range.
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


def resources(log_dir: Path, db_url: str, cymru_port: int, storage: Path) -> dict:
    return graph_resources(log_dir, db_url, cymru_port, storage, batch_size=50)


def inventory_state(db_url: str) -> tuple[list, list, list]:
    engine = make_engine(db_url)
    rows = [{k: v for k, v in row.items() if k not in STAMPS} for row in fetch_inventory(engine)]
    with engine.connect() as conn:
        daily = sorted(tuple(row) for row in conn.execute(select(DAILY_ACTIVITY)))
    failures = [{k: v for k, v in row.items() if not k.endswith("_at")} for row in fetch_failures(engine)]
    return rows, daily, failures


def test_a_range_run_gives_the_inventory_of_one_run_per_day_asking_each_ip_once(
    tmp_path, sample_log_dir, standin, sqlite_or_postgres_url
):
    per_day_url = f"sqlite:///{tmp_path / 'per_day.sqlite'}"
    with DagsterInstance.ephemeral() as instance:
        for day in DAYS:
            graph = resources(sample_log_dir, per_day_url, standin.address[1], tmp_path / "per_day")
            assert materialize(enrichment_assets, partition_key=day, instance=instance, resources=graph).success
    asked_per_day = len(standin.requests)

    with DagsterInstance.ephemeral() as instance:
        graph = resources(sample_log_dir, sqlite_or_postgres_url, standin.address[1], tmp_path / "range")
        result = materialize(enrichment_assets, instance=instance, resources=graph, tags=range_tags(DAYS[0], DAYS[-1]))
    assert result.success

    assert inventory_state(sqlite_or_postgres_url) == inventory_state(per_day_url)
    every_day = set.union(*(distinct_valid_ips(sample_log_dir / f"cowrie.json.{day}") for day in DAYS))
    assert sent(standin, since=asked_per_day) == sorted(every_day)  # each distinct IP of the range asked once
    assert len(standin.requests) - asked_per_day == -(-len(every_day) // 50)  # in batches of 50


def test_each_day_of_a_range_run_has_its_own_metadata_and_check_results(tmp_path, sample_log_dir, standin, caplog):
    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    caplog.set_level(logging.WARNING, logger="dagster")
    with DagsterInstance.ephemeral() as instance:
        graph = resources(sample_log_dir, db_url, standin.address[1], tmp_path / "storage")
        result = materialize(
            [*enrichment_assets, *CHECKS], instance=instance, resources=graph, tags=range_tags(DAYS[0], DAYS[-1])
        )
        assert result.success
        for day in DAYS:
            ips = len(distinct_valid_ips(sample_log_dir / f"cowrie.json.{day}"))
            metadata = latest(instance, "cowrie_source_ips", day).metadata
            assert metadata["dagster/row_count"].value == ips and metadata["source_ips"].value == ips
            assert metadata["log_file"].value.endswith(f"cowrie.json.{day}")
            report = latest(instance, "daily_report", day).metadata
            assert report["ips"].value == ips and report["summary"].value.startswith(day)
            for check in ("every_ingested_ip_in_inventory", "asn_coverage", "no_failed_cymru_batches"):
                key = AssetCheckKey(AssetKey(check_asset(check)), check)
                (evaluation,) = [e for e in evaluations(result) if e.asset_check_key == key and e.partition == day]
                assert evaluation.passed or check == "asn_coverage"  # no ASN database: coverage may warn
            coverage = [
                e
                for e in evaluations(result)
                if e.check_name == "every_ingested_ip_in_inventory" and e.partition == day
            ]
            assert coverage[0].metadata["ingested_ips"].value == ips
            # The run's failed batches, as the step that asked Cymru counted them.
            (cymru,) = [
                e for e in evaluations(result) if e.check_name == "no_failed_cymru_batches" and e.partition == day
            ]
            assert cymru.metadata["batches_failed"].value == 0
    # Each check step owed its (empty) outputs: Dagster never believed a blocking check went unevaluated.
    assert not [record.message for record in caplog.records if "emitted no result" in record.message]


def latest(instance: DagsterInstance, asset: str, day: str):
    records = instance.fetch_materializations(AssetRecordsFilter(AssetKey(asset), asset_partitions=[day]), 1)
    return records.records[0].asset_materialization


def evaluations(result) -> list:
    return [
        event.event_specific_data for event in result.all_events if event.event_type_value == "ASSET_CHECK_EVALUATION"
    ]


def check_asset(check: str) -> str:
    return "cymru_bulk_results" if check == "no_failed_cymru_batches" else "merged_inventory"


def test_a_range_run_that_fails_in_the_merge_leaves_every_day_untouched_and_a_rerun_converges(
    tmp_path, sample_log_dir, standin, monkeypatch
):
    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    graph = resources(sample_log_dir, db_url, standin.address[1], tmp_path / "storage")
    with DagsterInstance.ephemeral() as instance:
        assert materialize(enrichment_assets, partition_key=DAYS[0], instance=instance, resources=graph).success
        before = inventory_state(db_url)
        write_changes = upsert._write_changes

        def write_then_fail(conn, rows, stored):
            write_changes(conn, rows, stored)
            # Not retried (the step's RetryPolicy would only repeat the same failure, 30 s later).
            raise Failure("the database went away mid-merge", allow_retries=False)

        monkeypatch.setattr(upsert, "_write_changes", write_then_fail)
        failed = materialize(
            enrichment_assets,
            instance=instance,
            resources=graph,
            tags=range_tags(DAYS[0], DAYS[-1]),
            raise_on_error=False,
            selection=["*merged_inventory"],
        )
        assert not failed.success
        assert inventory_state(db_url) == before

        monkeypatch.setattr(upsert, "_write_changes", write_changes)
        again = materialize(enrichment_assets, instance=instance, resources=graph, tags=range_tags(DAYS[0], DAYS[-1]))
        assert again.success

    per_day_url = f"sqlite:///{tmp_path / 'per_day.sqlite'}"
    with DagsterInstance.ephemeral() as instance:
        for day in DAYS:
            day_graph = resources(sample_log_dir, per_day_url, standin.address[1], tmp_path / "per_day")
            assert materialize(enrichment_assets, partition_key=day, instance=instance, resources=day_graph).success
    assert inventory_state(db_url) == inventory_state(per_day_url)


def test_the_parquet_file_of_each_day_reads_back_equal_to_that_days_rows_of_the_output(
    tmp_path, sample_log_dir, standin
):
    storage = tmp_path / "storage"
    graph = resources(sample_log_dir, f"sqlite:///{tmp_path / 'inventory.sqlite'}", standin.address[1], storage)
    with DagsterInstance.ephemeral() as instance:
        result = materialize(enrichment_assets, instance=instance, resources=graph, tags=range_tags(DAYS[0], DAYS[1]))
    assert result.success
    nodes = {"cowrie_source_ips": ("cowrie_logs_ingest", "cowrie_source_ips")}
    for asset in ("cowrie_source_ips", "maxmind_results", "ips_needing_cymru", "cymru_bulk_results"):
        output = result.output_for_node(*nodes.get(asset, (asset, "result")))
        assert sorted(output["day"].unique()) == DAYS[:2]
        for day in DAYS[:2]:
            stored = pd.read_parquet(storage / asset / f"{day}.parquet")  # what a notebook does
            pd.testing.assert_frame_equal(stored, output.loc[output["day"] == day].reset_index(drop=True))
    ips = result.output_for_node("cowrie_logs_ingest", "cowrie_source_ips")
    assert len(ips) == sum(len(distinct_valid_ips(sample_log_dir / f"cowrie.json.{day}")) for day in DAYS[:2])
