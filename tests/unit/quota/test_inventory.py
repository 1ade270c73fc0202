"""The live inventory: devices counted by shape as ResourceSlices come, change and go."""

from __future__ import annotations

from typing import Any

from webhook.quota.devices import Snapshot
from webhook.quota.inventory import Inventory


def gpu_slice(name: str, products: list[str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "driver": "gpu.nvidia.com",
            "devices": [
                {
                    "name": f"gpu-{i}",
                    "attributes": {"productName": {"string": p}, "uuid": {"string": f"{name}-{i}"}},
                    "capacity": {"memory": {"value": "80Gi"}},
                }
                for i, p in enumerate(products)
            ],
        },
    }


def by_product(snapshot: Snapshot) -> dict[str, int]:
    return {str(shape.attribute("productName")): n for shape, n in snapshot.published.items()}


def test_slices_added_replaced_and_deleted_are_counted_by_shape() -> None:
    inventory = Inventory()
    inventory.on_slice("ADDED", gpu_slice("a", ["A100", "A100", "H100"]))
    inventory.on_slice("ADDED", gpu_slice("b", ["H100"]))
    assert by_product(inventory.snapshot()) == {"A100": 2, "H100": 2}
    inventory.on_slice("MODIFIED", gpu_slice("a", ["H200"]))
    assert by_product(inventory.snapshot()) == {"H100": 1, "H200": 1}
    inventory.on_slice("DELETED", gpu_slice("b", []))
    inventory.on_slice("DELETED", gpu_slice("never-seen", []))
    assert by_product(inventory.snapshot()) == {"H200": 1}


def test_a_slice_that_cannot_be_read_keeps_what_it_published_and_is_reported() -> None:
    inventory = Inventory()
    inventory.on_slice("ADDED", gpu_slice("a", ["A100"]))
    broken = gpu_slice("a", ["H100"])
    broken["spec"]["devices"][0]["capacity"]["memory"] = {"value": "lots"}
    inventory.on_slice("MODIFIED", broken)
    assert by_product(inventory.snapshot()) == {"A100": 1}
    assert "ResourceSlice a" in inventory.errors


def test_a_snapshot_is_taken_on_read_and_subscribers_see_every_change() -> None:
    inventory = Inventory()
    seen: list[int] = []
    first = inventory.snapshot()
    inventory.on_slice("ADDED", gpu_slice("a", ["A100"]))
    assert inventory.snapshot() is not first and inventory.snapshot() is inventory.snapshot()
    inventory.subscribe(lambda s: seen.append(sum(s.published.values())))
    inventory.on_slice("ADDED", gpu_slice("b", ["A100", "A100"]))
    assert seen == [3]


def test_ten_thousand_devices_in_a_hundred_shapes() -> None:
    inventory = Inventory()
    for node in range(1_250):
        inventory.on_slice("ADDED", gpu_slice(f"node-{node}", [f"model-{(node * 8 + i) % 100}" for i in range(8)]))
    published = inventory.snapshot().published
    assert len(published) == 100 and sum(published.values()) == 10_000
    assert inventory.generation == 1_250 and not inventory.errors
