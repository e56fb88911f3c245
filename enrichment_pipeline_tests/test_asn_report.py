"""The daily report's ASN news: the ASNs first seen that day and the day's IPs that changed ASN, from a real
inventory (SQLite and PostgreSQL), and in the `daily_report` asset's metadata for each day of a range run."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, materialize
from sqlalchemy import Engine

from enrichment_pipeline.assets.report import daily_report
from enrichment_pipeline.core.inventory import (
    DayActivity,
    SourceUpdate,
    asn_changes_since,
    asns_first_seen_on,
    create_schema,
    fetch_inventory,
    ips_seen_on,
    make_engine,
    upsert_day,
)
from enrichment_pipeline.core.inventory.analyst import day_start
from enrichment_pipeline.core.report import build_daily_report
from enrichment_pipeline.resources import InventoryDatabase

DAY1, DAY2 = date(2018, 5, 6), date(2018, 5, 7)
RUN1, RUN2 = datetime(2018, 5, 7, 0, 10, tzinfo=UTC), datetime(2018, 5, 8, 0, 10, tzinfo=UTC)  # each the next night
A, B, C, D = "198.51.100.1", "198.51.100.2", "203.0.113.3", "2001:db8::4"


def seen(ip: str, day: date) -> DayActivity:
    moment = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    return DayActivity(ip, 1, 2, moment, moment)


def asn(ip: str, number: int, org: str) -> SourceUpdate:
    return SourceUpdate(ip, maxmind={"asn": number, "asn_org": org, "country_code": "DE"})


def two_days(engine: Engine) -> None:
    """DAY1: A, B on AS64500. DAY2: B moved to AS64501, C on AS64502 (new), D on AS64500."""
    upsert_day(engine, DAY1, [seen(A, DAY1), seen(B, DAY1)], [asn(A, 64500, "OLD"), asn(B, 64500, "OLD")], now=RUN1)
    upsert_day(
        engine,
        DAY2,
        [seen(B, DAY2), seen(C, DAY2), seen(D, DAY2)],
        [asn(B, 64501, "MOVED"), asn(C, 64502, "BRAND | NEW"), asn(D, 64500, "OLD")],
        now=RUN2,
    )


def report_of(engine: Engine, day: date):
    ips = ips_seen_on(engine, day)
    return build_daily_report(
        day,
        fetch_inventory(engine, ips),
        new_asns=asns_first_seen_on(engine, day),
        asn_changes=asn_changes_since(engine, ips, day_start(day)),
    )


def test_new_asns_and_asn_changes_of_each_day(engine: Engine) -> None:
    two_days(engine)

    second = report_of(engine, DAY2)
    assert second.new_asns.to_dict("records") == [{"asn": "AS64502", "as_org": "BRAND | NEW", "ips": 1}]
    assert second.asn_changes.to_dict("records") == [
        {"ip": B, "from_asn": "AS64500", "to_asn": "AS64501", "as_org": "MOVED"}
    ]
    assert second.headline.endswith("; 1 new ASNs, 1 ASN changes")

    first = report_of(engine, DAY1)
    # AS64501's only IP, B, was first seen on DAY1: the ASN counts as new then (its current IPs' first day).
    assert sorted(first.new_asns["asn"]) == ["AS64500", "AS64501"]
    # B changed ASN after DAY1 began (observed by the run of DAY2): the report of DAY1, re-run now, shows it.
    assert first.asn_changes["ip"].tolist() == [B]
    assert report_of(engine, date(2018, 5, 8)).asn_changes.empty  # no IP seen that day

    # B seen again later: its change was observed before that day began, so that day has none.
    day4 = date(2018, 5, 9)
    upsert_day(engine, day4, [seen(B, day4)], [], now=datetime(2018, 5, 10, 0, 10, tzinfo=UTC))
    fourth = report_of(engine, day4)
    assert fourth.ips == 1 and fourth.asn_changes.empty and fourth.new_asns.empty


def test_the_asset_reports_the_asn_news_of_each_day_of_a_range_run(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    engine = make_engine(db_url)
    create_schema(engine)
    two_days(engine)

    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [daily_report],
            instance=instance,
            resources={"inventory": InventoryDatabase(url=db_url)},
            tags={
                "dagster/asset_partition_range_start": "2018-05-06",
                "dagster/asset_partition_range_end": "2018-05-07",
            },
        )
        assert result.success
        metadata = {}
        for day in ("2018-05-06", "2018-05-07"):
            records = instance.fetch_materializations(AssetRecordsFilter(AssetKey("daily_report"), [day]), 1)
            metadata[day] = records.records[0].asset_materialization.metadata

    second = metadata["2018-05-07"]
    assert (second["new_asns"].value, second["asn_changes"].value) == (1, 1)
    assert "| AS64502 | BRAND \\| NEW | 1 |" in second["new_asns_table"].value
    assert f"| {B} | AS64500 | AS64501 | MOVED |" in second["asn_changes_table"].value
    assert (metadata["2018-05-06"]["new_asns"].value, metadata["2018-05-06"]["ips"].value) == (2, 2)
    engine.dispose()
