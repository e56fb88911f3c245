"""`asn_inventory` and `ip_asn_history` on real SQLite files and a real PostgreSQL server: after overlapping
days, re-runs, range upserts, concurrent writers and a stale refresh against the loopback Cymru stand-in, the
ASN inventory equals a full recomputation from the inventory (and a hand count / a pure-Python count), and
each IP's history has one row per ASN it moved to."""

from __future__ import annotations

import ipaddress
import random
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update

from enrichment_pipeline.core.cymru import CymruBulkClient, CymruOrigin
from enrichment_pipeline.core.freshness import FreshnessPolicy, MaxMindBuilds
from enrichment_pipeline.core.inventory import (
    ASN_INVENTORY,
    DAILY_ACTIVITY,
    DayActivity,
    SourceUpdate,
    UpsertStats,
    create_schema,
    fetch_inventory,
    make_engine,
    rebuild_asn_inventory,
    upsert_day,
    upsert_days,
    upsert_enrichment,
)
from enrichment_pipeline.core.reenrich import refresh
from enrichment_pipeline.standins.cymru_server import CymruStandinServer
from enrichment_pipeline_tests.support.asn_state import (
    asns_in_history,
    assert_asn_inventory_exact,
    history,
    stored_asn_rows,
)
from enrichment_pipeline_tests.support.refresh_inventory import ALL, T0, WITH_ASN, WITHOUT_ASN, seed

DAY1, DAY2, DAY3 = date(2018, 5, 6), date(2018, 5, 7), date(2018, 5, 8)
NOW = datetime(2018, 5, 9, 3, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=1)
A, B, C, D, E = "198.51.100.1", "198.51.100.2", "2001:db8::c", "203.0.113.4", "203.0.113.5"


def at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def seen(ip: str, day: date, sessions: int, events: int, first_hour: int, last_hour: int) -> DayActivity:
    return DayActivity(ip, sessions, events, at(day, first_hour), at(day, last_hour))


def maxmind(asn: int, org: str | None, country: str = "DE") -> dict[str, Any]:
    return {"asn": asn, "asn_org": org, "country_code": country}


def cymru(asn: int, name: str, registry: str = "ripencc", country: str = "NL") -> dict[str, Any]:
    origin = {"asn": asn, "prefix": "203.0.113.0/24", "country_code": country, "registry": registry}
    return {
        "status": "routed",
        "asn": asn,
        "as_name": name,
        "country_code": country,
        "registry": registry,
        "origins": [{**origin, "allocated": None, "as_name": name}],
    }


def python_asn_rows(engine: Engine) -> dict[int, dict[str, Any]]:
    """The ASN rows counted in Python from `fetch_inventory` and the daily rows: an oracle independent of the
    SQL of `recompute_asn_rows`, following the rule documented in `core/inventory/asns.py`."""
    with engine.connect() as conn:
        daily = conn.execute(select(DAILY_ACTIVITY)).mappings().all()
    per_ip: dict[str, list[Any]] = {}
    for row in daily:
        per_ip.setdefault(row["ip_address"], []).append(row)
    rows: dict[int, dict[str, Any]] = {}
    labels: dict[int, list[Counter[str]]] = {}
    for ip_row in fetch_inventory(engine):
        asn = ip_row["current_asn"]
        if asn is None:
            continue
        days = per_ip.get(ip_row["ip_address"], [])
        row = rows.setdefault(
            asn, {"asn": asn, "ip_count": 0, "session_count": 0, "event_count": 0, "first": [], "last": []}
        )
        row["ip_count"] += 1
        row["session_count"] += sum(day["session_count"] for day in days)
        row["event_count"] += sum(day["event_count"] for day in days)
        row["first"] += [day["first_seen"] for day in days if day["first_seen"]]
        row["last"] += [day["last_seen"] for day in days if day["last_seen"]]
        answer = ip_row["enrichment"].get("cymru") or {}
        registry = answer.get("registry") if answer.get("status") == "routed" and answer.get("asn") == asn else None
        counters = labels.setdefault(asn, [Counter(), Counter(), Counter()])
        for counter, value in zip(counters, (ip_row["asn_org"], ip_row["country_code"], registry), strict=True):
            if value:
                counter[value] += 1
    for asn, row in rows.items():
        first, last = row.pop("first"), row.pop("last")
        row["first_seen"], row["last_seen"] = min(first, default=None), max(last, default=None)
        orgs, countries, registries = labels[asn]
        for name, counter in (("asn_org", orgs), ("country_code", countries), ("registry", registries)):
            row[name] = sorted(counter.items(), key=lambda item: (-item[1], item[0]))[0][0] if counter else None
    return rows


