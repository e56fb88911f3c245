"""Peak memory of `enrichment-pipeline export`: the real command, in a child process, over inventories of 10k
and 100k IPs (SQLite; PostgreSQL too with --postgres), next to a reference child that fetches the same query
whole before writing it. A streamed export's peak RSS stays flat as the row count grows tenfold; the
reference's grows with it. Not a timed unit test: a measurement, printed as a table.

    .venv/bin/python -m bench.export_memory                 # SQLite, 10k and 100k IPs
    .venv/bin/python -m bench.export_memory --postgres      # also on a throwaway PostgreSQL server
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from datetime import UTC, date, datetime
from pathlib import Path

from bench.measure import run_child
from enrichment_pipeline.core.inventory import (
    Base,
    DayActivity,
    SourceUpdate,
    create_schema,
    make_engine,
    upsert_days,
)
from enrichment_pipeline_tests.support.postgres import FreshDatabase, PostgresUnavailable, ThrowawayServer

OUT = Path(__file__).resolve().parent / "out" / "export"
DAYS = (date(2018, 6, 1), date(2018, 6, 2))
NOW = datetime(2018, 6, 3, tzinfo=UTC)
SIZES = (10_000, 100_000)
TIMEOUT_S = 600
# The reference: the export's own query, fetched whole (what a plain `.all()` would do), then written.
WHOLE_FETCH = """
import csv, sys
from enrichment_pipeline.commands.common import inventory_engine
from enrichment_pipeline.core.inventory.analyst import ExportFilters, _export_query
engine = inventory_engine()
with engine.connect() as conn:
    rows = conn.execute(_export_query(ExportFilters(), conn.dialect.name)).all()
with open(sys.argv[1], "w", newline="") as out:
    csv.writer(out).writerows(rows)
"""


def fill(url: str, ips: int) -> None:
    """An inventory of `ips` IPs over two days, with names that need CSV quoting."""
    engine = make_engine(url)
    Base.metadata.drop_all(engine)
    create_schema(engine)
    addresses = [str(ipaddress.IPv4Address(0x0B000000 + n * 7)) for n in range(ips)]
    activity = {
        day: [
            DayActivity(ip, 1 + n % 5, 10 + n % 50, datetime(day.year, day.month, day.day, 1, tzinfo=UTC), None)
            for n, ip in enumerate(addresses)
            if (n + k) % 3
        ]
        for k, day in enumerate(DAYS)
    }
    updates = [
        SourceUpdate(
            ip, maxmind={"asn": 64512 + n % 500, "asn_org": f'ORG {n % 500}, "quoted"\nline', "country_code": "DE"}
        )
        for n, ip in enumerate(addresses)
    ]
    upsert_days(engine, activity, updates, now=NOW)
    engine.dispose()


def measure(url: str, label: str, ips: int) -> tuple[int, int, float]:
    """(export peak RSS KiB, whole-fetch reference peak RSS KiB, export seconds) for one inventory."""
    env = {**os.environ, "ENRICHMENT_DB_URL": url, "DAGSTER_HOME": "/nonexistent"}
    target = OUT / f"{label}-{ips}.csv"
    export = run_child(
        [sys.executable, "-m", "enrichment_pipeline.cli", "export", "--format", "csv", "-o", str(target)],
        env=env,
        timeout_s=TIMEOUT_S,
        output=OUT / f"{label}-{ips}.log",
    )
    with open(target, "rb") as written:
        lines = sum(1 for _ in written)
    if export.returncode != 0 or lines < ips:
        raise RuntimeError(f"export failed: {export.output[-2000:]}")
    reference = run_child(
        [sys.executable, "-c", WHOLE_FETCH, str(OUT / f"{label}-{ips}-whole.csv")],
        env=env,
        timeout_s=TIMEOUT_S,
        output=OUT / f"{label}-{ips}-whole.log",
    )
    if reference.returncode != 0:
        raise RuntimeError(f"reference failed: {reference.output[-2000:]}")
    return export.peak_rss_kb, reference.peak_rss_kb, export.seconds


def report(label: str, results: dict[int, tuple[int, int, float]]) -> None:
    print(f"\n{label}: peak RSS of the export (MB) as the inventory grows")
    print(f"{'IPs':>8}  {'export':>8}  {'whole fetch':>11}  {'export s':>8}")
    for ips, (streamed, whole, seconds) in results.items():
        print(f"{ips:>8}  {streamed / 1024:>8.1f}  {whole / 1024:>11.1f}  {seconds:>8.1f}")
    small, large = min(results), max(results)
    streamed_ratio = results[large][0] / results[small][0]
    whole_ratio = results[large][1] / results[small][1]
    extra = (results[large][0] - results[small][0]) / 1024
    print(
        f"{large // small}x the rows: export RSS x{streamed_ratio:.2f} ({extra:+.1f} MB),"
        f" whole fetch x{whole_ratio:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", action="store_true", help="also measure on a throwaway PostgreSQL server")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    sqlite = {}
    for ips in SIZES:
        url = f"sqlite:///{OUT / f'inventory-{ips}.sqlite'}"
        fill(url, ips)
        sqlite[ips] = measure(url, "sqlite", ips)
    report("SQLite", sqlite)
    if args.postgres:
        server = ThrowawayServer()
        try:
            server_url = server.start()
            postgres = {}
            for ips in SIZES:
                database = FreshDatabase(server_url)
                url = database.create()
                fill(url, ips)
                postgres[ips] = measure(url, "postgres", ips)
            report("PostgreSQL (server-side cursor)", postgres)
        except PostgresUnavailable as error:
            print(f"PostgreSQL skipped: {error}", file=sys.stderr)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
