"""Real Dagster materializations of the whole graph on real sample days, against the loopback Cymru stand-in."""

from __future__ import annotations

from dagster import DagsterInstance, materialize

from enrichment_pipeline.assets import enrichment_assets
from enrichment_pipeline.core.inventory import fetch_inventory, make_engine
from enrichment_pipeline.resources import (
    CowrieLogDirectory,
    CymruResource,
    FreshnessResource,
    GreyNoiseResource,
    InventoryDatabase,
    MaxMindResource,
)
from enrichment_pipeline_tests.support.expected_ips import distinct_valid_ips
from enrichment_pipeline_tests.support.graph_run import ASN_DB_DAY, run_day

DAY = ASN_DB_DAY  # asn_db_covering_one_ip covers one of its IPs


def test_one_real_day_puts_every_valid_source_ip_in_the_inventory_and_nothing_else(
    sqlite_or_postgres_url, sample_log_dir, standin, asn_db_covering_one_ip
):
    asn_path, maxmind_covered = asn_db_covering_one_ip
    with DagsterInstance.ephemeral() as instance:
        metadata = run_day(DAY, sample_log_dir, sqlite_or_postgres_url, standin.address[1], asn_path, instance)

    expected = distinct_valid_ips(sample_log_dir / f"cowrie.json.{DAY}")
    rows = {row["ip_address"]: row for row in fetch_inventory(make_engine(sqlite_or_postgres_url))}
    assert set(rows) == expected

    # Only IPs without a MaxMind ASN went to Cymru, in batches of 10.
    sent = [ip for request in standin.requests for ip in request]
    assert sorted(sent) == sorted(expected - maxmind_covered)
    assert metadata["cymru_bulk_results"]["batches"].value == -(-len(sent) // 10)
    assert metadata["cymru_bulk_results"]["failed"].value == 0

    (covered,) = maxmind_covered
    assert rows[covered]["current_asn"] == 64496 and rows[covered]["asn_org"] == "TEST-NET-AS"
    assert "cymru" not in rows[covered]["enrichment"]
    for ip in expected - maxmind_covered:
        cymru = rows[ip]["enrichment"]["cymru"]
        assert rows[ip]["current_asn"] == cymru["asn"]  # Cymru fallback (None for an unrouted answer)
        assert rows[ip]["cymru_updated_at"] is not None
    assert all(row["session_count"] >= 0 and row["maxmind_updated_at"] for row in rows.values())
    assert metadata["merged_inventory"]["rows_inserted"].value == len(expected)


def test_rematerializing_a_day_leaves_the_inventory_identical(
    tmp_path, sample_log_dir, standin, asn_db_covering_one_ip
):
    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    volatile = ("enrichment_updated_at", "maxmind_updated_at", "cymru_updated_at")

    def snapshot():
        return sorted(
            ({k: v for k, v in row.items() if k not in volatile} for row in fetch_inventory(make_engine(db_url))),
            key=lambda row: row["ip_address"],
        )

    with DagsterInstance.ephemeral() as instance:
        run_day(DAY, sample_log_dir, db_url, standin.address[1], asn_db_covering_one_ip[0], instance)
        first = snapshot()
        second_meta = run_day(DAY, sample_log_dir, db_url, standin.address[1], asn_db_covering_one_ip[0], instance)
    assert snapshot() == first
    assert second_meta["merged_inventory"]["rows_inserted"].value == 0
    assert second_meta["merged_inventory"]["rows_updated"].value == len(first)


def test_a_missing_day_fails_with_the_file_and_the_env_var_named(tmp_path, standin):
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            enrichment_assets,
            partition_key="2018-05-02",
            instance=instance,
            raise_on_error=False,
            resources={
                "cowrie_logs": CowrieLogDirectory(log_dir=str(tmp_path)),
                "maxmind": MaxMindResource(),
                "freshness": FreshnessResource(),
                "cymru": CymruResource(host="127.0.0.1", port=standin.address[1]),
                "inventory": InventoryDatabase(url=f"sqlite:///{tmp_path / 'inventory.sqlite'}"),
                "greynoise": GreyNoiseResource(),
            },
        )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert "COWRIE_LOG_DIR" in failure.description and "cowrie.json.2018-05-02" in failure.description
    assert not (tmp_path / "inventory.sqlite").exists()  # nothing was written
