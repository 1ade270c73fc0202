"""The unified DeviceClasses, rendered from the catalogue's drivers.

One class per (kind, driver): ``whole.<driver>.<domain>``, ``partition.<driver>.<domain>`` and
``shared.<driver>.<domain>``. Claims never name a vendor's own class, so the semantics of a kind are
the same on every backend; only the capacity names and steps differ, and those are the
catalogue's business. No class sets ``extendedResourceName``: that is left to classes that serve a
legacy name natively (KEP-5004), which dra-bridge then leaves alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from webhook.labels import DESCRIPTION_ANNOTATION, DEVICE_KIND_LABEL, DRIVER_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from webhook.translate.catalogue import DEVICE_KINDS, Catalogue, CatalogueError


def render_device_classes(catalogue: Catalogue, *, drivers: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """DeviceClass manifests for the chosen drivers (all of the catalogue's when ``None``)."""
    known = [d.name for d in catalogue.drivers]
    chosen = known if drivers is None else list(drivers)
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise CatalogueError(f"unknown driver(s) {', '.join(unknown)}; the catalogue has {', '.join(known)}")
    classes = []
    for name in chosen:
        driver = catalogue.driver(name)
        for kind in DEVICE_KINDS:
            spec = driver.kind(kind)
            if spec is None:
                continue
            expression = f"device.driver == '{driver.driver}'"
            if spec.selector:
                expression = f"{expression} && ({spec.selector})"
            classes.append(
                {
                    "apiVersion": "resource.k8s.io/v1",
                    "kind": "DeviceClass",
                    "metadata": {
                        "name": catalogue.class_name(kind, driver.name),
                        "labels": {MANAGED_BY_LABEL: MANAGED_BY, DEVICE_KIND_LABEL: kind, DRIVER_LABEL: driver.name},
                        "annotations": {DESCRIPTION_ANNOTATION: _describe(kind, driver.description)},
                    },
                    "spec": {"selectors": [{"cel": {"expression": expression}}]},
                }
            )
    return classes


def _describe(kind: str, driver: str) -> str:
    what = {
        "whole": "Whole devices, one claim each",
        "partition": "Fixed partitions of a device (MIG profile or its peers), selected by profile",
        "shared": "Shared devices with consumable memory and compute capacity (fractional GPU or vGPU)",
    }[kind]
    return f"{what}. {driver}".strip()