def assert_exact(engine: Engine) -> dict[int, dict[str, Any]]:
    stored = assert_asn_inventory_exact(engine)
    assert stored == python_asn_rows(engine)
    return stored


def test_two_overlapping_days_give_the_hand_counted_asn_rows(engine: Engine) -> None:
    upsert_day(
        engine,
        DAY1,
        [seen(A, DAY1, 3, 30, 8, 10), seen(B, DAY1, 1, 4, 9, 9), seen(C, DAY1, 2, 7, 1, 2)],
        [
            SourceUpdate(A, maxmind=maxmind(64500, "EXAMPLE-B")),
            SourceUpdate(B, maxmind=maxmind(64500, "EXAMPLE-A", "FR")),
            SourceUpdate(C, maxmind=maxmind(None, None, "NL"), cymru=cymru(23028, "CYMRU, NL")),  # type: ignore[arg-type]
        ],
        now=NOW,
    )
    upsert_day(
        engine,
        DAY2,
        [seen(B, DAY2, 5, 50, 0, 23), seen(D, DAY2, 1, 1, 12, 12)],
        [SourceUpdate(D, maxmind=maxmind(64500, "EXAMPLE-A"))],
        now=NOW,
    )

    rows = assert_exact(engine)
    assert rows == {
        64500: {
            "asn": 64500,
            "asn_org": "EXAMPLE-A",  # B and D say EXAMPLE-A, A says EXAMPLE-B: the most common
            "country_code": "DE",  # DE twice (A, D), FR once (B)
            "registry": None,  # no Cymru answer names AS64500
            "first_seen": at(DAY1, 8),
            "last_seen": at(DAY2, 23),
            "ip_count": 3,
            "session_count": 3 + 1 + 5 + 1,
            "event_count": 30 + 4 + 50 + 1,
        },
        23028: {
            "asn": 23028,
            "asn_org": "CYMRU, NL",
            "country_code": "NL",
            "registry": "ripencc",
            "first_seen": at(DAY1, 1),
            "last_seen": at(DAY1, 2),
            "ip_count": 1,
            "session_count": 2,
            "event_count": 7,
        },
    }
    assert asns_in_history(engine) == {A: [64500], B: [64500], C: [23028], D: [64500]}
    assert history(engine)[C][0]["source"] == "cymru" and history(engine)[A][0]["source"] == "maxmind"


def test_a_tie_between_names_goes_to_the_smaller_text(engine: Engine) -> None:
    upsert_day(
        engine,
        DAY1,
        [seen(ip, DAY1, 1, 1, 1, 1) for ip in (A, B, D, E)],
        [
            SourceUpdate(A, maxmind=maxmind(64500, "b-org", "US")),
            SourceUpdate(B, maxmind=maxmind(64500, "B-org", "NL")),
            SourceUpdate(D, maxmind=maxmind(64500, "b-org", "NL")),
            SourceUpdate(E, maxmind=maxmind(64500, "B-org", "US")),
        ],
        now=NOW,
    )
    row = assert_exact(engine)[64500]
    assert (row["asn_org"], row["country_code"]) == ("B-org", "NL")  # code point order: "B" < "b", "NL" < "US"


