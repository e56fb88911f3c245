"""Measure 4: events per second of the real Cowrie reader on a 1M-event day against a bare line loop that
only parses each line with the fastest JSON parser we ship (orjson or msgspec, whichever is faster in this
run), and the reader's peak RSS. Every read runs in a fresh child process (`python -m bench.ingest MODE PATH`)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import orjson

from bench.measure import peak_rss_kb, run_child
from bench.table import Row, megabytes, rate, verdict

MIN_EVENTS_PER_S = 500_000
MIN_SHARE_OF_BARE = 0.5
MAX_RSS_KB = 1024 * 1024
_CHILD_TIMEOUT_S = 300


def read_with_reader(path: str) -> int:
    from enrichment_pipeline.core.cowrie_log import read_day_log

    return read_day_log(path).stats.events


def _import_reader() -> None:
    """Load the reader's modules before the clock starts, as the bare loop's parsers are: a one-off cost
    per process (~0.1 s, mostly numpy), not a cost of reading events."""
    import enrichment_pipeline.core.cowrie_log  # noqa: F401


def _bare_loop(loads: Callable[[bytes], object], path: str) -> int:
    """The floor: read each line and parse it whole, nothing else."""
    events = 0
    with open(path, "rb") as stream:
        for line in stream:
            loads(line)
            events += 1
    return events


BARE_PARSERS: dict[str, Callable[[bytes], object]] = {"orjson": orjson.loads, "msgspec": msgspec.json.decode}


def ingest_rows(path: Path, label: str, repeats: int, out_dir: Path) -> list[Row]:
    """Interleaved reader and bare runs, each in its own child; the fastest of each, the reader's peak RSS."""
    results: dict[str, list[dict[str, float]]] = {"reader": [], **{f"bare-{name}": [] for name in BARE_PARSERS}}
    for attempt in range(repeats):
        for mode in results:
            child = run_child(
                [sys.executable, "-m", "bench.ingest", mode, str(path)],
                timeout_s=_CHILD_TIMEOUT_S,
                output=out_dir / f"ingest-{mode}-{attempt}.log",
            )
            if child.returncode != 0:
                raise RuntimeError(f"ingest child ({mode}) failed:\n{child.output[-2000:]}")
            results[mode].append(json.loads(child.output.strip().splitlines()[-1]))
    reader_runs = results.pop("reader")
    reader = min(reader_runs, key=lambda run: run["seconds"])
    fastest = {mode: min(runs, key=lambda run: run["seconds"]) for mode, runs in results.items()}
    bare_mode = min(fastest, key=lambda mode: fastest[mode]["seconds"])
    bare, parser = fastest[bare_mode], bare_mode.removeprefix("bare-")
    bare_rss_kb = max(run["rss_kb"] for run in results[bare_mode])
    reader_rate = reader["events"] / reader["seconds"]
    bare_rate = bare["events"] / bare["seconds"]
    share = reader_rate / bare_rate
    peak_kb = max(run["rss_kb"] for run in reader_runs)
    return [
        Row(
            f"Ingest {label}: reader",
            rate(reader_rate),
            f"{rate(bare_rate)} bare {parser} loop",
            share,
            f"≥ {MIN_EVENTS_PER_S // 1000}k/s and ≥ {MIN_SHARE_OF_BARE:.2f}×",
            verdict(reader_rate >= MIN_EVENTS_PER_S and share >= MIN_SHARE_OF_BARE),
        ),
        Row(
            f"Ingest {label}: reader peak RSS",
            megabytes(peak_kb),
            f"{megabytes(bare_rss_kb)} bare loop",
            peak_kb / bare_rss_kb,
            "< 1 GB",
            verdict(peak_kb < MAX_RSS_KB),
        ),
    ]


def main(argv: list[str]) -> int:
    """Child entry point: one read of PATH; prints {"seconds", "events", "rss_kb"} as JSON."""
    mode, path = argv
    if mode == "reader":
        _import_reader()
    started = time.perf_counter()
    if mode == "reader":
        events = read_with_reader(path)
    else:
        events = _bare_loop(BARE_PARSERS[mode.removeprefix("bare-")], path)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "events": events, "rss_kb": peak_rss_kb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
