"""Tests for the counted pause of the cycle collector: nested and overlapping pauses, errors, and a
collector that was off before stays off."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from enrichment_pipeline.core.gc_pause import cyclic_gc_paused


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.enable()
    yield
    gc.enable() if was_enabled else gc.disable()


def test_pause_disables_and_restores_even_on_error() -> None:
    with pytest.raises(RuntimeError), cyclic_gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_nested_pauses_resume_only_after_the_outermost() -> None:
    with cyclic_gc_paused():
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_overlapping_pauses_in_threads_resume_after_the_last() -> None:
    inner_started, outer_done = threading.Event(), threading.Event()
    seen: list[bool] = []

    def other_thread() -> None:
        with cyclic_gc_paused():
            inner_started.set()
            outer_done.wait(timeout=10)
            seen.append(gc.isenabled())  # the first pause ended meanwhile: still paused for this one

    with cyclic_gc_paused():
        worker = threading.Thread(target=other_thread)
        worker.start()
        assert inner_started.wait(timeout=10)
    outer_done.set()
    worker.join(timeout=10)
    assert seen == [False]
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with cyclic_gc_paused():
        pass
    assert not gc.isenabled()


def test_loading_the_definitions_freezes_what_they_loaded() -> None:
    # A fresh interpreter: this one may have loaded (and frozen) the definitions already.
    code = (
        "import gc; before = gc.get_freeze_count(); import enrichment_pipeline.definitions;"
        " print(before, gc.get_freeze_count())"
    )
    before, after = map(
        int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert before == 0
    assert after > 100_000  # Dagster, pandas and our modules, out of the collector's generations