def test_rerunning_a_day_replaces_its_contribution_and_an_identical_rerun_writes_no_asn_row(engine: Engine) -> None:
    updates = [SourceUpdate(ip, maxmind=maxmind(64500 + n % 2, f"ORG{n % 2}")) for n, ip in enumerate((A, B, D))]
    upsert_day(engine, DAY1, [seen(A, DAY1, 3, 30, 8, 10), seen(B, DAY1, 1, 4, 9, 9)], updates, now=NOW)
    upsert_day(engine, DAY2, [seen(A, DAY2, 2, 20, 1, 5), seen(D, DAY2, 1, 1, 1, 1)], [], now=NOW)
    first = assert_exact(engine)

    # The same day again, nothing new: no ASN row is rewritten, so their updated_at stays.
    with engine.connect() as conn:
        stamps = dict(conn.execute(select(ASN_INVENTORY.c.asn, ASN_INVENTORY.c.updated_at)).all())
    stats = upsert_day(engine, DAY1, [seen(A, DAY1, 3, 30, 8, 10), seen(B, DAY1, 1, 4, 9, 9)], [], now=LATER)
    assert stats.asn_rows_written == 0 and assert_exact(engine) == first
    with engine.connect() as conn:
        assert dict(conn.execute(select(ASN_INVENTORY.c.asn, ASN_INVENTORY.c.updated_at)).all()) == stamps

    # Re-run with other counts: only A's events changed, and B (alone in AS64501) dropped out of the day.
    stats = upsert_day(engine, DAY1, [seen(A, DAY1, 3, 33, 8, 10)], [], now=LATER)
    rows = assert_exact(engine)
    assert (rows[64500]["event_count"], rows[64500]["session_count"]) == (33 + 20 + 1, 3 + 2 + 1)  # A and D
    assert rows[64501] == {
        "asn": 64501,
        "asn_org": "ORG1",
        "country_code": "DE",
        "registry": None,
        "first_seen": None,  # B is still in the inventory, without activity
        "last_seen": None,
        "ip_count": 1,
        "session_count": 0,
        "event_count": 0,
    }
    assert stats.asn_rows_written == 2


def test_a_range_upsert_equals_the_days_one_by_one_in_any_order(engine: Engine, tmp_path: Path) -> None:
    rng = random.Random(14)
    ips = [f"192.0.2.{n}" for n in range(1, 60)] + [f"2001:db8::{n:x}" for n in range(1, 20)]
    days = [DAY1, DAY2, DAY3]
    activity = {
        day: [seen(ip, day, rng.randint(1, 5), rng.randint(1, 50), 1, rng.randint(1, 23)) for ip in rng.sample(ips, 40)]
        for day in days
    }
    # Day-independent answers, as a range run has them: one per IP.
    updates = [SourceUpdate(ip, maxmind=maxmind(64500 + rng.randint(0, 5), f"ORG-{rng.randint(0, 2)}")) for ip in ips]
    upsert_days(engine, activity, updates, now=NOW)

    reference = make_engine(f"sqlite:///{tmp_path / 'one-by-one.sqlite'}")
    create_schema(reference)
    for day in reversed(days):  # a backfill in another order
        upsert_day(reference, day, activity[day], updates, now=NOW)

    assert assert_exact(engine) == assert_exact(reference)
    reference.dispose()


def test_an_asn_change_moves_the_ip_and_an_emptied_asn_loses_its_row(engine: Engine) -> None:
    upsert_day(engine, DAY1, [seen(A, DAY1, 2, 2, 1, 2)], [SourceUpdate(A, maxmind=maxmind(64500, "OLD"))], now=NOW)
    upsert_day(engine, DAY3, [seen(B, DAY3, 1, 1, 1, 1)], [], now=NOW)  # B: no ASN at all

    stats = upsert_day(
        engine, DAY2, [seen(A, DAY2, 1, 1, 3, 3)], [SourceUpdate(A, maxmind=maxmind(64501, "NEW"))], now=LATER
    )

    assert stats.asn_changes == 1
    rows = assert_exact(engine)
    assert set(rows) == {64501} and rows[64501]["ip_count"] == 1 and rows[64501]["session_count"] == 3
    (first, second) = history(engine)[A]
    assert (first["asn"], first["first_observed_at"], first["last_observed_at"]) == (64500, NOW, NOW)
    assert (second["seq"], second["asn"], second["asn_org"], second["first_observed_at"]) == (2, 64501, "NEW", LATER)
    assert B not in history(engine)


