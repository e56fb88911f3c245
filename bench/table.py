"""Benchmark result rows and their rendering: an aligned text table for the terminal, markdown for RESULTS.md.
A row holds a measured value, the reference it is compared with (measured in the same run) and the verdict."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass

HEADER = ("measure", "value", "reference", "ratio", "target", "verdict")
PASS, FAIL, INFO, SKIPPED = "pass", "FAIL", "info", "skipped"


@dataclass(frozen=True)
class Row:
    measure: str
    value: str
    reference: str
    ratio: float | None
    target: str
    verdict: str  # PASS, FAIL, INFO (no target: shown for context) or SKIPPED (could not be measured here)

    def cells(self) -> tuple[str, ...]:
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}×"
        return (self.measure, self.value, self.reference, ratio, self.target, self.verdict)


def verdict(ok: bool) -> str:
    return PASS if ok else FAIL


def seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def rate(events_per_s: float) -> str:
    return f"{events_per_s / 1000:.0f}k events/s"


def megabytes(kilobytes: float) -> str:
    return f"{kilobytes / 1024:.0f} MB"


def text_table(rows: Sequence[Row]) -> str:
    """Columns padded to their widest cell, separated by ` | `."""
    lines = [HEADER, *(row.cells() for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(HEADER))]
    rendered = [
        " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip() for line in lines
    ]
    rendered.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(rendered)


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line about where the numbers come from: CPU model, cores, memory, OS, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as info:
            total_kb = int(next(line.split()[1] for line in info if line.startswith("MemTotal")))
        memory = f", {total_kb / 1024 / 1024:.0f} GB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    python = f"Python {sys.version.split()[0]}"
    return f"{cpu}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}, {python}"


def load_average() -> str:
    """The 1-minute load average: how busy the shared machine was (2 cores: above 2 means waiting)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"
