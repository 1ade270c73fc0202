"""What a claim costs: counted as core quota counts, plus memory and compute."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from tests.conftest import container, pod
from webhook.quota.charge import ALL_MODE_COUNT, ClassResolver, basis, charge
from webhook.translate.catalogue import CatalogueIndex
from webhook.translate.rewrite import rewrite_pod

GI = 2**30


def spec_for(index: CatalogueIndex, limits: dict[str, Any]) -> dict[str, Any]:
    plan = rewrite_pod(pod(container(limits=limits)), index=index, namespace="ns")
    spec: dict[str, Any] = plan.templates[0]["spec"]["spec"]
    return spec


@pytest.fixture
def classes(index: CatalogueIndex) -> ClassResolver:
    return ClassResolver(index.catalogue, declared_memory={"whole.nvidia.dra-bridge.io": Fraction(40 * GI)})


@pytest.mark.parametrize(
    ("limits", "devices", "memory", "compute"),
    [
        # firstAvailable: the largest alternative per class; whole devices at the declared (or catalogue) memory
        ({"nvidia.com/gpu": "2"}, {"whole.nvidia.dra-bridge.io": 2, "whole.example.dra-bridge.io": 2}, 160 * GI, 200),
        (
            {"nvidia.com/gpumem": "4096", "nvidia.com/gpucores": "30"},
            {"shared.hami-core.dra-bridge.io": 1, "shared.example.dra-bridge.io": 1},
            4 * GI,
            30,
        ),
        (
            {"nvidia.com/gpu": "2", "nvidia.com/gpumem": "1024"},
            {"shared.hami-core.dra-bridge.io": 2, "shared.nvidia.dra-bridge.io": 2, "shared.example.dra-bridge.io": 2},
            2 * GI,
            0,
        ),
        # a percentage: the largest card's share, and the same share of compute
        (
            {"nvidia.com/gpumem-percentage": "50"},
            {"shared.hami-core.dra-bridge.io": 1, "shared.nvidia.dra-bridge.io": 1, "shared.example.dra-bridge.io": 1},
            40 * GI,
            50,
        ),
        # MIG 3g.20gb: 20 GB and 3/7 of a GPU as the partition; its vGPU equivalent rounds both up
        # (19074Mi, 43 %), and the larger alternative is charged
        (
            {"nvidia.com/mig-3g.20gb": "1"},
            {"partition.nvidia.dra-bridge.io": 1, "shared.hami-core.dra-bridge.io": 1},
            19074 * 2**20,
            43,
        ),
        ({"google.com/tpu": "4"}, {"whole.tpu.dra-bridge.io": 4}, 0, 400),
    ],
)
def test_charge_of_converted_claims(
    index: CatalogueIndex,
    classes: ClassResolver,
    limits: dict[str, Any],
    devices: dict[str, int],
    memory: int,
    compute: int,
) -> None:
    result = charge(basis(spec_for(index, limits)), classes=classes)
    assert dict(result.devices) == devices
    assert result.memory == memory
    assert result.compute == compute
    assert result.claims == 1


def test_all_mode_counts_32(classes: ClassResolver) -> None:
    spec = {
        "devices": {
            "requests": [
                {"name": "r", "exactly": {"deviceClassName": "whole.tpu.dra-bridge.io", "allocationMode": "All"}}
            ]
        }
    }
    assert charge(basis(spec), classes=classes).devices == {"whole.tpu.dra-bridge.io": ALL_MODE_COUNT}


def test_foreign_class_counts_as_whole_devices(classes: ClassResolver) -> None:
    spec = {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": "gpu.nvidia.com", "count": 3}}]}}
    result = charge(basis(spec), classes=classes)
    assert result.devices == {"gpu.nvidia.com": 3} and result.compute == 300 and result.memory == 0


def test_requests_add_up_and_bad_capacity_counts_zero(classes: ClassResolver) -> None:
    spec = {
        "devices": {
            "requests": [
                {
                    "name": "a",
                    "exactly": {
                        "deviceClassName": "shared.hami-core.dra-bridge.io",
                        "capacity": {"requests": {"memory": "2Gi", "cores": "10"}},
                    },
                },
                {
                    "name": "b",
                    "exactly": {
                        "deviceClassName": "shared.hami-core.dra-bridge.io",
                        "count": 2,
                        "capacity": {"requests": {"memory": "bogus", "cores": "20"}},
                    },
                },
                "not-a-request",
            ]
        }
    }
    result = charge(basis(spec), classes=classes)
    assert result.devices == {"shared.hami-core.dra-bridge.io": 3}
    assert result.memory == 2 * GI and result.compute == 50


def test_empty_claim_costs_one_claim(classes: ClassResolver) -> None:
    result = charge(basis({}), classes=classes)
    assert result.claims == 1 and not result.devices and result.memory == 0


def test_partition_memory_and_compute_come_from_the_profile(classes: ClassResolver) -> None:
    spec = {
        "devices": {
            "requests": [
                {
                    "name": "mig",
                    "exactly": {
                        "deviceClassName": "partition.nvidia.dra-bridge.io",
                        "count": 2,
                        "selectors": [
                            {"cel": {"expression": "device.attributes['gpu.nvidia.com'].profile == '3g.20gb'"}}
                        ],
                    },
                }
            ]
        }
    }
    result = charge(basis(spec), classes=classes)
    assert result.memory == 2 * 20 * 10**9
    assert result.compute == Fraction(600, 7)
    assert result.profiles == {"3g.20gb": 2}
