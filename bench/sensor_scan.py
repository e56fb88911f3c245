"""Benchmark: one evaluation of the Cowrie log sensor with 10,000 files in COWRIE_LOG_DIR (Dagster allows 60 s).
Prints the time of the first, a catching-up, a quiet and a one-new-file evaluation, and the cursor size.

    .venv/bin/python bench/sensor_scan.py [--files 10000] [--repeat 5]
"""

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

from dagster import SensorResult, SkipReason, build_sensor_context

from enrichment_pipeline.definitions import defs
from enrichment_pipeline.resources import CowrieLogDirectory
from enrichment_pipeline.sensors import GRACE_NS, SENSOR_NAME, scan_rotated_logs

FIRST_DAY = date(2018, 5, 1)


def populate(log_dir: Path, files: int) -> None:
    """`files` names: rotated days from FIRST_DAY on (plain and .gz; those after yesterday are out of range),
    every tenth a junk name Cowrie would never write."""
    an_hour_ago = time.time_ns() - 3600 * 10**9
    for number in range(files):
        if number % 10 == 9:
            name = f"cowrie.json.{number}.bak"  # junk: never parsed as a day
        else:
            day = FIRST_DAY + timedelta(days=number)
            name = f"cowrie.json.{day.isoformat()}" + (".gz" if number % 3 == 0 else "")
        path = log_dir / name
        path.write_bytes(b"{}\n" * (number % 7 + 1))
        os.utime(path, ns=(an_hour_ago, an_hour_ago))


class Evaluator:
    """The project's sensor as the daemon calls it, cursor carried from one evaluation to the next."""

    def __init__(self, log_dir: Path) -> None:
        self.sensor = defs.resolve_sensor_def(SENSOR_NAME)
        self.resources = {"cowrie_logs": CowrieLogDirectory(log_dir=str(log_dir))}
        self.cursor: str | None = None

    def __call__(self) -> int:
        result = self.sensor(build_sensor_context(cursor=self.cursor, resources=self.resources))
        if isinstance(result, SkipReason):
            return 0
        assert isinstance(result, SensorResult)
        self.cursor = result.cursor
        return len(result.run_requests or [])


def timed(action: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    requested = action()
    return time.perf_counter() - started, requested


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5, help="quiet evaluations to time (median reported)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sensor-bench-") as directory:
        log_dir = Path(directory)
        started = time.perf_counter()
        populate(log_dir, args.files)
        print(f"{args.files} files written in {time.perf_counter() - started:.1f} s")
        time.sleep(GRACE_NS / 1e9 + 1)  # let the files' ctimes fall behind the watermark's grace window

        evaluate = Evaluator(log_dir)
        seconds, requested = timed(evaluate)
        print(f"first evaluation (empty cursor): {seconds * 1000:.0f} ms, {requested} runs requested")

        catching_up, evaluations, total = [], 1, requested
        while requested:
            seconds, requested = timed(evaluate)
            catching_up.append(seconds)
            evaluations += 1
            total += requested
        print(
            f"caught up after {evaluations} evaluations, {total} runs requested in all;"
            f" slowest catching-up evaluation {max(catching_up) * 1000:.0f} ms"
        )

        quiet = [timed(evaluate)[0] for _ in range(args.repeat)]
        scans = [timed(lambda: len(scan_rotated_logs(log_dir)))[0] for _ in range(args.repeat)]
        print(f"directory scan alone (os.scandir + stat): median {statistics.median(scans) * 1000:.0f} ms")
        print(
            f"quiet evaluation (nothing new): median {statistics.median(quiet) * 1000:.0f} ms,"
            f" max {max(quiet) * 1000:.0f} ms; cursor {len(evaluate.cursor or '')} bytes"
        )

        new_day = FIRST_DAY + timedelta(days=9)  # its number got a junk name in populate()
        path = log_dir / f"cowrie.json.{new_day.isoformat()}"
        path.write_bytes(b"{}\n")
        an_hour_ago = time.time_ns() - 3600 * 10**9
        os.utime(path, ns=(an_hour_ago, an_hour_ago))
        seconds, requested = timed(evaluate)
        print(
            f"one newly rotated file: {seconds * 1000:.0f} ms, {requested} run requested;"
            f" cursor {len(evaluate.cursor or '')} bytes"
        )


if __name__ == "__main__":
    main()
