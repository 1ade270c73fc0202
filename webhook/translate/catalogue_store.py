"""The live translation catalogue: the shipped files, then admins' catalogue ConfigMaps on top.

Entries merge by name (``webhook.translate.catalogue.merge_documents``): files first in name order, then
ConfigMaps in name order. A ConfigMap that breaks the merged catalogue is kept out (the last good
catalogue stays active) and its error is reported in ``/readyz``. The store is the catalogue's one
home: consumers read ``index`` when they need it, and those that derive state from it (the quota's
usage ledger prices claims by it) ``subscribe`` and are told after every change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from webhook.cluster import EventType
from webhook.labels import CATALOGUE_KEY
from webhook.translate.catalogue import CatalogueError, CatalogueIndex, build_catalogue, parse_document

log = logging.getLogger("dra_bridge.catalogue")


class CatalogueStore:
    def __init__(self, files: list[Path]) -> None:
        self._base = [parse_document(f.read_text(encoding="utf-8"), origin=str(f)) for f in files]
        self._overrides: dict[str, dict[str, Any]] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._index = CatalogueIndex(build_catalogue(self._base))
        self._subscribers: list[Callable[[CatalogueIndex], None]] = []

    def subscribe(self, on_change: Callable[[CatalogueIndex], None]) -> None:
        """Call ``on_change`` with the new index after every change that takes effect."""
        self._subscribers.append(on_change)

    @property
    def index(self) -> CatalogueIndex:
        return self._index

    @property
    def errors(self) -> dict[str, str]:
        with self._lock:
            return dict(self._errors)

    def documents(self) -> list[dict[str, Any]]:
        """Every document in force, for validating a proposed ConfigMap against the rest."""
        with self._lock:
            return [*self._base, *(self._overrides[k] for k in sorted(self._overrides))]

    def on_configmap(self, event: EventType, configmap: dict[str, Any]) -> None:
        index = self._apply(event, configmap)
        if index is not None:
            for on_change in self._subscribers:
                on_change(index)

    def _apply(self, event: EventType, configmap: dict[str, Any]) -> CatalogueIndex | None:
        """The new index when the ConfigMap changed the catalogue; None when it was kept out."""
        name = str((configmap.get("metadata") or {}).get("name"))
        with self._lock:
            overrides = dict(self._overrides)
            if event == "DELETED":
                overrides.pop(name, None)
            else:
                try:
                    text = str((configmap.get("data") or {})[CATALOGUE_KEY])
                    overrides[name] = parse_document(text, origin=f"ConfigMap {name}")
                except (KeyError, CatalogueError) as err:
                    self._errors[name] = str(err) if isinstance(err, CatalogueError) else f"no key {CATALOGUE_KEY}"
                    log.error("catalogue ConfigMap %s rejected, the last good catalogue stays: %s", name, err)
                    return None
            try:
                index = CatalogueIndex(build_catalogue([*self._base, *(overrides[k] for k in sorted(overrides))]))
            except CatalogueError as err:
                self._errors[name] = str(err)
                log.error("catalogue ConfigMap %s rejected, the last good catalogue stays: %s", name, err)
                return None
            self._overrides = overrides
            self._errors.pop(name, None)
            self._index = index
            log.info("catalogue reloaded with ConfigMap %s (%s)", name, event.lower())
            return index
