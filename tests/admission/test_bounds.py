"""The work one review may cost: a Pod past the container bound is refused with a message, not decided."""

from __future__ import annotations

from tests.admission.helpers import request
from tests.conftest import POLICIES, container, pod
from webhook.admission.engine import Admission, AdmissionSettings
from webhook.serving.server import build_runtime, catalogue_files, dev_cluster
from webhook.serving.settings import Settings
from webhook.translate.catalogue import CatalogueIndex, load_catalogue


def admission(max_containers: int) -> Admission:
    index = CatalogueIndex(load_catalogue(catalogue_files(POLICIES)))
    return Admission(
        cluster=dev_cluster(POLICIES),
        catalogue=lambda: index,
        settings=AdmissionSettings(max_containers=max_containers),
    )


def gpu_pod(containers: int) -> dict[str, object]:
    return pod(*(container(f"c{n}", limits={"nvidia.com/gpu": "1"}) for n in range(containers)))


def test_a_pod_past_the_bound_is_refused_413_by_both_webhooks() -> None:
    engine = admission(max_containers=8)
    for decide in (engine.mutate, engine.validate):
        decision = decide(request(gpu_pod(9)))
        assert decision.outcome == "denied" and decision.reason == "too-large"
        assert decision.response.status is not None and decision.response.status.code == 413
        assert "the Pod has 9 containers; dra-bridge decides Pods of at most 8" in decision.message


def test_a_pod_at_the_bound_is_converted() -> None:
    decision = admission(max_containers=8).mutate(request(gpu_pod(8)))
    assert decision.outcome == "patched" and len(decision.conversions) == 8


def test_the_bound_is_a_setting() -> None:
    runtime = build_runtime(
        Settings(dev=True, policies_dir=POLICIES, max_pod_containers=3), cluster=dev_cluster(POLICIES)
    )
    assert runtime.admission.mutate(request(gpu_pod(4))).reason == "too-large"
