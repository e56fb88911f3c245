"""Timing helpers: the wall time of a call in this process, and the wall time plus peak RSS of a child process
(its whole process group is killed on timeout and when it ends, so nothing it started lingers)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
_SAMPLE_INTERVAL_S = 0.05  # how often a child's peak RSS is read; also the resolution of its wall time
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def timed(action: Callable[[], T]) -> tuple[float, T]:
    """The wall time of one call, and its result."""
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


@dataclass(frozen=True)
class ChildRun:
    seconds: float
    peak_rss_kb: int  # highest VmHWM sampled while it ran (0 if it ended before the first sample)
    returncode: int
    output: str  # stdout and stderr, interleaved


class ChildTimeout(RuntimeError):
    """The child did not finish in time and was killed with its whole process group."""


def peak_rss_kb(pid: int | str = "self") -> int:
    """VmHWM, the peak resident set of the process's own memory image since its exec.

    Not ru_maxrss: Linux carries the parent's high-water mark into a forked child across exec, so a
    child of a big parent would report the parent's peak.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_child(
    command: Sequence[str], *, env: Mapping[str, str] | None = None, timeout_s: float, output: Path
) -> ChildRun:
    """Run `command` from the project root with its output in `output`; kill its process group on timeout."""
    with open(output, "w+b") as log:
        started = time.perf_counter()
        child = subprocess.Popen(
            list(command),
            cwd=PROJECT_ROOT,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        peak = 0
        try:
            while child.poll() is None:
                peak = max(peak, peak_rss_kb(child.pid))
                if time.perf_counter() - started > timeout_s:
                    raise ChildTimeout(f"{' '.join(command)} took longer than {timeout_s:.0f} s; output in {output}")
                time.sleep(_SAMPLE_INTERVAL_S)
        finally:
            # Also on success: step workers or servers the child started must not outlive it.
            _kill_group(child.pid)
            child.wait()
        seconds = time.perf_counter() - started
        log.seek(0)
        text = log.read().decode("utf-8", errors="replace")
    return ChildRun(seconds, peak, child.returncode, text)


def _kill_group(group: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # nothing left in the group
        os.killpg(group, signal.SIGKILL)
