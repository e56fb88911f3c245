"""Measures 1-3, in this process, on the 10k IPs of one synthetic day: the MaxMind pass against a bare geoip2
loop, the Cymru pass against the 5 s loopback stand-in, and the inventory upsert into SQLite and PostgreSQL."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import geoip2.database
import maxminddb
import pandas as pd
from geoip2.errors import AddressNotFoundError
from sqlalchemy import Engine, MetaData, insert

from bench.measure import timed
from bench.table import Row, seconds, verdict
from enrichment_pipeline.core.cowrie_log import read_day_log
from enrichment_pipeline.core.frames import (
    cymru_frame,
    day_activity,
    lookup_failures,
    maxmind_frame,
    source_updates,
    sources_frame,
)
from enrichment_pipeline.core.freshness import MaxMindBuilds
from enrichment_pipeline.core.inventory import (
    INVENTORY,
    Base,
    DayActivity,
    LookupFailure,
    SourceUpdate,
    UpsertStats,
    create_schema,
    fetch_inventory,
    make_engine,
    upsert_day,
)
from enrichment_pipeline.core.maxmind import MaxMindLookup
from enrichment_pipeline.resources import CymruResource
from enrichment_pipeline.standins.asn_database import write_asn_database
from enrichment_pipeline.standins.cymru_server import CymruStandinServer

MAXMIND_MAX_RATIO = 2.0
CYMRU_MAX_RATIO = 0.2
UPSERT_MAX_S = 1.0
BENCH_ASN_ORG = "BENCH-ASN (synthetic, not MaxMind data)"


def write_bench_asn_database(path: Path) -> str:
    """An ASN database covering every even /8, so about half of random addresses have a MaxMind ASN."""
    networks = [(f"{first}.0.0.0/8", 64512 + first // 2, BENCH_ASN_ORG) for first in range(0, 224, 2)]
    return write_asn_database(path, networks)


def maxmind_rows(ips: Sequence[str], asn_db: str, repeats: int) -> tuple[list[Row], pd.DataFrame]:
    """Measure 1: the pass (lookups plus the typed frame the asset returns) vs bare Reader.city/.asn calls."""
    lookup = MaxMindLookup(None, asn_db)
    city = geoip2.database.Reader(lookup.city_info.path, mode=maxminddb.MODE_MMAP_EXT)
    asn = geoip2.database.Reader(asn_db, mode=maxminddb.MODE_MMAP_EXT)

    def bare() -> None:
        for ip in ips:  # try/except, not contextlib.suppress: the plainest, fastest loop
            try:
                city.city(ip)
            except AddressNotFoundError:
                pass
            try:
                asn.asn(ip)
            except AddressNotFoundError:
                pass

    def full_pass() -> pd.DataFrame:
        return maxmind_frame(lookup.lookup_many(ips), MaxMindBuilds.of(lookup))

    bare_s = pass_s = float("inf")
    frame = pd.DataFrame()
    for _ in range(repeats):  # interleaved, so both see the same machine load; the fastest of each counts
        bare_s = min(bare_s, timed(bare)[0])
        elapsed, frame = timed(full_pass)
        pass_s = min(pass_s, elapsed)
    city.close()
    asn.close()
    ratio = pass_s / bare_s
    row = Row(
        f"MaxMind pass, {len(ips) // 1000}k IPs (City + ASN)",
        seconds(pass_s),
        f"{seconds(bare_s)} bare geoip2 loop",
        ratio,
        f"≤ {MAXMIND_MAX_RATIO:.1f}×",
        verdict(ratio <= MAXMIND_MAX_RATIO),
    )
    return [row], frame


def cymru_rows(ips: Sequence[str], latency_s: float) -> tuple[list[Row], pd.DataFrame]:
    """Measure 2: one lookup of every IP through the resource's defaults (500 per batch, 8 at a time)."""
    with CymruStandinServer(latency_s=latency_s) as standin:
        host, port = standin.address
        resource = CymruResource(host=host, port=port)
        elapsed, frame = timed(lambda: cymru_frame(resource.client().lookup(ips)))
        peak = standin.peak_connections
    failed = int((frame["status"] == "failed").sum())
    batches = math.ceil(len(ips) / resource.batch_size)
    sequential = batches * latency_s
    ratio = elapsed / sequential
    return [
        Row(
            f"Cymru pass, {len(ips) // 1000}k IPs, stand-in {latency_s:g} s/request",
            seconds(elapsed),
            f"{seconds(sequential)} sequential ({batches} × {latency_s:g} s)",
            ratio,
            f"≤ {CYMRU_MAX_RATIO:.2f}×",
            verdict(ratio <= CYMRU_MAX_RATIO and failed == 0),
        ),
        Row(
            "Cymru connections open at once",
            str(peak),
            f"CYMRU_MAX_PARALLEL {resource.max_parallel}",
            peak / resource.max_parallel,
            f"≤ {resource.max_parallel}",
            verdict(peak <= resource.max_parallel),
        ),
    ], frame


