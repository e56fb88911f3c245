"""`make bench`: generate the synthetic days, run the six measures of issue 7, the year backfill through the
daemon and the fixed cost of a run, and print one table (measure | value | reference | ratio | target | verdict);
the table and the notes of the new measures (where the time goes, the profile) are also added to
bench/RESULTS.md."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

from bench import backfill_year, end_to_end, fixed_cost, ingest, passes, synthetic_logs
from bench.measure import run_child
from bench.table import (
    FAIL,
    SKIPPED,
    Row,
    load_average,
    machine,
    markdown_table,
    text_table,
)
from enrichment_pipeline.core.cowrie_log import read_day_log
from enrichment_pipeline.standins.cymru_server import CymruStandinServer
from enrichment_pipeline_tests.support.postgres import PostgresUnavailable

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
RESULTS = BENCH_DIR / "RESULTS.md"
RUNS_MARKER = "<!-- runs, newest first -->"
DAY = date(2018, 6, 1)
EVENTS_PER_IP = 10  # the partition days: 10k IPs are 100k events, 100k IPs are the 1M-event day
INGEST_EVENTS = 1_000_000
PARTITION_LATENCY_S = 5.0  # issue 7: the stand-in answers each bulk request after 5 s, like Team Cymru
# The scaling series at 5 s would spend 125 s of its 100k run waiting on 25 rounds of requests; 0.5 s
# keeps the same request pattern and leaves the pipeline's own cost visible.
SCALING_LATENCY_S = 0.5
SCALING_SIZES = (1_000, 10_000, 100_000)
GROUPS = ("passes", "ingest", "partition", "scaling", "backfill", "fixed_cost")
_GENERATOR_TIMEOUT_S = 300


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def synthetic_day(ips: int, events: int) -> Path:
    """The directory holding a generated day; reused while the generator and its arguments are unchanged."""
    directory = OUT_DIR / "data" / f"{ips}-ips-{events}-events"
    generator = hashlib.sha256(Path(synthetic_logs.__file__).read_bytes()).hexdigest()
    manifest = {"ips": ips, "events": events, "day": DAY.isoformat(), "seed": 0, "generator": generator}
    stamp = directory / "manifest.json"
    if stamp.exists() and json.loads(stamp.read_text()) == manifest:
        return directory
    log(f"generating a Cowrie day: {ips} IPs, {events} events")
    stamp.unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    # In a child: writing a 1M-event day takes ~1 GB, which this process would keep for the whole run.
    command = [
        sys.executable,
        "-m",
        "bench.synthetic_logs",
        str(directory),
        DAY.isoformat(),
        "--ips",
        str(ips),
        "--events",
        str(events),
        "--seed",
        "0",
    ]
    child = run_child(command, timeout_s=_GENERATOR_TIMEOUT_S, output=directory / "generator.log")
    if child.returncode != 0:
        raise RuntimeError(f"generating {directory.name} failed:\n{child.output[-2000:]}")
    stamp.write_text(json.dumps(manifest))
    return directory


def log_file(directory: Path) -> Path:
    return directory / f"cowrie.json.{DAY.isoformat()}"


def day_ips(directory: Path) -> list[str]:
    return [source.ip for source in read_day_log(log_file(directory)).sources]


def measure_passes(repeats: int) -> list[Row]:
    day = synthetic_day(10_000, 10_000 * EVENTS_PER_IP)
    ips = day_ips(day)
    log("1. MaxMind pass")
    asn_db = passes.write_bench_asn_database(OUT_DIR / "bench-asn.mmdb")
    rows, maxmind = passes.maxmind_rows(ips, asn_db, repeats)
    log(f"2. Cymru pass (stand-in {PARTITION_LATENCY_S:g} s per request)")
    cymru_rows, cymru = passes.cymru_rows(ips, PARTITION_LATENCY_S)
    rows += cymru_rows
    data = passes.UpsertInput.from_frames(DAY, log_file(day), maxmind, cymru)
    log("3. upsert into SQLite")
    rows += passes.upsert_rows("SQLite", f"sqlite:///{OUT_DIR / 'upsert.sqlite'}", data, repeats)
    log("3. upsert into PostgreSQL (throwaway server or $ENRICHMENT_TEST_PG_URL)")
    try:
        with passes.postgres_url() as url:
            rows += passes.upsert_rows("PostgreSQL", url, data, repeats)
    except PostgresUnavailable as error:
        log(f"   PostgreSQL unavailable, upsert not measured: {error}")
        rows.append(
            Row(
                "Upsert 10k IPs into PostgreSQL",
                "not measured",
                str(error).splitlines()[0][:60],
                None,
                f"≤ {passes.UPSERT_MAX_S:.0f} s",
                SKIPPED,
            )
        )
    return rows


def measure_ingest(repeats: int) -> list[Row]:
    rows: list[Row] = []
    for ips in (10_000, 100_000):
        day = synthetic_day(ips, INGEST_EVENTS)
        log(f"4. ingest of 1M events, {ips // 1000}k IPs (each read in its own process)")
        rows += ingest.ingest_rows(log_file(day), f"1M events, {ips // 1000}k IPs", repeats, OUT_DIR)
    return rows


def measure_partitions(repeats: int) -> list[Row]:
    small, large = synthetic_day(10, 10 * EVENTS_PER_IP), synthetic_day(10_000, 10_000 * EVENTS_PER_IP)
    with CymruStandinServer(latency_s=PARTITION_LATENCY_S) as standin:
        log(f"5. partition end to end: 10 IPs, then 10k IPs (stand-in {PARTITION_LATENCY_S:g} s)")
        overhead = end_to_end.fastest_partition(repeats, small, DAY, 10, standin.address, OUT_DIR / "run-10")
        partition = end_to_end.fastest_partition(repeats, large, DAY, 10_000, standin.address, OUT_DIR / "run-10k")
        # A process per step costs the same on any day size; the 10-IP day shows it for the least time.
        log("   the 10-IP partition under the multiprocess executor")
        multiprocess = end_to_end.materialize_partition(
            small, DAY, 10, standin.address, OUT_DIR / "run-10-multiprocess", end_to_end.MULTIPROCESS_MODULE
        )
    return [
        *end_to_end.partition_rows(overhead, partition, PARTITION_LATENCY_S),
        end_to_end.executor_row(overhead, multiprocess, PARTITION_LATENCY_S),
    ]


def measure_scaling(repeats: int) -> list[Row]:
    runs = []
    with CymruStandinServer(latency_s=SCALING_LATENCY_S) as standin:
        for ips in SCALING_SIZES:
            log(f"6. scaling: {ips // 1000}k IPs (stand-in {SCALING_LATENCY_S:g} s)")
            day = synthetic_day(ips, ips * EVENTS_PER_IP)
            tries = 1 if ips == SCALING_SIZES[-1] else repeats  # the largest takes a minute by itself
            runs.append(end_to_end.fastest_partition(tries, day, DAY, ips, standin.address, OUT_DIR / f"scaling-{ips}"))
    return end_to_end.scaling_rows(runs, SCALING_LATENCY_S)


def measure_backfill(notes: list[str]) -> list[Row]:
    rows, more = backfill_year.backfill_rows(OUT_DIR)
    notes += more
    return rows


def measure_fixed_cost(repeats: int, notes: list[str]) -> list[Row]:
    small = synthetic_day(10, 10 * EVENTS_PER_IP)
    rows, more = fixed_cost.fixed_cost_rows(small, DAY, 10, repeats, OUT_DIR)
    notes += more
    return rows


def record(rows: Sequence[Row], started: datetime, wall_s: float, load_before: str, notes: Sequence[str] = ()) -> None:
    """Put this run's table (and the measures' notes) at the top of bench/RESULTS.md's list of runs."""
    failed = [row.measure for row in rows if row.verdict == FAIL]
    entry = "\n".join(
        [
            f"### {started:%Y-%m-%d %H:%M} UTC",
            "",
            f"Machine: {machine()}. 1-minute load average: {load_before} before, {load_average()} after."
            f" Whole run: {wall_s / 60:.1f} min.",
            "",
            markdown_table(rows),
            "",
            f"Targets missed: {'; '.join(failed)}." if failed else "All targets met.",
            "",
            *([*notes, ""] if notes else []),
        ]
    )
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else f"# Benchmark results\n\n{RUNS_MARKER}\n"
    if RUNS_MARKER not in text:
        text = text.rstrip("\n") + f"\n\n{RUNS_MARKER}\n"
    head, tail = text.split(RUNS_MARKER, 1)
    RESULTS.write_text(f"{head}{RUNS_MARKER}\n\n{entry}\n{tail.lstrip()}".rstrip() + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmark suite of issue 7 and print its table.")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated subset of {', '.join(GROUPS)}")
    parser.add_argument("--repeats", type=int, default=3, help="runs per in-process measure (the fastest counts)")
    parser.add_argument(
        "--partition-repeats", type=int, default=2, help="runs per end-to-end size up to 10k IPs (the fastest counts)"
    )
    parser.add_argument(
        "--fixed-cost-repeats", type=int, default=3, help="runs of the 10-IP day and of the floor (the median counts)"
    )
    parser.add_argument("--no-record", action="store_true", help="do not add the table to bench/RESULTS.md")
    args = parser.parse_args(argv)
    chosen = [group.strip() for group in args.only.split(",") if group.strip()]
    unknown = set(chosen) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s): {', '.join(sorted(unknown))}")

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    started, load_before, clock = datetime.now(UTC), load_average(), time.perf_counter()
    rows: list[Row] = []
    notes: list[str] = []
    for group in GROUPS:
        if group in chosen:
            rows += {
                "passes": lambda: measure_passes(args.repeats),
                "ingest": lambda: measure_ingest(args.repeats),
                "partition": lambda: measure_partitions(args.partition_repeats),
                "scaling": lambda: measure_scaling(args.partition_repeats),
                "backfill": lambda: measure_backfill(notes),
                "fixed_cost": lambda: measure_fixed_cost(args.fixed_cost_repeats, notes),
            }[group]()
    wall_s = time.perf_counter() - clock
    print(f"\nBenchmark {started:%Y-%m-%d %H:%M} UTC on {machine()} ({wall_s / 60:.1f} min)\n")
    print(text_table(rows))
    if notes:
        print("\n" + "\n".join(notes))
    if not args.no_record:
        record(rows, started, wall_s, load_before, notes)
        print(f"\nAdded to {RESULTS.relative_to(BENCH_DIR.parent)}")
    return 0  # a missed target is a result, shown as FAIL in the table; errors raise


if __name__ == "__main__":
    sys.exit(main())
