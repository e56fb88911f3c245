"""The daily report: one ingest day's source IPs counted by ASN, country and GreyNoise classification, with
the ASNs new that day and the day's IPs that changed ASN. Pure aggregation of inventory rows (as
`inventory.fetch_inventory` returns them, with `inventory.asns_first_seen_on` and
`inventory.asn_changes_since`) into small ranked tables. Like the rest of the report, both describe the
inventory as it is now: an ASN is new on the day its current IPs were first seen, and a change counts for a
day when one of its IPs changed ASN on or after that day."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import pandas as pd

from enrichment_pipeline.core.frames import typed_frame

UNKNOWN = "unknown"
NOT_OBSERVED = "not observed"
NOT_LOOKED_UP = "not looked up"
TOP = 10

# The inventory columns a report reads (`inventory.fetch_inventory(..., columns=REPORT_INVENTORY_COLUMNS)`):
# the timestamps and the rest are not converted for the thousands of rows of a day.
REPORT_INVENTORY_COLUMNS = (
    "ip_address",
    "current_asn",
    "asn_org",
    "country_code",
    "greynoise_noise",
    "greynoise_riot",
    "greynoise_classification",
    "enrichment",
)
ASN_COLUMNS = {"asn": "string", "as_org": "string", "ips": "int64", "share_pct": "float64"}
COUNTRY_COLUMNS = {"country": "string", "ips": "int64", "share_pct": "float64"}
GREYNOISE_COLUMNS = {"classification": "string", "ips": "int64", "share_pct": "float64"}
NEW_ASN_COLUMNS = {"asn": "string", "as_org": "string", "ips": "int64"}  # ips: all its IPs, not only the day's
ASN_CHANGE_COLUMNS = {"ip": "string", "from_asn": "string", "to_asn": "string", "as_org": "string"}


@dataclass(frozen=True)
class DailyReport:
    day: date
    ips: int
    with_asn: int
    countries: int  # distinct known countries
    greynoise_noise: int  # IPs GreyNoise saw mass-scanning the internet
    greynoise_riot: int  # IPs of known benign services (RIOT)
    top_asns: pd.DataFrame  # ASN_COLUMNS, the `top` biggest, then one "other" row
    top_countries: pd.DataFrame  # COUNTRY_COLUMNS
    greynoise: pd.DataFrame  # GREYNOISE_COLUMNS, every bucket
    new_asns: pd.DataFrame  # NEW_ASN_COLUMNS, every ASN first seen that day, most IPs first
    asn_changes: pd.DataFrame  # ASN_CHANGE_COLUMNS, every IP of the day that changed ASN since, by IP

    @property
    def headline(self) -> str:
        return (
            f"{self.day.isoformat()}: {self.ips} source IPs, {self.with_asn} with an ASN, {self.countries} countries;"
            f" GreyNoise: {self.greynoise_noise} internet scanners, {self.greynoise_riot} benign services (RIOT);"
            f" {len(self.new_asns)} new ASNs, {len(self.asn_changes)} ASN changes"
        )


def build_daily_report(
    day: date,
    rows: Sequence[Mapping[str, Any]],
    *,
    top: int = TOP,
    new_asns: Sequence[Mapping[str, Any]] = (),
    asn_changes: Sequence[Mapping[str, Any]] = (),
) -> DailyReport:
    """Count the day's inventory rows; ties rank by key so the report is the same on every run. `new_asns`:
    the `asn_inventory` rows first seen that day; `asn_changes`: the day's IPs whose ASN changed since."""
    asns = Counter(row["current_asn"] for row in rows)
    orgs = _org_per_asn(rows)
    countries = Counter(row["country_code"] or UNKNOWN for row in rows)
    greynoise = Counter(greynoise_bucket(row) for row in rows)
    total = len(rows)

    asn_rows = [
        {"asn": UNKNOWN if asn is None else f"AS{asn}", "as_org": orgs.get(asn), "ips": count}
        for asn, count in _ranked(asns)
    ]
    return DailyReport(
        day=day,
        ips=total,
        with_asn=total - asns.get(None, 0),
        countries=len(set(countries) - {UNKNOWN}),
        greynoise_noise=sum(row.get("greynoise_noise") is True for row in rows),
        greynoise_riot=sum(row.get("greynoise_riot") is True for row in rows),
        top_asns=_table(_top(asn_rows, top, "asn", "ASNs"), ASN_COLUMNS, total),
        top_countries=_table(
            _top([{"country": c, "ips": n} for c, n in _ranked(countries)], top, "country", "countries"),
            COUNTRY_COLUMNS,
            total,
        ),
        greynoise=_table([{"classification": c, "ips": n} for c, n in _ranked(greynoise)], GREYNOISE_COLUMNS, total),
        new_asns=typed_frame(
            [{"asn": f"AS{row['asn']}", "as_org": row["asn_org"], "ips": row["ip_count"]} for row in new_asns],
            NEW_ASN_COLUMNS,
        ),
        asn_changes=typed_frame(
            [
                {
                    "ip": row["ip"],
                    "from_asn": f"AS{row['previous_asn']}",
                    "to_asn": f"AS{row['asn']}",
                    "as_org": row["asn_org"],
                }
                for row in sorted(asn_changes, key=lambda row: row["ip"])
            ],
            ASN_CHANGE_COLUMNS,
        ),
    )


