"""Keeping CPython's cycle collector off what it cannot free: paused around bulk work that allocates many objects
and forms no cycles, and blind to the objects a process loads once and keeps (`freeze_loaded`).

Each collection re-walks every container still alive, so reading a day or merging 10k inventory rows pays
for its own growing heap again and again (15-30% of those steps, bench/RESULTS.md). Reference counting
still frees everything; cycles made meanwhile are collected once the pause ends. The collector is
process-wide, so pauses are counted: overlapping pauses (threads, nesting) resume it only after the last.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cycle collector for the `with` block (restored after, even on error)."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()


def freeze_loaded() -> None:
    """Move every object alive now out of the collector's generations (`gc.freeze`).

    Called once the definitions are loaded: the modules, Dagster's and ours, live as long as the process, yet
    every full collection of a run walked them all again (~0.2 s of a 10-IP run's ~5 s, bench/RESULTS.md).
    Frozen objects are still freed by reference counting; only their cycles stay, as module-level ones would.
    """
    gc.freeze()
