"""Collect-and-freeze (webhook/serving/collector.py): frozen objects are skipped, the next settle reclaims."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from webhook.serving.collector import settle
from webhook.serving.metrics import Metrics
from webhook.serving.server import _settle_collector


class _Node:
    def __init__(self) -> None:
        self.other: Any = None


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # leave the interpreter as the other tests expect it


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_settle_freezes_survivors_and_the_next_settle_reclaims_their_dropped_cycles() -> None:
    kept = {"cache": list(range(10))}
    cycle = _cycle()  # garbage already: collected by this settle, not frozen
    paused, frozen = settle()
    assert cycle() is None and frozen == gc.get_freeze_count() > 0 and paused >= 0

    alive = _Node()
    alive.other = _Node()
    alive.other.other = alive
    settle()  # the cycle is alive: frozen
    ref = weakref.ref(alive)
    del alive  # now garbage, but frozen: ordinary collections skip it
    gc.collect()
    assert ref() is not None
    settle()  # unfreeze, collect, freeze
    assert ref() is None
    assert kept["cache"] == list(range(10))  # what is still referenced is never touched


def test_reference_counting_still_frees_frozen_objects() -> None:
    class Plain:
        pass

    obj = Plain()
    settle()
    ref = weakref.ref(obj)
    del obj
    assert ref() is None


def test_the_server_task_waits_for_the_caches_then_settles() -> None:
    class Cluster:
        synced = False

        def ready(self) -> tuple[bool, str]:
            return self.synced, ""

    cluster, metrics = Cluster(), Metrics()
    runtime: Any = SimpleNamespace(
        cluster=cluster, metrics=metrics, settings=SimpleNamespace(gc_settle_interval_seconds=60.0)
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(_settle_collector(runtime, stop, poll=0.01))
        await asyncio.sleep(0.05)
        assert metrics.gc_frozen.value() == 0 and gc.get_freeze_count() == 0  # not before the caches sync
        cluster.synced = True
        for _ in range(100):
            await asyncio.sleep(0.01)
            if metrics.gc_frozen.value() > 0:
                break
        assert metrics.gc_frozen.value() > 0 and gc.get_freeze_count() > 0
        stop.set()
        await asyncio.wait_for(task, 1)

    asyncio.run(scenario())
