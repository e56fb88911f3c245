"""A year through the daemon: 365 synthetic Cowrie days backfilled as ONE asset backfill launched over the
webserver's GraphQL API (the UI's "Materialize all" over a partition range), on real `dagster-webserver` and
`dagster-daemon` processes with the project's default SQLite instance (a copy of dagster_home/dagster.yaml),
against the loopback Cymru stand-in; then the one-run-per-day policy (BACKFILL_DAYS_PER_RUN=1) on a 30-day
slice of the same data, scaled to a year. Both again on `bench/floor_graph_definitions.py`, enrich_day's
graph shape doing no work: what Dagster alone costs for the same days, runs and per-day events.

No ASN database is given (GEOIP_ASN_DB empty), so every IP goes to Cymru; no GreyNoise key, so GreyNoise is
skipped. Each backfill gets a fresh DAGSTER_HOME, inventory and stand-in; everything is torn down on failure."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import sqlite3
import statistics
import sys
import time
import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from bench import synthetic_logs, synthetic_year
from bench.measure import PROJECT_ROOT, run_child
from bench.processes import TreePeaks, TreeSampler
from bench.table import INFO, Row, megabytes, seconds, verdict
from enrichment_pipeline.settings import DEFAULTS
from enrichment_pipeline.standins.cymru_server import CymruStandinServer
from enrichment_pipeline_tests.support.dagster_services import DagsterServices, ServiceError, wait_for

FIRST_DAY = date(2019, 1, 1)
YEAR_DAYS = 365
IPS_PER_DAY = 1_000
POOL = 40_000
SEED = 0
SLICE_DAYS = 30  # the one-run-per-day policy runs on the first 30 days of the same year
CYMRU_LATENCY_S = 0.5
CYMRU_BATCH = int(DEFAULTS["CYMRU_BATCH_SIZE"])
YEAR_MAX_S = 300.0
SPEEDUP_MIN = 10.0
RSS_MAX_KB = 2 * 1024 * 1024
YEAR_TIMEOUT_S = 1_200.0  # hard limits: the services are torn down and the measure fails past them
SLICE_TIMEOUT_S = 900.0
_GENERATOR_TIMEOUT_S = 600
FLOOR_MODULE = "bench.floor_graph_definitions"
FINISHED_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- data ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class YearData:
    directory: Path
    days: list[str]
    ips: dict[str, frozenset[str]]  # day -> its distinct source IPs, read back from the files

    def distinct(self, days: Sequence[str]) -> set[str]:
        return set().union(*(self.ips[day] for day in days))


def year_data(out_dir: Path) -> YearData:
    """The generated year, reused while the generator and its arguments are unchanged."""
    directory = out_dir / "data" / f"year-{YEAR_DAYS}d-{IPS_PER_DAY}ips-pool{POOL}"
    digest = hashlib.sha256()
    for module in (synthetic_year, synthetic_logs):
        digest.update(Path(module.__file__).read_bytes())
    manifest = {
        "first_day": FIRST_DAY.isoformat(),
        "days": YEAR_DAYS,
        "ips_per_day": IPS_PER_DAY,
        "pool": POOL,
        "seed": SEED,
        "generator": digest.hexdigest(),
    }
    stamp, expected = directory / "manifest.json", directory / "expected-ips.json"
    if not (stamp.exists() and json.loads(stamp.read_text()) == manifest and expected.exists()):
        log(f"generating {YEAR_DAYS} Cowrie days: {IPS_PER_DAY} IPs a day from a pool of {POOL}")
        stamp.unlink(missing_ok=True)
        shutil.rmtree(directory / "logs", ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "bench.synthetic_year",
            str(directory / "logs"),
            "--first-day",
            FIRST_DAY.isoformat(),
            "--days",
            str(YEAR_DAYS),
            "--ips-per-day",
            str(IPS_PER_DAY),
            "--pool",
            str(POOL),
            "--seed",
            str(SEED),
            "--expected",
            str(expected),
        ]
        child = run_child(command, timeout_s=_GENERATOR_TIMEOUT_S, output=directory / "generator.log")
        if child.returncode != 0:
            raise RuntimeError(f"generating the year failed:\n{child.output[-2000:]}")
        stamp.write_text(json.dumps(manifest))
    ips = {day: frozenset(found) for day, found in json.loads(expected.read_text()).items()}
    days = [day.isoformat() for day in synthetic_year.year_days(FIRST_DAY, YEAR_DAYS)]
    return YearData(directory / "logs", days, ips)


# --- one backfill ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunTiming:
    run_id: str
    status: str
    days: list[str]
    created: float
    dequeued: float | None  # RUN_STARTING
    started: float | None
    ended: float | None
    steps: dict[str, tuple[float, float]]  # step key -> (start, end), epoch seconds
    events: dict[str, int] = field(default_factory=dict)  # event type -> how many the run wrote

    @property
    def startup_s(self) -> float | None:
        """RUN_STARTING -> RUN_START: the code server spawns the worker, which imports and loads the code."""
        return None if self.dequeued is None or self.started is None else self.started - self.dequeued

    @property
    def queued_s(self) -> float | None:
        return None if self.dequeued is None else self.dequeued - self.created

    @property
    def steps_s(self) -> float:
        if not self.steps:
            return 0.0
        return max(end for _, end in self.steps.values()) - min(start for start, _ in self.steps.values())

    @property
    def after_steps_s(self) -> float | None:
        if self.ended is None or not self.steps:
            return None
        return self.ended - max(end for _, end in self.steps.values())


@dataclass
class BackfillResult:
    label: str
    days: list[str]
    days_per_run: str
    wall_s: float
    launched_at: float
    completed_seen_at: float
    runs: list[RunTiming]
    requests: list[list[str]]
    inventory_rows: int
    peaks: TreePeaks
    notes: list[str] = field(default_factory=list)

    @property
    def first_run_created_at(self) -> float:
        return min(run.created for run in self.runs)

    @property
    def runs_ended_at(self) -> float:
        return max(run.ended or 0 for run in self.runs)


def run_backfill(
    data: YearData, days: list[str], work_dir: Path, *, days_per_run: str, timeout_s: float, floor: bool = False
) -> BackfillResult:
    """Fresh instance, inventory and stand-in; one backfill of `days`; its wall time, runs, requests and memory.
    With `floor`, of the same graph shape doing no work (bench/floor_graph_definitions.py) instead.

    Raises unless the backfill COMPLETED with every run successful and the inventory holds every distinct IP.
    """
    work_dir = work_dir.resolve()  # DAGSTER_HOME must be absolute
    if work_dir.exists():
        shutil.rmtree(work_dir)
    home = work_dir / "dagster_home"
    home.mkdir(parents=True)
    shutil.copyfile(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    database = work_dir / "inventory.sqlite"
    label = f"{len(days)} days, BACKFILL_DAYS_PER_RUN={days_per_run or 'default'}" + (", floor graph" if floor else "")
    assets = enrich_day_assets()
    with CymruStandinServer(latency_s=CYMRU_LATENCY_S) as cymru:
        env = _pipeline_env(data.directory, cymru.address[1], database, days_per_run)
        services = DagsterServices(home, env, module=FLOOR_MODULE if floor else None)
        for name in DEFAULTS:  # unset whatever this shell has (GREYNOISE_API_KEY...) unless given above
            if services.env.get(name) == "":
                services.env.pop(name)
        backfill_id = ""
        try:
            services.start_webserver()
            services.stop_all_automation()  # only the backfill runs: no sensor or schedule run in the queue
            services.start_daemon()
            roots = [process.pid for process in services.processes.values()]
            with TreeSampler(roots) as sampler:
                launched_at, clock = time.time(), time.perf_counter()
                backfill_id = services.launch_asset_backfill(assets, days, title=f"bench: {label}")
                log(f"   backfill {backfill_id} launched ({label}); waiting up to {timeout_s:.0f} s")
                status = wait_for(
                    f"the backfill of {label}", lambda: _finished(services, backfill_id), timeout_s, every_s=1
                )
                wall_s = time.perf_counter() - clock
                completed_seen_at = time.time()
            peaks = sampler.peaks
        except ServiceError as error:
            services.stop()
            partial = ""
            if backfill_id:  # timed out or a service died: what the runs did so far, for the product engineer
                with contextlib.suppress(Exception):
                    runs = _run_timings(home, backfill_id)
                    partial = "\n".join(
                        f"  {run.days[0]}..{run.days[-1]}: {run.status}, queued {run.queued_s}, start-up"
                        f" {run.startup_s}, steps {run.steps_s:.1f} s"
                        for run in runs
                    )
            raise RuntimeError(
                f"backfill of {label} failed: {error}\nruns so far:\n{partial}\n{services.logs()}"
            ) from error
        finally:
            services.stop()
        requests = cymru.requests
    runs = _run_timings(home, backfill_id)
    failed = [f"{run.days[0]}..{run.days[-1]}: {run.status}" for run in runs if run.status != "SUCCESS"]
    if status != "COMPLETED_SUCCESS" or failed or not runs:
        raise RuntimeError(f"backfill of {label} ended {status}; runs not successful: {failed}; logs in {home}")
    rows, expected = (0, 0) if floor else (_inventory_rows(database), len(data.distinct(days)))
    if rows != expected:
        raise RuntimeError(f"the inventory holds {rows} rows after {label}, expected {expected} distinct IPs")
    return BackfillResult(
        label, days, days_per_run, wall_s, launched_at, completed_seen_at, runs, requests, rows, peaks
    )


def enrich_day_assets() -> list[list[str]]:
    """Every asset of `enrich_day`, as test_orchestration_e2e selects them ("Materialize all" in the UI)."""
    from enrichment_pipeline.definitions import defs

    return sorted(key.path for key in defs.resolve_job_def("enrich_day").asset_layer.executable_asset_keys)


def _pipeline_env(log_dir: Path, cymru_port: int, database: Path, days_per_run: str) -> dict[str, str]:
    env = dict.fromkeys(DEFAULTS, "")  # "" is removed again: each setting takes its embedded default
    env.update(
        COWRIE_LOG_DIR=str(log_dir),
        CYMRU_HOST="127.0.0.1",
        CYMRU_PORT=str(cymru_port),
        ENRICHMENT_DB_URL=f"sqlite:///{database}",
        BACKFILL_DAYS_PER_RUN=days_per_run,
    )
    return env


def _finished(services: DagsterServices, backfill_id: str) -> str | None:
    for name, process in services.processes.items():
        if process.poll() is not None:
            raise ServiceError(f"{name} exited with {process.returncode}")
    try:
        status = services.backfill_status(backfill_id)
    except (urllib.error.URLError, TimeoutError):  # a webserver busy on this 2-core machine: ask again
        return None
    return status if status in FINISHED_BACKFILL else None


def _run_timings(home: Path, backfill_id: str) -> list[RunTiming]:
    """From the instance's run and event storage, once the services have stopped."""
    from dagster import DagsterEventType, DagsterInstance, RunsFilter
    from dagster._core.instance.ref import InstanceRef

    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        timings = []
        for record in instance.get_run_records(RunsFilter(tags={"dagster/backfill": backfill_id})):
            run = record.dagster_run
            tags = run.tags
            if "dagster/partition" in tags:
                days = [tags["dagster/partition"]]
            else:
                first, last = tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]
                days = _day_range(first, last)
            # RUN_STARTING: the queued run coordinator took the run off the queue and asked for its launch.
            dequeued = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_STARTING).records
            steps = {
                stat.step_key: (stat.start_time, stat.end_time)
                for stat in instance.get_run_step_stats(run.run_id)
                if stat.start_time is not None and stat.end_time is not None
            }
            events: dict[str, int] = {}
            for event in instance.get_records_for_run(run.run_id).records:
                dagster_event = event.event_log_entry.dagster_event
                kind = dagster_event.event_type_value if dagster_event else "log message"
                events[kind] = events.get(kind, 0) + 1
            timings.append(
                RunTiming(
                    run.run_id,
                    run.status.value,
                    days,
                    record.create_timestamp.timestamp(),
                    dequeued[0].timestamp if dequeued else None,
                    record.start_time,
                    record.end_time,
                    steps,
                    events,
                )
            )
        return sorted(timings, key=lambda timing: timing.days[0])
    finally:
        instance.dispose()