def test_a_repeated_answer_extends_the_latest_row_and_no_asn_starts_none(engine: Engine) -> None:
    upsert_day(engine, DAY1, [seen(A, DAY1, 1, 1, 1, 1)], [SourceUpdate(A, maxmind=maxmind(64500, "X"))], now=NOW)
    upsert_enrichment(engine, [SourceUpdate(A, maxmind=maxmind(64500, "X"))], now=LATER)
    upsert_enrichment(engine, [], now=LATER + timedelta(days=1))  # nothing asked: nothing observed
    assert history(engine)[A] == [
        {
            "seq": 1,
            "asn": 64500,
            "asn_org": "X",
            "source": "maxmind",
            "first_observed_at": NOW,
            "last_observed_at": LATER,
        }
    ]

    unrouted = {"status": "unrouted", "asn": None, "as_name": None, "country_code": "", "origins": []}
    later = LATER + timedelta(days=2)
    upsert_enrichment(engine, [SourceUpdate(A, maxmind=maxmind(None, None), cymru=unrouted)], now=later)  # type: ignore[arg-type]
    assert asns_in_history(engine) == {A: [64500]}  # an answer naming no ASN is no observation
    assert stored_asn_rows(engine) == {} == python_asn_rows(engine)  # ...but the IP left AS64500

    back = later + timedelta(hours=1)
    upsert_enrichment(engine, [SourceUpdate(A, maxmind=maxmind(64500, "X"))], now=back)
    assert history(engine)[A][-1]["last_observed_at"] == back and len(history(engine)[A]) == 1
    assert_exact(engine)


def test_a_multi_origin_answer_records_the_asn_the_merge_chose(engine: Engine) -> None:
    def moas(first: int, second: int) -> dict[str, Any]:
        answer = cymru(min(first, second), f"AS{min(first, second)}-NAME")
        answer["origins"] = [
            {**answer["origins"][0], "asn": asn, "as_name": f"AS{asn}-NAME"} for asn in (first, second)
        ]
        return answer

    upsert_day(engine, DAY1, [seen(D, DAY1, 1, 1, 1, 1)], [SourceUpdate(D, cymru=moas(64510, 64505))], now=NOW)
    upsert_enrichment(engine, [SourceUpdate(D, cymru=moas(64505, 64510))], now=LATER)  # same origins, other order

    assert fetch_inventory(engine, [D])[0]["current_asn"] == 64505
    assert asns_in_history(engine) == {D: [64505]}
    assert history(engine)[D][0]["last_observed_at"] == LATER
    assert assert_exact(engine)[64505]["registry"] == "ripencc"


def run_concurrently(jobs: list[Callable[[], UpsertStats]]) -> list[UpsertStats]:
    start = threading.Barrier(len(jobs), timeout=30)

    def after_barrier(job: Callable[[], UpsertStats]) -> UpsertStats:
        start.wait()
        return job()

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(after_barrier, job) for job in jobs]
        return [future.result(timeout=180) for future in futures]


def test_concurrent_upserts_keep_the_asn_inventory_exact(engine: Engine) -> None:
    writers = 4 if engine.dialect.name == "postgresql" else 2
    shared = [f"192.0.2.{n}" for n in range(1, 201)]
    days = [DAY1 + timedelta(days=k) for k in range(writers)]

    def day_job(k: int) -> Callable[[], UpsertStats]:
        own = [f"203.0.113.{k * 50 + n}" for n in range(50)]
        activity = [seen(ip, days[k], k + 1, 10 * k + n % 7, k, k + 1) for n, ip in enumerate(shared + own)]
        # Each writer gives the shared IPs another ASN: who writes last decides their current ASN.
        updates = [SourceUpdate(ip, maxmind=maxmind(64600 + k + n % 3, f"W{k}")) for n, ip in enumerate(shared)]
        updates += [SourceUpdate(ip, cymru=cymru(64700 + n % 5, f"OWN{n % 5}")) for n, ip in enumerate(own)]

        def job() -> UpsertStats:
            upsert_day(engine, days[k], activity, updates, now=NOW + timedelta(minutes=k))
            return upsert_day(engine, days[k], activity, updates, now=LATER + timedelta(minutes=k))  # re-run

        return job

    run_concurrently([day_job(k) for k in range(writers)])

    rows = assert_exact(engine)
    assert sum(row["ip_count"] for row in rows.values()) == len(shared) + 50 * writers
    assert sum(row["session_count"] for row in rows.values()) == sum(
        (k + 1) * (len(shared) + 50) for k in range(writers)
    )
    for ip, entries in history(engine).items():
        assert [entry["seq"] for entry in entries] == list(range(1, len(entries) + 1)), ip
        assert all(a["asn"] != b["asn"] for a, b in zip(entries, entries[1:], strict=False)), ip
        assert entries[-1]["asn"] == fetch_inventory(engine, [ip])[0]["current_asn"], ip


