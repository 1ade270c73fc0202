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
    Every change bumps the generation and tells the subscribers (the quota reprices)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slices: dict[str, Counter[DeviceShape]] = {}
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
                published: Counter[DeviceShape] = Counter()
                for counted in self._slices.values():
                    published.update(counted)
                self._snapshot = Snapshot(self._generation, dict(published), self._models, dict(self._classes))
            return self._snapshot

    def _changed(self) -> None:
        with self._lock:
            self._generation += 1
            self._snapshot = None
        snapshot = self.snapshot()
        for on_change in self._subscribers:
            on_change(snapshot)

    def set_models(self, models: Iterable[DeviceShape]) -> None:
        with self._lock:
            self._models = tuple(dict.fromkeys(models))
        self._changed()

    def on_slice(self, event: str, resource_slice: dict[str, Any]) -> None:
        name = str((resource_slice.get("metadata") or {}).get("name", ""))
        with self._lock:
            if event == "DELETED":
                self._slices.pop(name, None)
                self.errors.pop(f"ResourceSlice {name}", None)
            else:
                try:
                    self._slices[name] = shapes_of_slice(resource_slice)
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
