"""The unified DeviceClasses: schema-valid, selectors that parse and select the right devices."""

from __future__ import annotations

from typing import Any

import celpy
import pytest
import yaml

from tests.conftest import ROOT, assert_valid
from webhook.translate.catalogue import CatalogueError, CatalogueIndex
from webhook.translate.deviceclasses import render_device_classes

# Devices as the drivers publish them (attribute names from the drivers' ResourceSlices).
DEVICES: dict[str, dict[str, Any]] = {
    "nvidia-gpu": {
        "driver": "gpu.nvidia.com",
        "attributes": {"gpu.nvidia.com": {"type": "gpu", "productName": "A100"}},
    },
    "nvidia-mig": {"driver": "gpu.nvidia.com", "attributes": {"gpu.nvidia.com": {"type": "mig", "profile": "1g.5gb"}}},
    "hami": {
        "driver": "hami-core-gpu.project-hami.io",
        "attributes": {"hami-core-gpu.project-hami.io": {"type": "hami-gpu"}},
    },
    "example": {
        "driver": "gpu.example.com",
        "attributes": {"gpu.example.com": {"index": 0, "model": "LATEST-GPU-MODEL"}},
    },
    "intel": {"driver": "gpu.intel.com", "attributes": {"gpu.intel.com": {"model": "Max 1550"}}},
    "amd-gpu": {"driver": "gpu.amd.com", "attributes": {"gpu.amd.com": {"type": "amdgpu"}}},
    "amd-partition": {
        "driver": "gpu.amd.com",
        "attributes": {"gpu.amd.com": {"type": "amdgpu-partition", "partitionProfile": "cpx"}},
    },
    "tpu": {"driver": "tpu.google.com", "attributes": {"tpu.google.com": {"index": 0, "tpuGen": "v5e"}}},
}
EXPECTED = {
    "whole.nvidia.dra-bridge.io": {"nvidia-gpu"},
    "partition.nvidia.dra-bridge.io": {"nvidia-mig"},
    "shared.nvidia.dra-bridge.io": {"nvidia-gpu"},
    "shared.hami-core.dra-bridge.io": {"hami"},
    "whole.example.dra-bridge.io": {"example"},
    "shared.example.dra-bridge.io": {"example"},
    "whole.intel.dra-bridge.io": {"intel"},
    "shared.intel.dra-bridge.io": {"intel"},
    "whole.amd.dra-bridge.io": {"amd-gpu"},
    "partition.amd.dra-bridge.io": {"amd-partition"},
    "whole.tpu.dra-bridge.io": {"tpu"},
}


def selects(expression: str, device: dict[str, Any]) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(expression))
    try:
        return bool(program.evaluate({"device": celpy.json_to_cel(device)}))
    except celpy.CELEvalError:
        return False  # an unknown attribute is a runtime error: the device does not match


def test_every_class_selects_exactly_its_devices(index: CatalogueIndex) -> None:
    classes = render_device_classes(index.catalogue)
    assert {c["metadata"]["name"] for c in classes} == set(EXPECTED)
    for device_class in classes:
        expression = device_class["spec"]["selectors"][0]["cel"]["expression"]
        chosen = {name for name, device in DEVICES.items() if selects(expression, device)}
        assert chosen == EXPECTED[device_class["metadata"]["name"]], device_class["metadata"]["name"]


def test_classes_validate_against_the_schemas(index: CatalogueIndex) -> None:
    for device_class in render_device_classes(index.catalogue):
        assert_valid(device_class)
        assert "extendedResourceName" not in device_class["spec"]


def test_a_chosen_list_of_drivers(index: CatalogueIndex) -> None:
    names = [c["metadata"]["name"] for c in render_device_classes(index.catalogue, drivers=["hami-core", "tpu"])]
    assert names == ["shared.hami-core.dra-bridge.io", "whole.tpu.dra-bridge.io"]
    with pytest.raises(CatalogueError, match=r"unknown driver.*bogus"):
        render_device_classes(index.catalogue, drivers=["bogus"])


def test_shipped_manifests_match_the_catalogue(index: CatalogueIndex) -> None:
    shipped = list(yaml.safe_load_all((ROOT / "deploy" / "deviceclasses" / "deviceclasses.yaml").read_text()))
    assert shipped == render_device_classes(index.catalogue), (
        "run: dra-bridge deviceclasses > deploy/deviceclasses/deviceclasses.yaml"
    )


def test_every_class_a_template_names_is_shipped(index: CatalogueIndex) -> None:
    """Each (kind, driver) the targets route to has a class, so no claim names a missing class."""
    shipped = {c["metadata"]["name"] for c in render_device_classes(index.catalogue)}
    catalogue = index.catalogue
    for target in catalogue.targets:
        for kind in ("whole", "partition", "shared"):
            for driver in target.drivers_for(kind):  # type: ignore[arg-type]
                assert catalogue.class_name(kind, driver) in shipped  # type: ignore[arg-type]
