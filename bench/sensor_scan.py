"""Benchmark: one evaluation of the Cowrie log sensor on a big COWRIE_LOG_DIR (Dagster allows 60 s), in both
layouts: flat with 10,000 files, and one directory per sensor with 50 sensors x 365 days (18,250 files).
For each, the time of the first, a catching-up, a quiet and a one-new-file evaluation (a late sensor's file
in the per-sensor layout), the planner's share of it (`plan_requests` alone), the scan alone, the cursor size.

    .venv/bin/python bench/sensor_scan.py [--files 10000] [--sensors 50] [--days 365] [--repeat 5]
"""

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from dagster import build_sensor_context

from enrichment_pipeline.definitions import defs
from enrichment_pipeline.resources import CowrieLogDirectory
from enrichment_pipeline.sensors import GRACE_NS, SENSOR_NAME, LogCursor, ended_days, plan_requests, scan_log_dir

FIRST_DAY = date(2018, 5, 1)
REPOSITORY = defs.get_repository_def()


def settled(path: Path, content: bytes) -> None:
    """A finished log: written, its mtime set an hour back (as Cowrie's last write before rotation left it)."""
    path.write_bytes(content)
    an_hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(an_hour_ago, an_hour_ago))


def populate_flat(log_dir: Path, files: int) -> None:
    """`files` names: rotated days from FIRST_DAY on (plain and .gz; those after yesterday are out of range),
    every tenth a junk name Cowrie would never write."""
    for number in range(files):
        if number % 10 == 9:
            name = f"cowrie.json.{number}.bak"  # junk: never parsed as a day
        else:
            day = FIRST_DAY + timedelta(days=number)
            name = f"cowrie.json.{day.isoformat()}" + (".gz" if number % 3 == 0 else "")
        settled(log_dir / name, b"{}\n" * (number % 7 + 1))


def populate_sensors(log_dir: Path, sensors: int, days: int) -> None:
    """`sensors` directories `sensor-NN`, each with `days` rotated days from FIRST_DAY on (plain and .gz)."""
    for sensor in range(sensors):
        directory = log_dir / f"sensor-{sensor:02}"
        directory.mkdir()
        for number in range(days):
            day = FIRST_DAY + timedelta(days=number)
            name = f"cowrie.json.{day.isoformat()}" + (".gz" if (number + sensor) % 3 == 0 else "")
            settled(directory / name, b"{}\n" * ((number + sensor) % 7 + 1))


class Evaluator:
    """The project's sensor as the code server evaluates it for the daemon (`evaluate_tick`), cursor carried
    from one evaluation to the next."""

    def __init__(self, log_dir: Path) -> None:
        self.sensor = defs.resolve_sensor_def(SENSOR_NAME)
        self.log_dir = log_dir
        self.resources = {"cowrie_logs": CowrieLogDirectory(log_dir=str(log_dir))}
        self.cursor: str | None = None

    def __call__(self) -> int:
        context = build_sensor_context(cursor=self.cursor, resources=self.resources, repository_def=REPOSITORY)
        result = self.sensor.evaluate_tick(context)
        self.cursor = result.cursor or self.cursor
        return len(result.run_requests or [])

    def planner_s(self, repeat: int) -> float:
        """The median time of `plan_requests` alone on this directory with the current cursor."""
        logs = scan_log_dir(self.log_dir).logs
        cursor = LogCursor.from_json(self.cursor)
        first, last = ended_days(datetime.now(UTC)) or (FIRST_DAY, FIRST_DAY)
        started = time.time_ns()

        def plan() -> int:
            return len(plan_requests(logs, cursor, first_day=first, last_day=last, scan_started_ns=started).requests)

        return statistics.median(timed(plan)[0] for _ in range(repeat))


