"""Shared fixtures: the shipped catalogue, schema validation, Pod builders."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from webhook.serving.server import catalogue_files
from webhook.translate.catalogue import CatalogueIndex, load_catalogue

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
SCHEMA_VERSIONS = ("1.34", "1.37")


@pytest.fixture(scope="session")
def index() -> CatalogueIndex:
    return CatalogueIndex(load_catalogue(catalogue_files(POLICIES)))


def assert_valid(obj: dict[str, Any]) -> None:
    """Strict schema validation against the Kubernetes 1.34 and 1.37 OpenAPI schemas."""
    for version in SCHEMA_VERSIONS:
        try:
            kubernetes_validate.validate(copy.deepcopy(obj), version, strict=True)
        except kubernetes_validate.ValidationError as err:
            raise AssertionError(
                f"{obj.get('kind')} {obj.get('metadata', {}).get('name')} invalid for {version}: {err}"
            ) from None


def pod(*containers: dict[str, Any], annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "p", "namespace": "team-a"}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {"containers": list(containers), **spec}}


def container(
    name: str = "main", *, limits: dict[str, Any] | None = None, requests: dict[str, Any] | None = None
) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if limits is not None:
        resources["limits"] = dict(limits)
    if requests is not None:
        resources["requests"] = dict(requests)
    out: dict[str, Any] = {"name": name, "image": "registry.example/app:1"}
    if resources:
        out["resources"] = resources
    return out


def pytest_collection_finish(session: pytest.Session) -> None:
    """On a first run, build the Go tools the selected tests need, with progress (tests/prebuild.py)."""
    from tests.prebuild import prebuild

    prebuild(session)
