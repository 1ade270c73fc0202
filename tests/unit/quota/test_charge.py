"""What a claim costs: an upper bound of what the allocator can hand out, read from the devices.

Each row is an attempt a tenant can make with kubectl to pay less than it gets; the charge must be
at least what the allocator could give (the whole device where capacity only filters, the policy
default where nothing is asked, the worst known device where nothing is published).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import container, pod
from webhook.quota.charge import ALL_MODE_COUNT, Pricer, basis, charge
from webhook.quota.devices import Snapshot, catalogue_snapshot, reduce_device
from webhook.translate.catalogue import CatalogueIndex
from webhook.translate.rewrite import rewrite_pod

GI = 2**30
NVIDIA_CLASS = {
    "gpu.nvidia.com": ("device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'",)
}
NIC_CLASS = {"nic.example.com": ("device.driver == 'nic.example.com'",)}


def spec_for(index: CatalogueIndex, limits: dict[str, Any]) -> dict[str, Any]:
    plan = rewrite_pod(pod(container(limits=limits)), index=index, namespace="ns")
    spec: dict[str, Any] = plan.templates[0]["spec"]["spec"]
    return spec


def claim(device_class: str, **exactly: Any) -> dict[str, Any]:
    return {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": device_class, **exactly}}]}}


def selector(expression: str) -> list[dict[str, Any]]:
    return [{"cel": {"expression": expression}}]


def pricer(
    index: CatalogueIndex,
    *,
    published: dict[str, list[dict[str, Any]]] | None = None,
    classes: dict[str, tuple[str, ...]] | None = None,
    patterns: tuple[str, ...] = (),
) -> Pricer:
    base = catalogue_snapshot(index.catalogue)
    shapes: dict[Any, int] = {}
    for driver, devices in (published or {}).items():
        for device in devices:
            shape = reduce_device(driver, device)
            shapes[shape] = shapes.get(shape, 0) + 1
    snapshot = Snapshot(1, shapes, base.models, {**base.classes, **(classes or {})})
    return Pricer(index.catalogue, snapshot, device_patterns=patterns)


@pytest.mark.parametrize(
    ("limits", "devices", "memory", "compute"),
    [
        # firstAvailable: the largest alternative per class; whole devices at the worst known card
        ({"nvidia.com/gpu": "2"}, {"whole.nvidia.dra-bridge.io": 2, "whole.example.dra-bridge.io": 2}, 160 * GI, 200),
        # shares: the shared.nvidia and shared.example alternatives can land on devices that cannot be
        # shared (no allowMultipleAllocations among the known models), so the worst is a whole card
        (
            {"nvidia.com/gpumem": "4096", "nvidia.com/gpucores": "30"},
            {"shared.hami-core.dra-bridge.io": 1, "shared.example.dra-bridge.io": 1},
            80 * GI,
            100,
        ),
        # MIG 3g.20gb: the partition's memory and 3/7 of a GPU, or its vGPU equivalent rounded up
        (
            {"nvidia.com/mig-3g.20gb": "1"},
            {"partition.nvidia.dra-bridge.io": 1, "shared.hami-core.dra-bridge.io": 1},
            20 * GI,
            43,
        ),
        ({"google.com/tpu": "4"}, {"whole.tpu.dra-bridge.io": 4}, 0, 400),
        ({"amd.com/gpu": "1"}, {"whole.amd.dra-bridge.io": 1}, 192 * GI, 100),
    ],
)
def test_charge_of_converted_claims_without_published_devices(
    index: CatalogueIndex, limits: dict[str, Any], devices: dict[str, int], memory: int, compute: int
) -> None:
    result = charge(basis(spec_for(index, limits)), pricer=pricer(index))
    assert (dict(result.devices), result.memory, result.compute, result.claims) == (devices, memory, compute, 1)


HAMI = {
    "attributes": {"type": {"string": "hami-gpu"}, "uuid": {"string": "GPU-1"}},
    "allowMultipleAllocations": True,
    "capacity": {
        "memory": {"value": "40Gi", "requestPolicy": {"validRange": {"min": "1Gi", "step": "1Gi"}}},
        "cores": {
            "value": "100",
            "requestPolicy": {"default": "10", "validRange": {"min": "1", "max": "100", "step": "5"}},
        },
    },
}
NVIDIA_GPU = {
    "attributes": {"type": {"string": "gpu"}, "uuid": {"string": "GPU-2"}},
    "capacity": {"memory": {"value": "40Gi"}},
}
NVIDIA_MIG = {
    "attributes": {"type": {"string": "mig"}, "profile": {"string": "1g.5gb"}},
    "capacity": {"memory": {"value": "5Gi"}},
    "consumesCounters": [{"counterSet": "c", "counters": {"s": {"value": "1"}}}],
}
NVIDIA_MIG_7G = {
    "attributes": {"type": {"string": "mig"}, "profile": {"string": "7g.40gb"}},
    "capacity": {"memory": {"value": "40Gi"}},
    "consumesCounters": [{"counterSet": "c", "counters": {"s": {"value": "7"}}}],
}
PUBLISHED = {"hami-core-gpu.project-hami.io": [HAMI, HAMI], "gpu.nvidia.com": [NVIDIA_GPU, NVIDIA_MIG, NVIDIA_MIG_7G]}


# -- the bypass table: (what the tenant asks, what it must at least be charged) -------------------
BYPASSES = [
    # a capacity request on a device that cannot be shared: the allocator hands out the whole device
    (
        "capacity on an exclusive device",
        claim("whole.nvidia.dra-bridge.io", capacity={"requests": {"memory": "1Mi"}}),
        40 * GI,
        100,
    ),
    # a shared device with no compute request: the request policy's default (10), not 0
    (
        "shared without compute",
        claim("shared.hami-core.dra-bridge.io", capacity={"requests": {"memory": "1500Mi"}}),
        2 * GI,
        10,
    ),
    # a request between steps is rounded up by the policy
    (
        "between steps",
        claim("shared.hami-core.dra-bridge.io", capacity={"requests": {"memory": "1Gi", "cores": "12"}}),
        GI,
        16,
    ),
    # a capacity that does not parse is not a discount: the policy default (here the whole memory)
    (
        "unparseable capacity",
        claim("shared.hami-core.dra-bridge.io", capacity={"requests": {"memory": "lots", "cores": "5"}}),
        40 * GI,
        6,
    ),
    # the NVIDIA driver's own class, unknown to the catalogue: its devices decide
    ("the driver's own class", claim("gpu.nvidia.com", count=2), 80 * GI, 200),
    # a class nobody created (yet): the worst GPU any driver knows
    ("a class that does not exist", claim("gpu.vendor.example", count=1), 192 * GI, 100),
    # MIG profile asked through a selector written another way: the devices it selects decide
    (
        "reversed profile selector",
        claim(
            "partition.nvidia.dra-bridge.io",
            selectors=selector("'7g.40gb' == device.attributes['gpu.nvidia.com'].profile"),
        ),
        40 * GI,
        100,
    ),
    (
        "profile with ||",
        claim(
            "partition.nvidia.dra-bridge.io",
            selectors=selector(
                "device.attributes['gpu.nvidia.com'].profile == '1g.5gb' || device.attributes['gpu.nvidia.com'].profile == '7g.40gb'"
            ),
        ),
        40 * GI,
        100,
    ),
    (
        "profile with in",
        claim(
            "partition.nvidia.dra-bridge.io",
            selectors=selector("device.attributes['gpu.nvidia.com'].profile in ['1g.5gb', '7g.40gb']"),
        ),
        40 * GI,
        100,
    ),
    (
        "profile by has()",
        claim("partition.nvidia.dra-bridge.io", selectors=selector("has(device.attributes['gpu.nvidia.com'].profile)")),
        40 * GI,
        100,
    ),
    # a selector on the device's identity: any device of the class
    (
        "uuid selector",
        claim(
            "shared.hami-core.dra-bridge.io",
            selectors=selector("device.attributes['hami-core-gpu.project-hami.io'].uuid == 'GPU-1'"),
            capacity={"requests": {"memory": "1Gi", "cores": "5"}},
        ),
        GI,
        6,
    ),
    # a selector nothing published matches: the worst known model the class selects
    (
        "no published match",
        claim(
            "whole.nvidia.dra-bridge.io",
            selectors=selector("device.attributes['gpu.nvidia.com'].productName == 'B200'"),
        ),
        80 * GI,
        100,
    ),
    # allocationMode All: 32 devices
    (
        "all mode",
        claim("whole.nvidia.dra-bridge.io", allocationMode="All"),
        ALL_MODE_COUNT * 40 * GI,
        ALL_MODE_COUNT * 100,
    ),
    # a count the apiserver would refuse is never a discount
    (
        "count out of range",
        claim("whole.nvidia.dra-bridge.io", count="2"),
        ALL_MODE_COUNT * 40 * GI,
        ALL_MODE_COUNT * 100,
    ),
]


@pytest.mark.parametrize(("name", "spec", "memory", "compute"), BYPASSES, ids=[b[0] for b in BYPASSES])
def test_a_bypass_attempt_is_charged_what_the_allocator_can_hand_out(
    index: CatalogueIndex, name: str, spec: dict[str, Any], memory: int, compute: int
) -> None:
    result = charge(basis(spec), pricer=pricer(index, published=PUBLISHED, classes=NVIDIA_CLASS))
    assert (result.memory, result.compute) == (memory, compute), name


def test_profiles_come_from_the_devices_a_selector_selects(index: CatalogueIndex) -> None:
    spec = claim(
        "partition.nvidia.dra-bridge.io",
        selectors=selector("device.attributes['gpu.nvidia.com'].profile in ['1g.5gb', '7g.40gb']"),
    )
    result = charge(basis(spec), pricer=pricer(index, published=PUBLISHED))
    assert set(result.profiles) == {"1g.5gb", "7g.40gb"}


def test_kinds_and_drivers_follow_the_devices_not_the_class_name(index: CatalogueIndex) -> None:
    patterns = ("kind:whole", "kind:shared", "kind:partition", "kind:gpu", "driver:gpu.nvidia.com", "whole.*", "*")
    priced = pricer(index, published=PUBLISHED, classes=NVIDIA_CLASS, patterns=patterns)
    result = charge(basis(claim("gpu.nvidia.com", count=3)), pricer=priced)
    assert dict(result.matched) == {"kind:whole": 3, "kind:gpu": 3, "driver:gpu.nvidia.com": 3, "*": 3}
    shared = charge(basis(claim("shared.hami-core.dra-bridge.io")), pricer=priced)
    assert dict(shared.matched) == {"kind:shared": 1, "kind:gpu": 1, "*": 1}


def test_devices_of_drivers_that_are_not_gpus_cost_no_memory_or_compute(index: CatalogueIndex) -> None:
    nic = {"attributes": {"model": {"string": "cx7"}}, "capacity": {"bandwidth": {"value": "400G"}}}
    priced = pricer(index, published={"nic.example.com": [nic]}, classes=NIC_CLASS, patterns=("kind:gpu", "nic.*"))
    result = charge(basis(claim("nic.example.com", count=2)), pricer=priced)
    assert (result.memory, result.compute, dict(result.devices)) == (0, 0, {"nic.example.com": 2})
    assert dict(result.matched) == {"nic.*": 2}


def test_an_unsupported_selector_may_select_any_device_of_its_class(index: CatalogueIndex) -> None:
    spec = claim("whole.nvidia.dra-bridge.io", selectors=selector("cel.bind(x, 1, x == 2)"))
    result = charge(basis(spec), pricer=pricer(index, published=PUBLISHED))
    assert result.memory == 40 * GI  # the published GPU, not nothing


def test_requests_add_up_and_an_empty_claim_costs_one_claim(index: CatalogueIndex) -> None:
    two = {
        "devices": {
            "requests": [
                claim("whole.tpu.dra-bridge.io")["devices"]["requests"][0],
                {**claim("whole.tpu.dra-bridge.io", count=2)["devices"]["requests"][0], "name": "s"},
                "junk",
            ]
        }
    }
    result = charge(basis(two), pricer=pricer(index))
    assert result.devices == {"whole.tpu.dra-bridge.io": 3} and result.compute == 300
    empty = charge(basis({}), pricer=pricer(index))
    assert empty.claims == 1 and not empty.devices and empty.memory == 0


def test_a_request_no_device_can_meet_is_charged_what_it_asks(index: CatalogueIndex) -> None:
    spec = claim("shared.hami-core.dra-bridge.io", capacity={"requests": {"memory": "500Gi", "cores": "5"}})
    assert charge(basis(spec), pricer=pricer(index, published=PUBLISHED)).memory >= 500 * GI


def test_adding_and_subtracting_charges_is_exact_per_field() -> None:
    from fractions import Fraction

    from webhook.quota.charge import ZERO, Charge

    a = Charge(
        devices={"x": 2, "y": 1},
        memory=Fraction(7, 3),
        compute=Fraction(50),
        claims=2,
        profiles={"1g.10gb": 1},
        matched={"x*": 2},
        total_devices=3,
    )
    b = Charge(devices={"y": 1, "z": 4}, memory=Fraction(1, 3), compute=Fraction(25), claims=1, total_devices=5)
    total = a + b
    assert total == Charge(
        devices={"x": 2, "y": 2, "z": 4},
        memory=Fraction(8, 3),
        compute=Fraction(75),
        claims=3,
        profiles={"1g.10gb": 1},
        matched={"x*": 2},
        total_devices=8,
    )
    assert total - b == a and total - a == b  # keys that reach zero are dropped
    assert ZERO - a == Charge(
        devices={"x": -2, "y": -1},
        memory=Fraction(-7, 3),
        compute=Fraction(-50),
        claims=-2,
        profiles={"1g.10gb": -1},
        matched={"x*": -2},
        total_devices=-3,
    )
    assert a + ZERO == a and (a + ZERO).devices is not a.devices  # a new mapping, never the operand's
