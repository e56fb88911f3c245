"""The daily report: ranking and buckets on hand-made rows, on a real inventory (SQLite and PostgreSQL), and the
`daily_report` asset after real materializations of two sample days against the loopback Cymru stand-in."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from dagster import DagsterInstance

from enrichment_pipeline.core.greynoise import GreyNoiseAnswer
from enrichment_pipeline.core.inventory import (
    DayActivity,
    SourceUpdate,
    fetch_inventory,
    ips_seen_on,
    upsert_day,
)
from enrichment_pipeline.core.report import (
    NOT_LOOKED_UP,
    NOT_OBSERVED,
    UNKNOWN,
    build_daily_report,
    greynoise_bucket,
)
from enrichment_pipeline.resources import GreyNoiseResource, InventoryDatabase
from enrichment_pipeline.standins.cymru_server import CymruStandinServer
from enrichment_pipeline_tests.support.graph_run import run_day
from enrichment_pipeline_tests.support.greynoise_server import FakeGreyNoise

DAY = date(2018, 5, 7)
NOW = datetime(2018, 5, 8, tzinfo=UTC)


def row(
    ip: str,
    asn: int | None = None,
    org: str | None = None,
    country: str | None = None,
    greynoise: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An inventory row as fetch_inventory returns it (only the columns the report reads)."""
    return {
        "ip_address": ip,
        "current_asn": asn,
        "asn_org": org,
        "country_code": country,
        "enrichment": {} if greynoise is None else {"greynoise": greynoise},
        "greynoise_classification": (greynoise or {}).get("classification"),
        "greynoise_noise": (greynoise or {}).get("noise"),
        "greynoise_riot": (greynoise or {}).get("riot"),
    }


def answer(ip: str, classification: str | None, *, observed: bool = True, riot: bool = False) -> dict[str, Any]:
    return GreyNoiseAnswer(ip, observed, observed and not riot, riot, classification, None, None, None, None).as_dict()


def test_asns_countries_and_classifications_are_ranked_with_org_names_and_shares():
    rows = [
        row("1.0.0.1", 4134, "CHINANET", "CN", answer("1.0.0.1", "malicious")),
        row("1.0.0.2", 4134, "CHINANET-BACKBONE", "CN", answer("1.0.0.2", "malicious")),
        row("1.0.0.3", 4134, "CHINANET-BACKBONE", "CN", answer("1.0.0.3", None, observed=False)),
        row("1.0.0.4", 16509, "AMAZON-02", "US", answer("1.0.0.4", "benign", riot=True)),
        row("1.0.0.5", 14061, "DIGITALOCEAN", "US"),
        row("1.0.0.6", None, None, None),
        row("1.0.0.7", None, None, "BR", answer("1.0.0.7", "unknown")),
    ]
    report = build_daily_report(DAY, rows)

    assert report.top_asns.to_dict("records") == [
        {"asn": "AS4134", "as_org": "CHINANET-BACKBONE", "ips": 3, "share_pct": 42.9},  # the most common name
        {"asn": "unknown", "as_org": None, "ips": 2, "share_pct": 28.6},
        {"asn": "AS14061", "as_org": "DIGITALOCEAN", "ips": 1, "share_pct": 14.3},  # ties: lower ASN first
        {"asn": "AS16509", "as_org": "AMAZON-02", "ips": 1, "share_pct": 14.3},
    ]
    assert report.top_countries["country"].tolist() == ["CN", "US", "BR", UNKNOWN]
    assert report.top_countries["ips"].tolist() == [3, 2, 1, 1]
    assert dict(zip(report.greynoise["classification"], report.greynoise["ips"], strict=False)) == {
        "malicious": 2,
        NOT_LOOKED_UP: 2,
        "benign": 1,
        NOT_OBSERVED: 1,
        "unknown": 1,
    }
    assert (report.ips, report.with_asn, report.countries) == (7, 5, 3)
    assert (report.greynoise_noise, report.greynoise_riot) == (3, 1)
    assert "7 source IPs" in report.headline and "1 benign services" in report.headline


def test_beyond_the_top_the_rest_is_one_other_row_and_an_empty_day_is_an_empty_report():
    rows = [
        row(f"2.0.{asn}.{n}", asn, f"ORG{asn}", f"C{chr(65 + asn % 26)}") for asn in range(1, 16) for n in range(asn)
    ]
    report = build_daily_report(DAY, rows, top=3)
    assert report.top_asns["asn"].tolist() == ["AS15", "AS14", "AS13", "other (12 ASNs)"]
    assert report.top_asns["ips"].sum() == len(rows) == 120
    assert report.top_countries["country"].iloc[-1] == "other (12 countries)"

    empty = build_daily_report(DAY, [])
    assert empty.ips == 0 and empty.top_asns.empty and empty.greynoise.empty