def test_the_refresh_moves_the_ips_cymru_now_answers_differently_and_only_those(engine: Engine, geoip) -> None:
    seed(engine, geoip, T0)  # WITHOUT_ASN: Cymru said AS1 "OLD"; WITH_ASN: MaxMind says AS64496
    before = assert_exact(engine)
    assert before[1]["ip_count"] == len(WITHOUT_ASN) and before[64496]["ip_count"] == len(WITH_ASN)
    moved, kept = WITHOUT_ASN[0], WITHOUT_ASN[1:]

    def origin(ip: str, asn: int, name: str) -> CymruOrigin:
        prefix = ipaddress.ip_network(f"{ip}/{24 if ':' not in ip else 48}", strict=False).compressed
        return CymruOrigin(asn, prefix, "ZZ", "lacnic", "2001-01-01", name)

    answers = {moved: [origin(moved, 64999, "MOVED-TO, ZZ")], **{ip: [origin(ip, 1, "OLD")] for ip in kept}}
    now = T0 + timedelta(days=31)  # everything has expired
    with CymruStandinServer(answers=answers) as server:
        report = refresh(
            engine,
            ALL,
            maxmind=geoip,
            cymru=CymruBulkClient("127.0.0.1", server.address[1], timeout_s=5, batch_size=100),
            greynoise=None,
            policy=FreshnessPolicy.from_days(7, 30, 7, MaxMindBuilds.of(geoip)),
            chunk_size=2,  # several transactions
            clock=lambda: now,
        )
    assert report.counts()["cymru_asked"] == len(WITHOUT_ASN)

    rows = assert_exact(engine)
    assert rows[64999]["ip_count"] == 1 and rows[64999]["registry"] == "lacnic"
    assert rows[1]["ip_count"] == len(kept) and rows[1]["registry"] == "lacnic"
    assert rows[64496]["ip_count"] == len(WITH_ASN)
    entries = history(engine)
    assert [entry["asn"] for entry in entries[moved]] == [1, 64999]
    assert entries[moved][1]["first_observed_at"] == now and entries[moved][0]["last_observed_at"] == T0
    for ip in [*kept, *WITH_ASN]:  # the same answer again: one row, observed until now
        assert len(entries[ip]) == 1 and entries[ip][0]["last_observed_at"] == now, ip


def test_rebuild_repairs_a_tampered_asn_inventory(engine: Engine) -> None:
    upsert_day(
        engine,
        DAY1,
        [seen(A, DAY1, 1, 1, 1, 1), seen(B, DAY1, 2, 2, 2, 2)],
        [SourceUpdate(A, maxmind=maxmind(64500, "A")), SourceUpdate(B, maxmind=maxmind(64501, "B"))],
        now=NOW,
    )
    good = assert_exact(engine)
    with engine.begin() as conn:
        conn.execute(update(ASN_INVENTORY).where(ASN_INVENTORY.c.asn == 64500).values(ip_count=99))
        conn.execute(ASN_INVENTORY.insert().values({**good[64501], "asn": 4242, "updated_at": NOW}))

    assert rebuild_asn_inventory(engine) == 2
    assert stored_asn_rows(engine) == good