def _day_range(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [day.isoformat() for day in synthetic_year.year_days(start, (end - start).days + 1)]


def _inventory_rows(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        return int(conn.execute("SELECT count(*) FROM ip_inventory").fetchone()[0])


# --- Cymru expectations ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CymruCount:
    sent: int
    expected_observed: int  # Σ ceil(new IPs / batch), "new" = not merged by a run that finished before it asked
    expected_sequential: int  # the same if each run had started after the one before it had merged
    ips_sent: int
    distinct_ips_sent: int


def cymru_count(data: YearData, result: BackfillResult) -> CymruCount:
    known_sequential: set[str] = set()
    sequential = observed = 0
    for run in result.runs:
        ips = data.distinct(run.days)
        sequential += math.ceil(len(ips - known_sequential) / CYMRU_BATCH)
        known_sequential |= ips
        asked_at = run.steps.get("ips_needing_cymru", (math.inf, math.inf))[0]
        known = set().union(
            *(
                data.distinct(other.days)
                for other in result.runs
                if other is not run and other.steps.get("merged_inventory", (0, math.inf))[1] <= asked_at
            )
        )
        observed += math.ceil(len(ips - known) / CYMRU_BATCH)
    sent_ips = [ip for request in result.requests for ip in request]
    return CymruCount(len(result.requests), observed, sequential, len(sent_ips), len(set(sent_ips)))


# --- where the time goes --------------------------------------------------------------------------------------
def _median(values: Sequence[float | None]) -> float:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else float("nan")


def time_breakdown(result: BackfillResult, *, per_run: bool) -> list[str]:
    """Markdown lines: the daemon's latencies, the parts of a run, the steps that cost most."""
    runs = result.runs
    created, ended = result.first_run_created_at, result.runs_ended_at
    busy = sum((run.ended or 0) - (run.dequeued or run.created) for run in runs)
    lines = [
        f"- {result.label}: {len(runs)} runs, wall {seconds(result.wall_s)} from launch to COMPLETED_SUCCESS seen;"
        f" launch → first run created {seconds(created - result.launched_at)} (backfill daemon tick, every 30 s);"
        f" last run ended → COMPLETED seen {seconds(result.completed_seen_at - ended)};"
        f" run time summed {seconds(busy)} = {busy / result.wall_s:.2f} runs busy on average"
        f" (the instance allows 2 backfill runs at once).",
        f"- per run, median: queued {seconds(_median([run.queued_s for run in runs]))},"
        " start-up (RUN_STARTING → RUN_START: code server launch, worker spawn, imports, code load)"
        f" {seconds(_median([run.startup_s for run in runs]))},"
        f" steps {seconds(_median([run.steps_s for run in runs]))},"
        f" after the last step {seconds(_median([run.after_steps_s for run in runs]))};"
        f" dequeue latency after a slot freed, median {seconds(_dequeue_latency(runs))}.",
    ]
    totals: dict[str, float] = {}
    for run in runs:
        for key, (start, end) in run.steps.items():
            totals[key] = totals.get(key, 0.0) + end - start
    steps_sum = sum(run.steps_s for run in runs) or 1.0
    top = sorted(totals.items(), key=lambda item: -item[1])[:6]
    lines.append(
        "- steps summed over runs (share of the runs' step time): "
        + ", ".join(f"`{key}` {seconds(total)} ({total / steps_sum:.0%})" for key, total in top)
        + "; gaps between steps (pool waits, IO manager, event writes) make up the rest."
    )
    if per_run:
        lines.append("- each run (days, queued, start-up, steps, slowest step):")
        for run in runs:
            slowest = max(run.steps.items(), key=lambda item: item[1][1] - item[1][0], default=None)
            slow = f"`{slowest[0]}` {seconds(slowest[1][1] - slowest[1][0])}" if slowest else "none"
            lines.append(
                f"  - {run.days[0]}..{run.days[-1]} ({len(run.days)} d): queued {seconds(run.queued_s or 0)},"
                f" start-up {seconds(run.startup_s or 0)}, steps {seconds(run.steps_s)}, slowest {slow}"
            )
    return lines


def per_day_costs(batched: Sequence[RunTiming], single: Sequence[RunTiming]) -> list[str]:
    """Markdown lines: what a day of data costs in range runs against one-day runs, step by step."""

    def per_day(runs: Sequence[RunTiming]) -> tuple[dict[str, float], float, float, dict[str, int], int]:
        days = sum(len(run.days) for run in runs)
        steps: dict[str, float] = {}
        events: dict[str, int] = {}
        for run in runs:
            for key, (start, end) in run.steps.items():
                steps[key] = steps.get(key, 0.0) + (end - start) / days
            for kind, count in run.events.items():
                events[kind] = events.get(kind, 0) + count
        startup = sum(run.startup_s or 0.0 for run in runs) / days
        total = sum(((run.ended or 0.0) - (run.dequeued or run.created)) for run in runs) / days
        return steps, startup, total, events, days

    steps_b, startup_b, total_b, events_b, days_b = per_day(batched)
    steps_s, startup_s, total_s, events_s, days_s = per_day(single)
    lines = [
        f"- a day of data costs {total_b:.2f} s of run time in the range runs ({startup_b:.2f} s of it start-up)"
        f" against {total_s:.2f} s in one-day runs ({startup_s:.2f} s start-up); step by step, s per day"
        " (range runs / one-day runs):"
        + "".join(
            f" `{key}` {value:.2f} / {steps_s.get(key, float('nan')):.2f};"
            for key, value in sorted(steps_b.items(), key=lambda item: -item[1])
        ),
        f"- events written per day of data: {sum(events_b.values()) / days_b:.0f} in range runs, "
        f"{sum(events_s.values()) / days_s:.0f} in one-day runs; the range runs' largest kinds: "
        + ", ".join(f"{kind} {count}" for kind, count in sorted(events_b.items(), key=lambda item: -item[1])[:5])
        + f" (for {days_b} days).",
    ]
    return lines


def _dequeue_latency(runs: Sequence[RunTiming]) -> float:
    """For runs that had to wait: dequeued minus the latest run end before it (the freed slot)."""
    ends = sorted(run.ended for run in runs if run.ended is not None)
    latencies = []
    for run in runs:
        if run.dequeued is None or (run.queued_s or 0) < 1.0:
            continue
        before = [end for end in ends if end <= run.dequeued]
        if before:
            latencies.append(run.dequeued - before[-1])
    return _median(latencies)


def _work(result: BackfillResult) -> float:
    """Launch → last run ended. Judged on the runs' work: the daemon marks a backfill complete at its first look
    (every 30 s) after the last run ended, a delay of 0-30 s that does not grow with the days."""
    return result.runs_ended_at - result.launched_at


def _scaled_work(per_day: BackfillResult) -> tuple[float, float, float]:
    """The slice's first tick, its runs' work and both scaled to a year: scaling the slice's wall would scale
    the completion delay ×12 too, and the first look (launch → first run) happens once per backfill, not per
    day."""
    tick = per_day.first_run_created_at - per_day.launched_at
    runs = per_day.runs_ended_at - per_day.first_run_created_at
    return tick, runs, tick + runs * YEAR_DAYS / SLICE_DAYS


# --- the measure -----------------------------------------------------------------------------------------------
def backfill_rows(out_dir: Path) -> tuple[list[Row], list[str]]:
    data = year_data(out_dir)
    log(f"7. a year through the daemon: {YEAR_DAYS} days as one backfill (stand-in {CYMRU_LATENCY_S:g} s)")
    year = run_backfill(data, data.days, out_dir / "backfill-year", days_per_run="", timeout_s=YEAR_TIMEOUT_S)
    log(f"   {seconds(year.wall_s)}, {len(year.runs)} runs; now the one-run-per-day policy on {SLICE_DAYS} days")
    per_day = run_backfill(
        data, data.days[:SLICE_DAYS], out_dir / "backfill-per-day", days_per_run="1", timeout_s=SLICE_TIMEOUT_S
    )
    log(f"   {seconds(per_day.wall_s)}; now both policies on the same graph shape doing no work (the floor)")
    floor_year = run_backfill(
        data, data.days, out_dir / "floor-year", days_per_run="", timeout_s=YEAR_TIMEOUT_S, floor=True
    )
    floor_per_day = run_backfill(
        data, data.days[:SLICE_DAYS], out_dir / "floor-per-day", days_per_run="1", timeout_s=SLICE_TIMEOUT_S, floor=True
    )
    scaled = per_day.wall_s * YEAR_DAYS / SLICE_DAYS
    year_work, floor_year_work = _work(year), _work(floor_year)
    slice_tick, slice_runs, scaled_work = _scaled_work(per_day)
    floor_scaled_work = _scaled_work(floor_per_day)[2]
    count = cymru_count(data, year)
    distinct = len(data.distinct(data.days))
    peaks = year.peaks
    rows = [
        Row(
            f"Backfill a year ({YEAR_DAYS} d × {IPS_PER_DAY} IPs from {POOL // 1000}k) via daemon: wall",
            seconds(year.wall_s),
            f"{len(year.runs)} runs",
            None,
            f"≤ {YEAR_MAX_S:.0f} s",
            verdict(year.wall_s <= YEAR_MAX_S),
        ),
        Row(
            "Backfill a year: vs one run per day (launch → last run ended)",
            seconds(year_work),
            f"{seconds(scaled_work)} = first tick {seconds(slice_tick)} + {SLICE_DAYS}-day slice's runs"
            f" {seconds(slice_runs)} ({len(per_day.runs)} runs) × {YEAR_DAYS}/{SLICE_DAYS}",
            year_work / scaled_work,
            f"≤ {1 / SPEEDUP_MIN:.2f}× (≥ {SPEEDUP_MIN:.0f}× faster)",
            verdict(year_work * SPEEDUP_MIN <= scaled_work),
        ),
        Row(
            "Floor: enrich_day's graph shape doing no work, a year vs one run per day (as above)",
            seconds(floor_year_work),
            f"{seconds(floor_scaled_work)} ({len(floor_year.runs)} runs / {len(floor_per_day.runs)} runs"
            f" × {YEAR_DAYS}/{SLICE_DAYS})",
            floor_year_work / floor_scaled_work,
            "",
            INFO,
        ),
        Row(
            "Backfill a year: the project's work above that floor, vs one run per day's",
            seconds(year_work - floor_year_work),
            f"{seconds(scaled_work - floor_scaled_work)}",
            (year_work - floor_year_work) / (scaled_work - floor_scaled_work),
            "",
            INFO,
        ),
        Row(
            "Backfill a year: vs one run per day (walls to COMPLETED, in the daemon's 30-s steps)",
            seconds(year.wall_s),
            f"{seconds(scaled)} = {SLICE_DAYS}-day slice {seconds(per_day.wall_s)} × {YEAR_DAYS}/{SLICE_DAYS}",
            year.wall_s / scaled,
            "",
            INFO,
        ),
        Row(
            "Backfill a year: Cymru requests",
            str(count.sent),
            f"{count.expected_observed} = Σ ceil(new IPs/{CYMRU_BATCH}) as the runs overlapped;"
            f" {count.expected_sequential} if they had not",
            count.sent / count.expected_observed,
            # "New" is judged at the step's start; its freshness query runs a moment later, when another
            # run's merge may just have committed: fewer requests, never fewer than without any overlap.
            "between the two",
            verdict(count.expected_sequential <= count.sent <= count.expected_observed),
        ),
        Row(
            "Backfill a year: IPs sent to Cymru",
            str(count.ips_sent),
            f"{count.distinct_ips_sent} distinct; {distinct} distinct in the year",
            count.ips_sent / distinct,
            "",
            INFO,
        ),
        Row(
            "Backfill a year: peak RSS, run workers alive at once (sum)",
            megabytes(peaks.max_workers_sum_kb),
            f"{megabytes(peaks.max_worker_kb)} largest single run worker;"
            f" {megabytes(peaks.max_tree_kb)} whole tree (webserver, daemon, code servers, workers)",
            None,
            f"< {RSS_MAX_KB // 1024 // 1024} GB",
            verdict(0 < peaks.max_workers_sum_kb < RSS_MAX_KB),
        ),
        Row(
            "Backfill a year: inventory rows",
            str(year.inventory_rows),
            f"{distinct} distinct IPs in the year",
            year.inventory_rows / distinct,
            "= distinct IPs",
            verdict(year.inventory_rows == distinct),
        ),
    ]
    per_day_count = cymru_count(data, per_day)
    notes = [
        f"Backfills (bench/backfill_year.py): {YEAR_DAYS} synthetic days from {FIRST_DAY}, {IPS_PER_DAY} distinct"
        f" IPs a day drawn from a pool of {POOL} global IPv4 addresses (seed {SEED}), 2-4 events per IP; no ASN"
        f" database, so every IP goes to the Cymru stand-in ({CYMRU_LATENCY_S:g} s per request); no GreyNoise key;"
        " fresh DAGSTER_HOME with a copy of dagster_home/dagster.yaml; real webserver + daemon; one"
        " `launchPartitionBackfill` over every asset of `enrich_day`. Peak RSS: the sum over the run worker"
        f" processes alive in one sample (every 0.5 s, {peaks.samples} samples, at most {peaks.max_workers_alive}"
        " workers at once); shared pages count once per process.",
        *time_breakdown(year, per_run=True),
        *time_breakdown(per_day, per_run=False),
        *per_day_costs(year.runs, per_day.runs),
        f"- the per-day slice sent {per_day_count.sent} Cymru requests"
        f" (expected {per_day_count.expected_observed} as its runs overlapped)"
        f"; its run workers peaked at {megabytes(per_day.peaks.max_workers_sum_kb)} together.",
    ]
    return rows, notes