def test_greynoise_buckets():
    assert greynoise_bucket(row("3.0.0.1")) == NOT_LOOKED_UP
    assert greynoise_bucket(row("3.0.0.1", greynoise=answer("3.0.0.1", None, observed=False))) == NOT_OBSERVED
    assert greynoise_bucket(row("3.0.0.1", greynoise=answer("3.0.0.1", "malicious"))) == "malicious"
    assert greynoise_bucket(row("3.0.0.1", greynoise=answer("3.0.0.1", None))) == UNKNOWN


def test_the_report_of_a_day_counts_only_that_days_ips_from_the_inventory(engine):
    def seen(ip: str) -> DayActivity:
        return DayActivity(ip, 1, 3, NOW, NOW)

    maxmind = {"asn": 64500, "asn_org": "EXAMPLE-AS | pipes", "country_code": "de"}
    upsert_day(
        engine,
        DAY,
        [seen("5.0.0.1"), seen("5.0.0.2")],
        [
            SourceUpdate("5.0.0.1", maxmind=maxmind, greynoise=answer("5.0.0.1", "malicious")),
            SourceUpdate("5.0.0.2", maxmind=maxmind),
        ],
        now=NOW,
    )
    upsert_day(
        engine,
        date(2018, 5, 8),
        [seen("5.0.0.2"), seen("6.0.0.1")],
        [
            SourceUpdate("6.0.0.1", maxmind={"asn": 64501, "asn_org": "OTHER", "country_code": "FR"}),
        ],
        now=NOW,
    )

    report = build_daily_report(DAY, fetch_inventory(engine, ips_seen_on(engine, DAY)))
    assert report.top_asns.to_dict("records") == [
        {"asn": "AS64500", "as_org": "EXAMPLE-AS | pipes", "ips": 2, "share_pct": 100.0}
    ]
    assert report.top_countries["country"].tolist() == ["DE"]
    assert dict(zip(report.greynoise["classification"], report.greynoise["ips"], strict=False)) == {
        "malicious": 1,
        NOT_LOOKED_UP: 1,
    }


def test_the_asset_reports_each_materialized_day_as_markdown_tables(tmp_path: Path, sample_log_dir: Path):
    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    metadata = {}
    fake_greynoise = FakeGreyNoise("gn-report-key")
    with CymruStandinServer() as cymru, fake_greynoise, DagsterInstance.ephemeral() as instance:
        greynoise = GreyNoiseResource(api_key="gn-report-key", api_url=fake_greynoise.url, rate_per_s=1000)
        for day in ("2018-05-06", "2018-05-07"):
            # No ASN database: every IP's ASN comes from the Cymru stand-in.
            materialized = run_day(day, sample_log_dir, db_url, cymru.address[1], "", instance, greynoise)
            metadata[day] = materialized["daily_report"]

    rows = fetch_inventory(InventoryDatabase(url=db_url).engine())
    assert len(rows) > metadata["2018-05-07"]["ips"].value  # the inventory holds both days; a report one
    for day, meta in metadata.items():
        ips = meta["ips"].value
        assert ips == len(ips_seen_on(InventoryDatabase(url=db_url).engine(), date.fromisoformat(day))) > 0
        asns = meta["top_asns"].value
        assert asns.startswith("| asn | as_org | ips | share_pct |") and "STANDIN-AS" in asns
        assert sum(int(n) for n in re.findall(r"\| (\d+) \| [\d.]+ \|$", asns, flags=re.M)) == ips
        # The loopback GreyNoise classifies every IP as malicious, benign or unknown (derived from the IP).
        classes = dict(re.findall(r"^\| ([a-z ]+) \| (\d+) \|", meta["greynoise_classifications"].value, flags=re.M))
        assert set(classes) <= {"malicious", "benign", "unknown"} and sum(map(int, classes.values())) == ips
        assert meta["summary"].value.startswith(f"{day}: {ips} source IPs")


def test_the_per_sensor_table_counts_ips_sessions_and_ips_only_that_sensor_saw():
    from enrichment_pipeline.core.report import sensor_table

    rows = [
        ("alpha", "198.51.100.1", 2),
        ("beta", "198.51.100.1", 1),
        ("beta", "198.51.100.2", 4),
        ("gamma", "2001:db8::1", 1),
    ]
    table = sensor_table(rows)
    assert table.to_dict("records") == [
        {"sensor": "beta", "ips": 2, "sessions": 5, "ips_only_here": 1},
        {"sensor": "alpha", "ips": 1, "sessions": 2, "ips_only_here": 0},
        {"sensor": "gamma", "ips": 1, "sessions": 1, "ips_only_here": 1},
    ]
    assert sensor_table([]).empty
