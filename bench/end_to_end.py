"""Measures 5 and 6 and the executor choice: whole partitions through `dagster asset materialize`, each in a
fresh child process with its own DAGSTER_HOME and SQLite inventory, against the loopback Cymru stand-in."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from bench.measure import run_child
from bench.table import INFO, Row, megabytes, seconds, verdict
from enrichment_pipeline.settings import DEFAULTS

PROJECT_MODULE = "enrichment_pipeline.definitions"  # the project's own Definitions (in-process executor)
MULTIPROCESS_MODULE = "bench.multiprocess_definitions"
SELECTION = "*merged_inventory"
PARTITION_MAX_S = 30.0
LINEAR_TOLERANCE = 1.2  # the machine is shared: 20% above a straight line still counts as linear
_CHILD_TIMEOUT_S = 600


@dataclass(frozen=True)
class PartitionRun:
    ips: int
    seconds: float
    peak_rss_kb: int


def materialize_partition(
    log_dir: Path, day: date, ips: int, cymru: tuple[str, int], work_dir: Path, module: str = PROJECT_MODULE
) -> PartitionRun:
    """Run the CLI for one partition; fail loudly unless the run succeeded and the inventory holds `ips` rows."""
    if work_dir.exists():
        shutil.rmtree(work_dir)
    home = work_dir / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("")  # a default instance: no run queue, no pool limits
    database = work_dir / "inventory.sqlite"
    env = _child_environment(
        COWRIE_LOG_DIR=str(log_dir),
        CYMRU_HOST=cymru[0],
        CYMRU_PORT=str(cymru[1]),
        ENRICHMENT_DB_URL=f"sqlite:///{database}",
        DAGSTER_HOME=str(home),
    )
    command = [
        str(Path(sys.executable).with_name("dagster")),
        "asset",
        "materialize",
        "-m",
        module,
        "--select",
        SELECTION,
        "--partition",
        day.isoformat(),
    ]
    child = run_child(command, env=env, timeout_s=_CHILD_TIMEOUT_S, output=work_dir / "run.log")
    if child.returncode != 0 or "RUN_SUCCESS" not in child.output:
        raise RuntimeError(f"materialization of {ips} IPs failed (exit {child.returncode}); see {work_dir / 'run.log'}")
    stored = _inventory_rows(database)
    if stored != ips:
        raise RuntimeError(f"the inventory holds {stored} rows after a day of {ips} IPs; see {work_dir}")
    return PartitionRun(ips, child.seconds, child.peak_rss_kb)


def fastest_partition(
    repeats: int,
    log_dir: Path,
    day: date,
    ips: int,
    cymru: tuple[str, int],
    work_dir: Path,
    module: str = PROJECT_MODULE,
) -> PartitionRun:
    """`materialize_partition` `repeats` times, each from an empty inventory; the fastest run."""
    runs = [materialize_partition(log_dir, day, ips, cymru, work_dir, module) for _ in range(repeats)]
    return min(runs, key=lambda run: run.seconds)


def _child_environment(**settings: str) -> dict[str, str]:
    """This environment without any pipeline setting (no GreyNoise key, no ASN database), plus `settings`."""
    env = {
        name: value for name, value in os.environ.items() if name not in DEFAULTS and not name.startswith("GREYNOISE_")
    }
    env.pop("DAGSTER_HOME", None)
    env.update(settings)
    return env


def _inventory_rows(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        return int(conn.execute("SELECT count(*) FROM ip_inventory").fetchone()[0])


def partition_rows(overhead: PartitionRun, partition: PartitionRun, latency_s: float) -> list[Row]:
    """Measure 5: one 10k-IP partition against the same run on a 10-IP day (Dagster's fixed overhead)."""
    return [
        Row(
            f"Partition end to end, {overhead.ips} IPs (fixed overhead)", seconds(overhead.seconds), "", None, "", INFO
        ),
        Row(
            f"Partition end to end, {partition.ips // 1000}k new IPs, stand-in {latency_s:g} s",
            seconds(partition.seconds),
            f"{seconds(overhead.seconds)} for {overhead.ips} IPs",
            partition.seconds / overhead.seconds,
            f"≤ {PARTITION_MAX_S:.0f} s",
            verdict(partition.seconds <= PARTITION_MAX_S),
        ),
    ]


def executor_row(in_process: PartitionRun, multiprocess: PartitionRun, latency_s: float) -> Row:
    return Row(
        f"Multiprocess executor, {_size(multiprocess.ips)} IPs, stand-in {latency_s:g} s",
        seconds(multiprocess.seconds),
        f"{seconds(in_process.seconds)} in-process",
        multiprocess.seconds / in_process.seconds,
        "",
        INFO,
    )


def scaling_rows(runs: list[PartitionRun], latency_s: float) -> list[Row]:
    """Measure 6: the largest size against the straight line through the two sizes below it.

    Only the last step is judged (its cost per IP must stay within LINEAR_TOLERANCE of the step before):
    the first step moves the wall time by little more than the machine's noise.
    """
    *_, below, middle, largest = runs
    rows = [
        Row(f"Scaling: {_size(below.ips)} IPs, stand-in {latency_s:g} s", seconds(below.seconds), "", None, "", INFO)
    ]
    rows.append(
        Row(
            f"Scaling: {_size(middle.ips)} IPs, stand-in {latency_s:g} s",
            seconds(middle.seconds),
            f"{seconds(below.seconds)} for {_size(below.ips)}",
            middle.seconds / below.seconds,
            "",
            INFO,
        )
    )
    per_ip = (middle.seconds - below.seconds) / (middle.ips - below.ips)
    linear = middle.seconds + per_ip * (largest.ips - middle.ips)
    ratio = largest.seconds / linear
    rows.append(
        Row(
            f"Scaling: {_size(largest.ips)} IPs, stand-in {latency_s:g} s",
            seconds(largest.seconds),
            f"{seconds(linear)} on the line {_size(below.ips)}→{_size(middle.ips)}",
            ratio,
            f"≤ {LINEAR_TOLERANCE:.1f}× linear",
            verdict(ratio <= LINEAR_TOLERANCE),
        )
    )
    rows.append(
        Row(
            f"Scaling: {_size(largest.ips)} IPs, peak RSS",
            megabytes(largest.peak_rss_kb),
            f"{megabytes(below.peak_rss_kb)} for {_size(below.ips)}",
            largest.peak_rss_kb / below.peak_rss_kb,
            "",
            INFO,
        )
    )
    return rows


def _size(ips: int) -> str:
    return f"{ips // 1000}k" if ips >= 1000 else str(ips)
