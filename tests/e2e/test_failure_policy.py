"""What an outage of dra-bridge means, with the failure policies the shipped configurations use."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.e2e.helpers import BridgeServer, Kube, legacy_keys, pod, wait_for, webhook_configurations

pytestmark = pytest.mark.e2e


def policies() -> dict[str, str]:
    return {
        hook["name"]: hook["failurePolicy"]
        for config in webhook_configurations(port=1, ca_pem=b"")
        for hook in config["webhooks"]
        if "pods" in hook["rules"][0]["resources"]
    }


def test_a_stopped_webhook_refuses_legacy_pods_instead_of_admitting_them_unconverted(
    bridge: BridgeServer, kube: Kube, namespace: str, timings: dict[str, float]
) -> None:
    """The mutating webhook fails open (``failurePolicy: Ignore``): an outage never blocks Pods by
    itself. The validating webhook fails closed (``Fail``): the unconverted legacy Pod that the
    skipped mutation lets through is refused because the validating webhook cannot be reached, so
    no Pod is ever stored with device-plugin requests nobody serves. Pods without legacy requests do
    not match either webhook (``matchConditions``) and are not affected by the outage."""
    assert policies() == {"pods.mutate.dra-bridge.io": "Ignore", "pods.validate.dra-bridge.io": "Fail"}
    legacy = pod("legacy", {"nvidia.com/gpu": "1"})
    plain = pod("plain")
    stopped = bridge.stop()
    try:
        refused = kube.create(legacy, "-n", namespace)
        assert refused.returncode != 0
        assert 'failed calling webhook "pods.validate.dra-bridge.io"' in refused.stderr, refused.stderr
        assert kube.get("pod", "legacy", namespace) is None
        assert kube.create(plain, "-n", namespace).returncode == 0  # not a GPU Pod: not affected
    finally:
        started = time.monotonic()
        bridge.start()
        timings["dra-bridge restart"] = time.monotonic() - started
        timings["dra-bridge SIGTERM"] = stopped

    # Back up: the same Pod is converted again.
    admitted = wait_for(lambda: _created(kube, legacy, namespace), 30, what="legacy Pod admitted after the restart")
    assert legacy_keys(admitted, {"nvidia.com/gpu"}) == [] and admitted["spec"]["resourceClaims"]


def _created(kube: Kube, manifest: dict[str, Any], namespace: str) -> dict[str, Any] | None:
    result = kube.create(manifest, "-n", namespace)
    return json.loads(result.stdout) if result.returncode == 0 else None
