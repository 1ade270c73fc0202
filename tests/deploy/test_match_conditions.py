"""The Pod webhooks' CEL ``matchConditions``: evaluated with celpy as the apiserver would.

The condition decides which Pods the apiserver sends to the webhook at all, so a name it misses is
never converted nor refused. It is therefore checked against the shipped catalogue: every legacy
name or annotation that the real conversion acts on must match. Read from ``deploy/base`` so these
tests need no kustomize; the rendered overlays are compared with it in test_manifests.py.
"""

from __future__ import annotations

import re
from typing import Any

import celpy
import pytest
import yaml

from tests.conftest import container, pod
from tests.deploy.conftest import DEPLOY
from webhook.translate.catalogue import CatalogueIndex
from webhook.translate.convert import convert_documents

WEBHOOKS = [d for d in yaml.safe_load_all((DEPLOY / "base" / "webhooks.yaml").read_text("utf-8")) if d]
POD_WEBHOOKS = [w for config in WEBHOOKS for w in config["webhooks"] if w["rules"][0]["resources"] == ["pods"]]
EXPRESSION: str = next(w for w in POD_WEBHOOKS if w["name"].startswith("pods.mutate"))["matchConditions"][0][
    "expression"
]
VALIDATE_EXPRESSION: str = next(w for w in POD_WEBHOOKS if w["name"].startswith("pods.validate"))["matchConditions"][0][
    "expression"
]
# One real name per catalogue pattern, for sources that list patterns rather than names.
PATTERN_SAMPLES = {"nvidia-mig": "nvidia.com/mig-1g.5gb"}


@pytest.fixture(scope="module")
def program() -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(EXPRESSION))


def matches(program: celpy.Runner, obj: dict[str, Any]) -> bool:
    result = program.evaluate({"object": celpy.json_to_cel(obj)})
    assert isinstance(result, celpy.celtypes.BoolType), f"not a bool: {result!r}"
    return bool(result)


def test_the_validating_pod_webhook_sees_what_the_mutating_one_does_and_claim_templates() -> None:
    """The validating webhook refuses unconverted Pods (the mutating expression) and checks the
    quota of Pods that claim devices, through templates or by name (per-Pod limits count both)."""
    assert len(POD_WEBHOOKS) == 2
    assert VALIDATE_EXPRESSION.startswith(EXPRESSION)
    assert "(has(object.spec.resourceClaims) && size(object.spec.resourceClaims) > 0)" in VALIDATE_EXPRESSION


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ([{"name": "gpu-main", "resourceClaimTemplateName": "dra-bridge-1234"}], True),
        # an existing claim: charged when it was created, and counted for the Pod's per-Pod limits
        ([{"name": "mine", "resourceClaimName": "shared-claim"}], True),
        ([], False),
    ],
)
def test_the_validating_expression_selects_pods_that_claim_devices(
    claims: list[dict[str, str]], expected: bool
) -> None:
    env = celpy.Environment()
    program = env.program(env.compile(VALIDATE_EXPRESSION))
    subject = pod(container(limits={"cpu": "1"}), resourceClaims=claims) if claims else pod(container())
    assert matches(program, subject) is expected