@dataclass(frozen=True)
class UpsertInput:
    day: date
    activity: list[DayActivity]
    updates: list[SourceUpdate]
    failures: list[LookupFailure]

    @classmethod
    def from_frames(cls, day: date, log_file: Path, maxmind: pd.DataFrame, cymru: pd.DataFrame) -> UpsertInput:
        """What merged_inventory would write for the day: the reader's activity, MaxMind and Cymru answers."""
        sources = sources_frame(read_day_log(log_file).sources)
        return cls(day, day_activity(sources), source_updates(maxmind, cymru), lookup_failures(cymru))

    def upsert(self, engine: Engine, now: datetime) -> UpsertStats:
        return upsert_day(engine, self.day, self.activity, self.updates, now=now, failures=self.failures)


def upsert_rows(backend: str, engine_url: str, data: UpsertInput, repeats: int) -> list[Row]:
    """Measure 3: first upsert of the day into empty tables, then the same day again (every row rewritten),
    next to a plain bulk INSERT of the very rows the upsert produced."""
    first_s = again_s = plain_s = float("inf")
    now = datetime(2018, 6, 2, 12, tzinfo=UTC)
    for _ in range(repeats):  # the fastest of each counts
        with _empty_inventory(engine_url) as engine:
            first_s = min(first_s, timed(lambda: data.upsert(engine, now))[0])
            again_s = min(again_s, timed(lambda: data.upsert(engine, now + timedelta(hours=1)))[0])
            plain_s = min(plain_s, _plain_insert_seconds(engine))
    size = f"{len(data.activity) // 1000}k IPs"
    reference = f"{seconds(plain_s)} plain bulk INSERT"
    return [
        Row(
            f"Upsert {size} into {backend}, new",
            seconds(first_s),
            reference,
            first_s / plain_s,
            f"≤ {UPSERT_MAX_S:.0f} s",
            verdict(first_s <= UPSERT_MAX_S),
        ),
        Row(
            f"Upsert {size} into {backend}, again",
            seconds(again_s),
            reference,
            again_s / plain_s,
            f"≤ {UPSERT_MAX_S:.0f} s",
            verdict(again_s <= UPSERT_MAX_S),
        ),
    ]


def _plain_insert_seconds(engine: Engine) -> float:
    """One multi-row INSERT of the stored inventory rows into an empty twin table, in one transaction."""
    rows = fetch_inventory(engine)
    twin = INVENTORY.to_metadata(MetaData(), name="bench_plain_inventory")
    twin.drop(engine, checkfirst=True)
    twin.create(engine)
    try:

        def insert_all() -> None:
            with engine.begin() as conn:
                conn.execute(insert(twin), rows)

        return timed(insert_all)[0]
    finally:
        twin.drop(engine)


@contextmanager
def _empty_inventory(engine_url: str) -> Iterator[Engine]:
    engine = make_engine(engine_url)
    try:
        Base.metadata.drop_all(engine)
        create_schema(engine)
        yield engine
    finally:
        engine.dispose()


@contextmanager
def postgres_url() -> Iterator[str]:
    """$ENRICHMENT_TEST_PG_URL (a fresh database inside it) or a throwaway server, as the tests do."""
    from enrichment_pipeline_tests.support.postgres import (
        PG_URL_ENV,
        FreshDatabase,
        ThrowawayServer,
    )

    configured = os.environ.get(PG_URL_ENV, "")
    server = None if configured else ThrowawayServer()
    database: FreshDatabase | None = None
    try:
        database = FreshDatabase(server.start() if server else configured)
        yield database.create()
    finally:
        if server is not None:
            server.stop()
        elif database is not None:
            database.drop()
