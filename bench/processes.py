"""Peak memory of a process tree while it runs: a thread samples the RSS of every descendant of some root
processes every ~0.5 s (psutil when installed, else /proc) and keeps the highest figures, per kind of process."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

try:  # optional: the same figures from /proc without it
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None

SAMPLE_INTERVAL_S = 0.5
RUN_WORKER = "run worker"


def process_kind(cmdline: str) -> str:
    """What a process of a Dagster deployment is, from its command line."""
    if "resource_tracker" in cmdline:
        return "multiprocessing resource tracker"
    # The code server starts each run in a `spawn` child: `python -c 'from multiprocessing.spawn import ...'`.
    if "multiprocessing.spawn" in cmdline or "--multiprocessing-fork" in cmdline:
        return RUN_WORKER
    if "dagster-webserver" in cmdline:
        return "webserver"
    if "dagster-daemon" in cmdline:
        return "daemon"
    if " api grpc" in cmdline or "code-server" in cmdline:
        return "code server"
    return "other"


@dataclass
class TreePeaks:
    max_tree_kb: int = 0  # highest sum over the whole tree in one sample
    max_workers_sum_kb: int = 0  # highest sum over the run workers alive in one sample
    max_worker_kb: int = 0  # highest single run worker
    max_workers_alive: int = 0
    samples: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # kind -> highest single RSS seen
    commands: dict[str, str] = field(default_factory=dict)  # kind -> one command line (for the record)


class TreeSampler:
    """`with TreeSampler(pids) as sampler: ...` then `sampler.peaks`."""

    def __init__(self, roots: Iterable[int], interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.roots = list(roots)
        self.interval_s = interval_s
        self.peaks = TreePeaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        processes = _tree(self.roots)
        peaks = self.peaks
        workers = [rss for rss, kind, _ in processes if kind == RUN_WORKER]
        peaks.samples += 1
        peaks.max_tree_kb = max(peaks.max_tree_kb, sum(rss for rss, _, _ in processes))
        peaks.max_workers_sum_kb = max(peaks.max_workers_sum_kb, sum(workers))
        peaks.max_worker_kb = max([peaks.max_worker_kb, *workers])
        peaks.max_workers_alive = max(peaks.max_workers_alive, len(workers))
        for rss, kind, command in processes:
            peaks.kinds[kind] = max(peaks.kinds.get(kind, 0), rss)
            peaks.commands.setdefault(kind, command[:160])


def _tree(roots: list[int]) -> list[tuple[int, str, str]]:
    """(RSS in kB, kind, command line) of each root and all its descendants."""
    if psutil is not None:
        return _tree_psutil(roots)
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _ppid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found, pending = [], list(roots)
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, ()))
    out = []
    for pid in found:
        rss, command = _rss_kb(pid), _cmdline(pid)
        if rss:
            out.append((rss, process_kind(command), command))
    return out


def _tree_psutil(roots: list[int]) -> list[tuple[int, str, str]]:
    out = []
    for root in roots:
        with contextlib.suppress(psutil.Error):
            top = psutil.Process(root)
            for process in [top, *top.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    command = " ".join(process.cmdline())
                    out.append((process.memory_info().rss // 1024, process_kind(command), command))
    return out


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            # pid (comm) state ppid ...; comm may hold spaces and parentheses
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode("utf-8", errors="replace").strip()
    except OSError:
        return ""
