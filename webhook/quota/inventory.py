"""The live device inventory: ResourceSlices and DeviceClasses as the cluster port delivers them,
plus the catalogue's known models (``webhook.quota.devices`` reduces them to shapes)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from webhook.quota.devices import DeviceShape, InventoryError, Snapshot, class_selectors, shapes_of_slice


class Inventory:
    """ResourceSlices and DeviceClasses as the cluster port delivers them, plus the known models.
    Every change bumps the generation and tells the subscribers (the quota reprices).

    A slice event costs O(its devices): the devices of all slices are counted by shape as slices
    come and go, and a snapshot (O(shapes)) is taken on the first read after a change, not per
    event, so the thousands of slices an informer lists at start-up cost O(devices) in all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slices: dict[str, Counter[DeviceShape]] = {}
        self._published: Counter[DeviceShape] = Counter()  # over every slice
        self._classes: dict[str, tuple[str, ...]] = {}
        self._models: tuple[DeviceShape, ...] = ()
        self._generation = 0
        self._snapshot: Snapshot | None = None
        self._subscribers: list[Callable[[Snapshot], None]] = []
        self.errors: dict[str, str] = {}

    @property
    def generation(self) -> int:
        return self._generation

    def subscribe(self, on_change: Callable[[Snapshot], None]) -> None:
        self._subscribers.append(on_change)

    def snapshot(self) -> Snapshot:
        with self._lock:
            if self._snapshot is None:
                self._snapshot = Snapshot(self._generation, dict(self._published), self._models, dict(self._classes))
            return self._snapshot

    def _changed(self) -> None:
        with self._lock:
            self._generation += 1
            self._snapshot = None
            subscribers = list(self._subscribers)
        if not subscribers:
            return  # taken on the next read
        snapshot = self.snapshot()
        for on_change in subscribers:
            on_change(snapshot)

    def _replace(self, name: str, counted: Counter[DeviceShape] | None) -> None:
        """Lock held: slice ``name`` now publishes ``counted`` (None: it is gone)."""
        old = self._slices.pop(name, None)
        if old is not None:
            for shape, n in old.items():
                left = self._published[shape] - n
                if left > 0:
                    self._published[shape] = left
                else:
                    del self._published[shape]
        if counted is not None:
            self._slices[name] = counted
            self._published.update(counted)

    def set_models(self, models: Iterable[DeviceShape]) -> None:
        with self._lock:
            self._models = tuple(dict.fromkeys(models))
        self._changed()

    def on_slice(self, event: str, resource_slice: dict[str, Any]) -> None:
        name = str((resource_slice.get("metadata") or {}).get("name", ""))
        with self._lock:
            if event == "DELETED":
                self._replace(name, None)
                self.errors.pop(f"ResourceSlice {name}", None)
            else:
                try:
                    self._replace(name, shapes_of_slice(resource_slice))
                    self.errors.pop(f"ResourceSlice {name}", None)
                except InventoryError as err:
                    self.errors[f"ResourceSlice {name}"] = str(err)
                    return
        self._changed()

    def on_device_class(self, event: str, device_class: dict[str, Any]) -> None:
        name = str((device_class.get("metadata") or {}).get("name", ""))
        with self._lock:
            if event == "DELETED":
                self._classes.pop(name, None)
            else:
                self._classes[name] = class_selectors(device_class)
        self._changed()