def timed(action: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    requested = action()
    return time.perf_counter() - started, requested


@dataclass
class Figures:
    layout: str
    files: int
    seconds: dict[str, float] = field(default_factory=dict)
    cursor_bytes: int = 0


def measure(layout: str, populate: Callable[[Path], int], add_one: Callable[[Path], str], repeat: int) -> Figures:
    with tempfile.TemporaryDirectory(prefix="sensor-bench-") as directory:
        log_dir = Path(directory)
        started = time.perf_counter()
        files = populate(log_dir)
        print(f"\n== {layout}: {files} files written in {time.perf_counter() - started:.1f} s")
        figures = Figures(layout, files)
        time.sleep(GRACE_NS / 1e9 + 1)  # let the files' ctimes fall behind the watermark's grace window

        evaluate = Evaluator(log_dir)
        figures.seconds["first planner"] = evaluate.planner_s(repeat)
        seconds, requested = timed(evaluate)
        figures.seconds["first"] = seconds
        print(
            f"first evaluation (empty cursor): {seconds * 1000:.0f} ms, {requested} request(s)"
            f" (a backfill is one); planner alone {figures.seconds['first planner'] * 1000:.0f} ms"
        )

        catching_up, evaluations, total = [], 1, requested
        while requested:
            seconds, requested = timed(evaluate)
            catching_up.append(seconds)
            evaluations += 1
            total += requested
        print(
            f"caught up after {evaluations} evaluations, {total} requests in all;"
            f" slowest catching-up evaluation {max(catching_up) * 1000:.0f} ms"
        )

        quiet = [timed(evaluate)[0] for _ in range(repeat)]
        scans = [timed(lambda: len(scan_log_dir(log_dir).logs))[0] for _ in range(repeat)]
        figures.seconds["quiet"] = statistics.median(quiet)
        figures.seconds["quiet planner"] = evaluate.planner_s(repeat)
        print(
            f"scan alone (an os.scandir per directory, a stat per log): median {statistics.median(scans) * 1000:.0f} ms"
        )
        print(
            f"quiet evaluation (nothing new): median {figures.seconds['quiet'] * 1000:.0f} ms,"
            f" max {max(quiet) * 1000:.0f} ms; planner alone {figures.seconds['quiet planner'] * 1000:.1f} ms;"
            f" cursor {len(evaluate.cursor or '')} bytes"
        )

        what = add_one(log_dir)
        seconds, requested = timed(evaluate)
        figures.seconds["one new"] = seconds
        figures.cursor_bytes = len(evaluate.cursor or "")
        print(f"{what}: {seconds * 1000:.0f} ms, {requested} run requested; cursor {figures.cursor_bytes} bytes")
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000, help="files of the flat layout")
    parser.add_argument("--sensors", type=int, default=50, help="sensor directories of the per-sensor layout")
    parser.add_argument("--days", type=int, default=365, help="days in each sensor directory")
    parser.add_argument("--repeat", type=int, default=5, help="quiet evaluations to time (median reported)")
    args = parser.parse_args()

    def flat(log_dir: Path) -> int:
        populate_flat(log_dir, args.files)
        return args.files

    def new_flat_day(log_dir: Path) -> str:
        new_day = FIRST_DAY + timedelta(days=9)  # its number got a junk name in populate_flat()
        settled(log_dir / f"cowrie.json.{new_day.isoformat()}", b"{}\n")
        return "one newly rotated file"

    def per_sensor(log_dir: Path) -> int:
        populate_sensors(log_dir, args.sensors, args.days)
        return args.sensors * args.days

    def late_sensor_file(log_dir: Path) -> str:
        late = log_dir / f"sensor-{args.sensors:02}"  # a sensor that was not there: its file of an enriched day
        late.mkdir()
        settled(late / f"cowrie.json.{(FIRST_DAY + timedelta(days=100)).isoformat()}", b"{}\n")
        return "one late sensor's file of a day already run"

    results = [
        measure(f"flat, {args.files} files", flat, new_flat_day, args.repeat),
        measure(f"{args.sensors} sensors x {args.days} days", per_sensor, late_sensor_file, args.repeat),
    ]
    print("\nlayout                       files   first eval (planner)   quiet eval (planner)   one new file   cursor")
    for result in results:
        s = {key: value * 1000 for key, value in result.seconds.items()}
        print(
            f"{result.layout:<28} {result.files:>6}   {s['first']:>6.0f} ms ({s['first planner']:>4.0f} ms)"
            f"   {s['quiet']:>6.0f} ms ({s['quiet planner']:>5.1f} ms)   {s['one new']:>7.0f} ms"
            f"   {result.cursor_bytes:>5} B"
        )
    print("Dagster's limit for one sensor evaluation: 60,000 ms")


if __name__ == "__main__":
    main()