def greynoise_bucket(row: Mapping[str, Any]) -> str:
    """The row's GreyNoise classification, "not observed" (a 404 answer) or "not looked up" (no answer yet)."""
    answer = (row.get("enrichment") or {}).get("greynoise")
    if not isinstance(answer, Mapping):
        return NOT_LOOKED_UP
    if row.get("greynoise_classification"):
        return str(row["greynoise_classification"])
    return NOT_OBSERVED if answer.get("observed") is False else UNKNOWN


def _org_per_asn(rows: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """The most common organisation name stored for each ASN (names can differ between sources)."""
    names: dict[int, Counter[str]] = {}
    for row in rows:
        if row["current_asn"] is not None and row["asn_org"]:
            names.setdefault(row["current_asn"], Counter())[row["asn_org"]] += 1
    return {asn: min(counter.items(), key=lambda item: (-item[1], item[0]))[0] for asn, counter in names.items()}


def _ranked(counts: Counter[Any]) -> list[tuple[Any, int]]:
    # Most IPs first; ties by key, with None (unknown) last.
    return sorted(counts.items(), key=lambda item: (-item[1], item[0] is None, _sort_key(item[0])))


def _sort_key(key: Hashable) -> tuple[int, Any]:
    return (0, key) if isinstance(key, int) else (1, str(key))


def _top(rows: list[dict[str, Any]], top: int, label: str, plural: str) -> list[dict[str, Any]]:
    if len(rows) <= top:
        return rows
    rest = rows[top:]
    return [*rows[:top], {label: f"other ({len(rest)} {plural})", "ips": sum(row["ips"] for row in rest)}]


def _table(rows: list[dict[str, Any]], columns: dict[str, str], total: int) -> pd.DataFrame:
    for row in rows:
        row["share_pct"] = round(100.0 * row["ips"] / total, 1) if total else 0.0
    return typed_frame(rows, columns)


SENSOR_COLUMNS = {"sensor": "string", "ips": "int64", "sessions": "int64", "ips_only_here": "int64"}


def sensor_table(rows: Sequence[tuple[str, str, int]]) -> pd.DataFrame:
    """Per sensor of a day, from (sensor, ip, sessions) rows: its IPs, its sessions and the IPs no other
    sensor saw that day; ordered by IPs, ties by name."""
    sensors_of: dict[str, set[str]] = {}
    for sensor, ip, _ in rows:
        sensors_of.setdefault(ip, set()).add(sensor)
    totals: dict[str, list[int]] = {}
    for sensor, ip, sessions in rows:
        counts = totals.setdefault(sensor, [0, 0, 0])
        counts[0] += 1
        counts[1] += sessions
        counts[2] += len(sensors_of[ip]) == 1
    table = [
        {"sensor": sensor, "ips": ips, "sessions": sessions, "ips_only_here": only}
        for sensor, (ips, sessions, only) in sorted(totals.items(), key=lambda item: (-item[1][0], item[0]))
    ]
    return typed_frame(table, SENSOR_COLUMNS)
