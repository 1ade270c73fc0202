"""The live translation catalogue: the shipped files, then admins' catalogue ConfigMaps on top.

Entries merge by name (``webhook.translate.catalogue.merge_documents``): files first in name order, then
ConfigMaps in name order. A ConfigMap that breaks the merged catalogue is kept out (the last good
catalogue stays active) and its error is reported in ``/readyz``.
"""

from __future__ import annotations

import logging
import threading
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
                    return
            try:
                index = CatalogueIndex(build_catalogue([*self._base, *(overrides[k] for k in sorted(overrides))]))
            except CatalogueError as err:
                self._errors[name] = str(err)
                log.error("catalogue ConfigMap %s rejected, the last good catalogue stays: %s", name, err)
                return
            self._overrides = overrides
            self._errors.pop(name, None)
            self._index = index
            log.info("catalogue reloaded with ConfigMap %s (%s)", name, event.lower())
