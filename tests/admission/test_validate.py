"""The validating side for issue-2 objects: unconverted Pods and tampered managed templates."""

from __future__ import annotations

import copy

import pytest

from tests.admission.helpers import request
from tests.conftest import container, pod
from webhook.admission.engine import Admission, AdmissionSettings
from webhook.cluster.memory import InMemoryCluster
from webhook.translate.catalogue import CatalogueIndex
from webhook.translate.rewrite import rewrite_pod


@pytest.fixture
def admission(index: CatalogueIndex) -> Admission:
    cluster = InMemoryCluster()
    cluster.add_namespace("team-a")
    return Admission(cluster=cluster, catalogue=lambda: index)


def test_unconverted_legacy_pod_is_denied(admission: Admission) -> None:
    decision = admission.validate(request(pod(container(limits={"nvidia.com/gpu": "1"}))))
    assert decision.outcome == "denied" and decision.reason == "unconverted"
    assert "nvidia.com/gpu" in decision.message and "mutating webhook did not run" in decision.message


def test_converted_pod_is_allowed(admission: Admission, index: CatalogueIndex) -> None:
    converted = rewrite_pod(pod(container(limits={"nvidia.com/gpu": "1"})), index=index, namespace="team-a").pod
    assert admission.validate(request(converted)).outcome == "allowed"


def test_requirement_can_be_switched_off(index: CatalogueIndex) -> None:
    admission = Admission(
        cluster=InMemoryCluster(), catalogue=lambda: index, settings=AdmissionSettings(require_conversion=False)
    )
    assert admission.validate(request(pod(container(limits={"nvidia.com/gpu": "1"})))).outcome == "allowed"


def test_managed_template_must_match_its_hash(admission: Admission, index: CatalogueIndex) -> None:
    template = rewrite_pod(pod(container(limits={"nvidia.com/gpu": "1"})), index=index, namespace="team-a").templates[0]
    assert admission.validate(request(template, kind="ResourceClaimTemplate")).outcome == "allowed"
    tampered = copy.deepcopy(template)
    tampered["spec"]["spec"]["devices"]["requests"][0]["firstAvailable"][0]["count"] = 4
    decision = admission.validate(request(tampered, kind="ResourceClaimTemplate", operation="UPDATE"))
    assert decision.outcome == "denied" and decision.reason == "template-tampered"


def test_unmanaged_template_is_not_checked(admission: Admission) -> None:
    template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "t"},
        "spec": {"spec": {}},
    }
    assert admission.validate(request(template, kind="ResourceClaimTemplate")).reason == "no-policy"
