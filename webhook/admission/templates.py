"""ResourceClaimTemplate provisioning and garbage collection, through the cluster port.

Templates are content-addressed (``dra-bridge-<hash of spec>``), so "ensure" is idempotent and
two replicas racing to create the same template both succeed. A template of that name that
dra-bridge does not manage, or whose spec differs, is never used silently.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from webhook.cluster import AlreadyExists, ClusterPort
from webhook.errors import TemplateConflict
from webhook.labels import MANAGED_BY, MANAGED_BY_LABEL, SPEC_HASH_LABEL
from webhook.translate.claims import spec_hash


class TemplateProvisioner:
    def __init__(self, cluster: ClusterPort, *, clock: Callable[[], float] = time.time) -> None:
        self._cluster = cluster
        self._clock = clock
        self._last_used: dict[tuple[str, str], float] = {}
        # The cached object last found equal to what its name stands for: the cache replaces the
        # object when the template changes, so the same object needs no second check.
        self._verified: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def ensure(self, template: dict[str, Any], *, dry_run: bool) -> bool:
        """Make sure ``template`` exists; returns True when this call created it.

        On dry-run nothing is written: the Pod will not be stored, so it needs no template.
        """
        meta = template["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            self._last_used[key] = self._clock()
        existing = self._cluster.get_template(*key)
        if existing is None:
            if dry_run:
                return False
            try:
                self._cluster.create_template(template)
                return True
            except AlreadyExists:
                existing = self._cluster.get_template(*key)
                if existing is None:  # created and deleted in between: the next admission retries
                    raise
        if self._verified.get(key) is not existing:
            check_same(existing, template)
            with self._lock:
                self._verified[key] = existing
        return False

    def collect_garbage(self, *, grace_seconds: float) -> list[tuple[str, str]]:
        """Delete managed templates that no Pod references, unused for ``grace_seconds``."""
        now = self._clock()
        referenced = self._cluster.referenced_templates()
        deleted = []
        for template in self._cluster.managed_templates():
            meta = template["metadata"]
            key = (meta["namespace"], meta["name"])
            if key in referenced:
                continue
            with self._lock:
                last_used = self._last_used.get(key, 0.0)
            created = _timestamp(meta.get("creationTimestamp"))
            if now - max(last_used, created) < grace_seconds:
                continue
            self._cluster.delete_template(*key, uid=meta["uid"])
            with self._lock:
                self._last_used.pop(key, None)
                self._verified.pop(key, None)
            deleted.append(key)
        return deleted


class PlannedTemplates:
    """The templates the latest mutations planned, by (namespace, name), bounded: a dry-run Pod's
    templates are never created, so its validation reads what the mutation would have created
    (the real create finds them in the cluster). Per replica: a dry run whose two webhook calls
    reach different replicas is refused where the tenant has per-Pod limits or Pod rules."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._templates: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, template: dict[str, Any]) -> None:
        key = (template["metadata"]["namespace"], template["metadata"]["name"])
        with self._lock:
            self._templates[key] = template
            self._templates.move_to_end(key)
            while len(self._templates) > self._size:
                self._templates.popitem(last=False)

    def get(self, key: tuple[str, str]) -> dict[str, Any] | None:
        with self._lock:
            return self._templates.get(key)


def check_same(existing: dict[str, Any], wanted: dict[str, Any]) -> None:
    meta = existing.get("metadata") or {}
    where = f"ResourceClaimTemplate {meta.get('namespace')}/{meta.get('name')}"
    if (meta.get("labels") or {}).get(MANAGED_BY_LABEL) != MANAGED_BY:
        raise TemplateConflict(
            f"{where} exists but is not managed by dra-bridge; refusing to bind GPU claims to it. "
            "Rename or delete it, or opt this Pod out with label dra-bridge.io/ignore=true"
        )
    want = (wanted.get("spec") or {}).get("spec") or {}
    have = (existing.get("spec") or {}).get("spec") or {}
    if spec_hash(have) != spec_hash(want) or spec_hash(have) != meta["labels"].get(SPEC_HASH_LABEL):
        raise TemplateConflict(
            f"{where} is labelled as managed by dra-bridge but its spec differs from the one its name stands for; "
            "delete it so dra-bridge can recreate it"
        )


def _timestamp(value: object) -> float:
    if not isinstance(value, str) or not value:
        return 0.0
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