@pytest.mark.parametrize(
    ("description", "obj", "expected"),
    [
        ("nvidia.com/gpu limit", pod(container(limits={"nvidia.com/gpu": "1"})), True),
        ("cpu and memory only", pod(container(limits={"cpu": "1", "memory": "1Gi"})), False),
        ("no resources at all", pod(container()), False),
        ("KAI gpu-fraction annotation", pod(container(), annotations={"gpu-fraction": "0.5"}), True),
        ("KAI gpu-memory annotation", pod(container(), annotations={"gpu-memory": "4096"}), True),
        ("KAI device count alone", pod(container(), annotations={"gpu-fraction-num-devices": "2"}), True),
        ("unrelated annotations", pod(container(), annotations={"team": "a", "gpu": "1"}), False),
        ("request without limit", pod(container(requests={"volcano.sh/vgpu-number": "1"})), True),
        ("GPU in the second container", pod(container("a"), container("b", limits={"amd.com/gpu": "1"})), True),
        (
            "GPU in an init container",
            pod(container(), initContainers=[container("i", limits={"google.com/tpu": "4"})]),
            True,
        ),
        ("cpu-only init container", pod(container(), initContainers=[container("i", limits={"cpu": "1"})]), False),
        ("HAMi memory", pod(container(limits={"nvidia.com/gpumem": "8192"})), True),
        ("Aliyun share", pod(container(limits={"aliyun.com/gpu-mem": "4"})), True),
        ("Tencent core", pod(container(limits={"tencent.com/vcuda-core": "50"})), True),
        ("Intel xe", pod(container(limits={"gpu.intel.com/xe": "1"})), True),
        ("amd.com prefix that is not the GPU", pod(container(limits={"amd.com/xilinx": "1"})), False),
        (
            "DRA-converted Pod: claims only",
            pod(
                {"name": "c", "image": "i", "resources": {"claims": [{"name": "gpu-c"}]}},
                resourceClaims=[{"name": "gpu-c", "resourceClaimTemplateName": "dra-bridge-0123456789ab"}],
            ),
            False,
        ),
    ],
)
def test_expression_on_sample_pods(
    program: celpy.Runner, description: str, obj: dict[str, Any], expected: bool
) -> None:
    assert matches(program, obj) is expected, description


def test_pod_without_metadata_annotations_or_init_containers_does_not_error(program: celpy.Runner) -> None:
    bare = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "x-"},
        "spec": {"containers": [{"name": "c"}]},
    }
    assert matches(program, bare) is False


def catalogue_probes(index: CatalogueIndex) -> list[tuple[str, dict[str, Any]]]:
    """A one-container Pod per legacy name or annotation the shipped catalogue knows."""
    probes: list[tuple[str, dict[str, Any]]] = []
    for source in index.catalogue.sources:
        for resource in source.resources:
            name = resource.name
            if name is None:
                assert source.name in PATTERN_SAMPLES, f"add a sample name for the patterns of source {source.name!r}"
                name = PATTERN_SAMPLES[source.name]
                assert re.fullmatch(resource.pattern, name), (resource.pattern, name)
            probes.append((name, pod(container(limits={name: "1"}))))
        for annotation in source.annotations or []:
            probes.append((annotation.name, pod(container(), annotations={annotation.name: "1"})))
    return probes


def test_every_name_the_conversion_acts_on_reaches_the_webhook(program: celpy.Runner, index: CatalogueIndex) -> None:
    probes = catalogue_probes(index)
    assert len(probes) >= 20
    acted_on = []
    for name, obj in probes:
        result = convert_documents([obj], index=index, namespace="team-a")
        if result.converted or result.errors:  # the webhook would rewrite or refuse this Pod
            acted_on.append(name)
            assert matches(program, obj), f"matchConditions skips Pods with {name!r}, which the catalogue converts"
    assert len(acted_on) > 20, acted_on


def test_expression_stays_cheap() -> None:
    # No regular expressions and no nested lists beyond containers x (limits, requests) x keys:
    # the apiserver charges each match condition against a per-call CEL cost budget.
    assert "matches(" not in EXPRESSION
    assert EXPRESSION.count(".exists(") == 3
    assert ".all(" not in EXPRESSION and ".map(" not in EXPRESSION and ".filter(" not in EXPRESSION
    assert len(EXPRESSION) < 1024


def test_the_validating_expression_selects_pods_asking_for_a_device_class_by_name() -> None:
    env = celpy.Environment()
    program = env.program(env.compile(VALIDATE_EXPRESSION))
    asks = pod(container(limits={"deviceclass.resource.kubernetes.io/gpu.nvidia.com": "2"}))
    assert matches(program, asks) is True
    assert matches(program, pod(container(limits={"cpu": "2"}))) is False
