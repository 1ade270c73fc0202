"""Table tests of the translation core: every catalogue entry and unit, every rule, the fixed point."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import assert_valid, container, pod
from webhook.errors import TranslationError
from webhook.labels import CONVERTED_ANNOTATION
from webhook.translate.catalogue import CatalogueIndex
from webhook.translate.rewrite import claim_name, rewrite_pod


def alternatives(template: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives of the template's only request, each as {name, class, count, capacity, selectors}."""
    requests = template["spec"]["spec"]["devices"]["requests"]
    assert len(requests) == 1, requests
    request = requests[0]
    subs = request["firstAvailable"] if "firstAvailable" in request else [{"name": "-", **request["exactly"]}]
    return [
        {
            "name": s["name"],
            "class": s["deviceClassName"],
            "count": s["count"],
            "capacity": (s.get("capacity") or {}).get("requests", {}),
            "selectors": [sel["cel"]["expression"] for sel in s.get("selectors", [])],
        }
        for s in subs
    ]


def convert_one(
    index: CatalogueIndex, limits: dict[str, Any], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    plan = rewrite_pod(pod(container("main", limits=limits), annotations=annotations), index=index, namespace="team-a")
    assert plan.changed
    assert len(plan.templates) == 1
    assert_valid(plan.pod)
    assert_valid(plan.templates[0])
    return plan.templates[0]


WHOLE_NVIDIA = [("nvidia", "whole.nvidia.dra-bridge.io"), ("example", "whole.example.dra-bridge.io")]


# -- whole devices, every vendor ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("limits", "expected_classes", "count"),
    [
        ({"nvidia.com/gpu": "2"}, WHOLE_NVIDIA, 2),
        ({"nvidia.com/gpu": 1}, WHOLE_NVIDIA, 1),
        ({"volcano.sh/vgpu-number": "3"}, WHOLE_NVIDIA, 3),
        ({"aliyun.com/gpu-count": "1"}, WHOLE_NVIDIA, 1),
        ({"tencent.com/vcuda-core": "200"}, WHOLE_NVIDIA, 2),
        ({"tencent.com/vcuda-core": "100"}, WHOLE_NVIDIA, 1),
        ({"amd.com/gpu": "4"}, [("-", "whole.amd.dra-bridge.io")], 4),
        ({"gpu.intel.com/i915": "1"}, [("-", "whole.intel.dra-bridge.io")], 1),
        ({"gpu.intel.com/xe": "2"}, [("-", "whole.intel.dra-bridge.io")], 2),
        ({"google.com/tpu": "8"}, [("-", "whole.tpu.dra-bridge.io")], 8),
    ],
)
def test_whole_devices(
    index: CatalogueIndex, limits: dict[str, Any], expected_classes: list[tuple[str, str]], count: int
) -> None:
    alts = alternatives(convert_one(index, limits))
    assert [(a["name"], a["class"]) for a in alts] == expected_classes
    assert all(a["count"] == count and not a["capacity"] and not a["selectors"] for a in alts)


# -- shared devices: memory in every unit, compute in every scale -----------------------------
def by_name(alts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in alts}


@pytest.mark.parametrize(
    ("limits", "hami", "example"),
    [
        # HAMi: MiB and percent; example driver rounds memory up to its 1Gi step
        (
            {"nvidia.com/gpumem": "4096", "nvidia.com/gpucores": "30"},
            {"memory": "4Gi", "cores": "30"},
            {"memory": "4Gi", "compute": "30"},
        ),
        ({"nvidia.com/gpumem": "3000"}, {"memory": "3000Mi"}, {"memory": "3Gi"}),
        ({"nvidia.com/gpu": "2", "nvidia.com/gpumem": "1500"}, {"memory": "1500Mi"}, {"memory": "2Gi"}),
        # Volcano, same units as HAMi
        (
            {"volcano.sh/vgpu-memory": "2048", "volcano.sh/vgpu-cores": "50"},
            {"memory": "2Gi", "cores": "50"},
            {"memory": "2Gi", "compute": "50"},
        ),
        # Aliyun: memory in GiB
        ({"aliyun.com/gpu-mem": "3"}, {"memory": "3Gi"}, {"memory": "3Gi"}),
        (
            {"aliyun.com/gpu-mem": "8", "aliyun.com/gpu-core.percentage": "25"},
            {"memory": "8Gi", "cores": "25"},
            {"memory": "8Gi", "compute": "25"},
        ),
        # Tencent: 256 MiB units, vcuda-core 100 = one GPU
        (
            {"tencent.com/vcuda-core": "50", "tencent.com/vcuda-memory": "10"},
            {"memory": "2560Mi", "cores": "50"},
            {"memory": "3Gi", "compute": "50"},
        ),
    ],
)
def test_shared_memory_and_compute_units(
    index: CatalogueIndex, limits: dict[str, Any], hami: dict[str, str], example: dict[str, str]
) -> None:
    alts = by_name(alternatives(convert_one(index, limits)))
    assert alts["hami-core"]["capacity"] == hami
    assert alts["hami-core"]["class"] == "shared.hami-core.dra-bridge.io"
    assert alts["example"]["capacity"] == example
    if "cores" not in hami:  # the NVIDIA driver has no compute capacity: it serves memory-only requests only
        assert alts["nvidia"]["capacity"] == {"memory": hami["memory"]}
    else:
        assert "nvidia" not in alts


def test_device_count_applies_per_device(index: CatalogueIndex) -> None:
    alts = alternatives(convert_one(index, {"nvidia.com/gpu": "2", "nvidia.com/gpumem": "1024"}))
    assert {a["count"] for a in alts} == {2}


@pytest.mark.parametrize(
    ("limits", "annotations", "percent"),
    [
        ({"nvidia.com/gpumem-percentage": "50"}, None, 50),
        ({"volcano.sh/vgpu-memory-percentage": "25"}, None, 25),
        ({}, {"gpu-fraction": "0.5"}, 50),
        ({}, {"gpu-fraction": "0.25"}, 25),
    ],
)
def test_memory_share_resolves_per_card_size(
    index: CatalogueIndex, limits: dict[str, Any], annotations: dict[str, str] | None, percent: int
) -> None:
    alts = alternatives(convert_one(index, limits, annotations))
    sizes = {
        "hami-core-80gi": 80,
        "hami-core-40gi": 40,
        "hami-core-24gi": 24,
        "hami-core-16gi": 16,
        "nvidia-80gi": 80,
        "nvidia-40gi": 40,
        "example-80gi": 80,
    }
    assert [a["name"] for a in alts] == list(sizes)
    for alt in alts:
        size = sizes[alt["name"]]
        assert alt["capacity"]["memory"] == f"{size * percent // 100}Gi" if size * percent % 100 == 0 else True
        # the same share of compute, where the driver has a compute capacity (NVIDIA's has none)
        compute = {k: v for k, v in alt["capacity"].items() if k != "memory"}
        assert compute == (
            {}
            if alt["name"].startswith("nvidia")
            else {"compute" if alt["name"].startswith("example") else "cores": str(percent)}
        )
        assert alt["selectors"] == [alt["selectors"][0]]
        assert f"quantity('{size}Gi')" in alt["selectors"][0]


def test_compute_only_means_whole_card_memory(index: CatalogueIndex) -> None:
    """HAMi: cores without memory means the whole card's memory."""
    alts = by_name(alternatives(convert_one(index, {"nvidia.com/gpucores": "40"})))
    assert alts["hami-core-80gi"]["capacity"] == {"memory": "80Gi", "cores": "40"}
    assert alts["example-80gi"]["capacity"] == {"memory": "80Gi", "compute": "40"}
    assert not any(name.startswith("nvidia") for name in alts)


def test_whole_card_memory_takes_whole_compute(index: CatalogueIndex) -> None:
    alts = by_name(alternatives(convert_one(index, {"nvidia.com/gpumem-percentage": "100"})))
    assert alts["hami-core-24gi"]["capacity"] == {"memory": "24Gi", "cores": "100"}


def test_kai_memory_annotation_and_device_count(index: CatalogueIndex) -> None:
    template = convert_one(index, {}, {"gpu-memory": "2048", "gpu-fraction-num-devices": "2"})
    alts = by_name(alternatives(template))
    assert alts["hami-core"]["capacity"] == {"memory": "2Gi"}
    assert alts["hami-core"]["count"] == 2


def test_time_sliced_replica_is_the_catalogues_share_of_a_device(index: CatalogueIndex) -> None:
    """gpu.shared: 25 % of a card's memory and compute, so four replicas pack on a GPU as with
    time-slicing; on the NVIDIA driver (no compute capacity) its memory share only."""
    alts = by_name(alternatives(convert_one(index, {"nvidia.com/gpu.shared": "1"})))
    assert alts["hami-core-80gi"]["capacity"] == {"memory": "20Gi", "cores": "25"}
    assert alts["hami-core-16gi"]["capacity"] == {"memory": "4Gi", "cores": "25"}
    assert alts["nvidia-40gi"]["capacity"] == {"memory": "10Gi"}
    assert alts["example-80gi"]["capacity"] == {"memory": "20Gi", "compute": "25"}


def test_intel_millicores_and_bytes(index: CatalogueIndex) -> None:
    alts = alternatives(
        convert_one(
            index, {"gpu.intel.com/i915": "1", "gpu.intel.com/millicores": "250", "gpu.intel.com/memory.max": "2Gi"}
        )
    )
    assert alts == [
        {
            "name": "-",
            "class": "shared.intel.dra-bridge.io",
            "count": 1,
            "capacity": {"millicores": "250", "memory": "2Gi"},
            "selectors": [],
        }
    ]


# -- partitions ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "profile", "memory", "cores"),
    [
        ("nvidia.com/mig-1g.5gb", "1g.5gb", "4769Mi", "15"),
        ("nvidia.com/mig-3g.20gb", "3g.20gb", "19074Mi", "43"),
        ("nvidia.com/mig-7g.80gb", "7g.80gb", "76294Mi", "100"),
        ("nvidia.com/mig-1g.10gb+me", "1g.10gb+me", "9537Mi", "15"),
    ],
)
def test_mig_profile_as_partition_or_equivalent_vgpu(
    index: CatalogueIndex, name: str, profile: str, memory: str, cores: str
) -> None:
    template = convert_one(index, {name: "2"})
    alts = alternatives(template)
    assert alts[0]["class"] == "partition.nvidia.dra-bridge.io"
    assert alts[0]["selectors"] == [f"device.attributes['gpu.nvidia.com'].profile == '{profile}'"]
    assert alts[0]["count"] == 2
    assert alts[1]["class"] == "shared.hami-core.dra-bridge.io"
    assert alts[1]["capacity"] == {"memory": memory, "cores": cores}
    assert alts[1]["count"] == 2


def test_two_mig_profiles_in_one_container_are_two_requests(index: CatalogueIndex) -> None:
    plan = rewrite_pod(
        pod(container(limits={"nvidia.com/mig-1g.5gb": "1", "nvidia.com/mig-2g.10gb": "1"})),
        index=index,
        namespace="ns",
    )
    requests = plan.templates[0]["spec"]["spec"]["devices"]["requests"]
    assert [r["name"] for r in requests] == ["nvidia-1g-5gb", "nvidia-2g-10gb"]
    assert_valid(plan.templates[0])


def test_mig_with_whole_gpu_in_one_container(index: CatalogueIndex) -> None:
    plan = rewrite_pod(
        pod(container(limits={"nvidia.com/mig-1g.5gb": "1", "nvidia.com/gpu": "1"})), index=index, namespace="ns"
    )
    assert [r["name"] for r in plan.templates[0]["spec"]["spec"]["devices"]["requests"]] == ["nvidia", "nvidia-1g-5gb"]


def test_vendors_mix_in_one_container(index: CatalogueIndex) -> None:
    plan = rewrite_pod(pod(container(limits={"amd.com/gpu": "1", "nvidia.com/gpu": "1"})), index=index, namespace="ns")
    assert [r["name"] for r in plan.templates[0]["spec"]["spec"]["devices"]["requests"]] == ["amd", "nvidia"]


# -- rules: input that means nothing is denied with container, resource and value -------------
@pytest.mark.parametrize(
    ("limits", "requests", "annotations", "fragments"),
    [
        ({"nvidia.com/gpu": "1.5"}, None, None, ["'main'", "nvidia.com/gpu", "1.5", "whole number"]),
        ({"nvidia.com/gpu": "500m"}, None, None, ["nvidia.com/gpu", "500m", "whole number"]),
        ({"nvidia.com/gpu": "-1"}, None, None, ["nvidia.com/gpu", "-1", "negative"]),
        ({"nvidia.com/gpu": "two"}, None, None, ["nvidia.com/gpu", "'two'", "not a quantity"]),
        (
            {"nvidia.com/gpu": "2"},
            {"nvidia.com/gpu": "1"},
            None,
            ["nvidia.com/gpu", "requests (1) differ from limits (2)"],
        ),
        ({}, {"nvidia.com/gpu": "1"}, None, ["nvidia.com/gpu", "not in limits"]),
        (
            {"nvidia.com/gpumem-percentage": "150"},
            None,
            None,
            ["nvidia.com/gpumem-percentage", "150", "more than one whole device"],
        ),
        ({"nvidia.com/gpucores": "101"}, None, None, ["nvidia.com/gpucores", "101"]),
        (
            {"nvidia.com/gpu": "1"},
            None,
            {"gpu-fraction": "0.5"},
            ["gpu-fraction", "nvidia.com/gpu", "cannot be combined"],
        ),
        ({}, None, {"gpu-fraction": "1.5"}, ["gpu-fraction", "1.5", "fraction"]),
        ({}, None, {"gpu-fraction": "0"}, ["gpu-fraction", "0", "fraction"]),
        ({"nvidia.com/gpu.shared": "2"}, None, None, ["nvidia.com/gpu.shared", "2", "one at a time"]),
        (
            {"nvidia.com/gpu.shared": "1", "nvidia.com/gpumem": "100"},
            None,
            None,
            ["nvidia.com/gpu.shared", "cannot be combined"],
        ),
        (
            {"nvidia.com/gpumem": "1024", "nvidia.com/gpumem-percentage": "10"},
            None,
            None,
            ["nvidia.com/gpumem", "both in bytes and as a share"],
        ),
        ({"tencent.com/vcuda-core": "150"}, None, None, ["tencent.com/vcuda-core", "150", "multiple of 100"]),
        (
            {"tencent.com/vcuda-core": "200", "tencent.com/vcuda-memory": "4"},
            None,
            None,
            ["tencent.com/vcuda-core", "cannot be combined"],
        ),
        ({"nvidia.com/gpu": "0", "nvidia.com/gpumem": "1024"}, None, None, ["nvidia.com/gpu", "zero devices"]),
        ({"gpu.intel.com/i915": "1", "gpu.intel.com/xe": "1"}, None, None, ["gpu.intel.com/i915 and gpu.intel.com/xe"]),
        (
            {},
            None,
            {"gpu-fraction": "0.5", "gpu-fraction-container-name": "nope"},
            ["gpu-fraction-container-name", "nope", "names no container"],
        ),
        (
            {
                "amd.com/gpu": "1",
                "gpu.intel.com/millicores": "100",
                "gpu.intel.com/i915": "1",
                "gpu.intel.com/memory.max": "20Gi",
            },
            None,
            None,
            [],
        ),
    ],
)
def test_meaningless_requests_are_denied(
    index: CatalogueIndex,
    limits: dict[str, Any],
    requests: dict[str, Any] | None,
    annotations: dict[str, str] | None,
    fragments: list[str],
) -> None:
    subject = pod(container("main", limits=limits, requests=requests), annotations=annotations)
    if not fragments:  # a valid control row: the same machinery accepts it
        assert rewrite_pod(subject, index=index, namespace="ns").changed
        return
    with pytest.raises(TranslationError) as caught:
        rewrite_pod(subject, index=index, namespace="ns")
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_percentage_beyond_a_card_size_is_clamped_not_exceeded(index: CatalogueIndex) -> None:
    alts = by_name(alternatives(convert_one(index, {"nvidia.com/gpumem-percentage": "99"})))
    assert (
        alts["hami-core-16gi"]["capacity"]["memory"] == "16221Mi"
    )  # 16384Mi * 0.99 = 16220.16Mi, rounded up to the 1Mi step
    assert alts["example-80gi"]["capacity"]["memory"] == "80Gi"  # 79.2Gi rounded up to the 1Gi step


# -- what is left alone ----------------------------------------------------------------------------
def test_pod_without_legacy_requests_is_unchanged(index: CatalogueIndex) -> None:
    subject = pod(container(limits={"cpu": "1", "memory": "1Gi", "example.com/foo": "1"}))
    plan = rewrite_pod(subject, index=index, namespace="ns")
    assert not plan.changed
    assert plan.pod == subject


def test_all_zero_legacy_values_are_removed_without_a_claim(index: CatalogueIndex) -> None:
    plan = rewrite_pod(pod(container(limits={"nvidia.com/gpu": "0", "cpu": "1"})), index=index, namespace="ns")
    assert plan.changed and not plan.templates
    assert plan.pod["spec"]["containers"][0]["resources"] == {"limits": {"cpu": "1"}}
    assert "resourceClaims" not in plan.pod["spec"]


def test_existing_dra_claims_are_kept(index: CatalogueIndex) -> None:
    existing = {"name": "nic", "resourceClaimTemplateName": "rdma"}
    main = container(limits={"nvidia.com/gpu": "1"})
    main["resources"]["claims"] = [{"name": "nic"}]
    plan = rewrite_pod(pod(main, resourceClaims=[existing]), index=index, namespace="ns")
    assert plan.pod["spec"]["resourceClaims"][0] == existing
    assert plan.pod["spec"]["resourceClaims"][1]["name"] == "gpu-main"
    assert plan.pod["spec"]["containers"][0]["resources"]["claims"] == [{"name": "nic"}, {"name": "gpu-main"}]
    assert_valid(plan.pod)


def test_claim_name_collision_is_denied(index: CatalogueIndex) -> None:
    plan_input = pod(
        container(limits={"nvidia.com/gpu": "1"}), resourceClaims=[{"name": "gpu-main", "resourceClaimName": "mine"}]
    )
    with pytest.raises(TranslationError, match="already has a resource claim named 'gpu-main'"):
        rewrite_pod(plan_input, index=index, namespace="ns")


def test_init_containers_and_sidecars_are_converted(index: CatalogueIndex) -> None:
    sidecar = container("proxy", limits={"nvidia.com/gpumem": "1024"})
    sidecar["restartPolicy"] = "Always"
    init = container("warmup", limits={"nvidia.com/gpu": "1"})
    plan = rewrite_pod(
        pod(container("main", limits={"nvidia.com/gpu": "1"}), initContainers=[init, sidecar]),
        index=index,
        namespace="ns",
    )
    assert [c["resources"]["claims"] for c in plan.pod["spec"]["initContainers"]] == [
        [{"name": "gpu-warmup"}],
        [{"name": "gpu-proxy"}],
    ]
    assert [c.container for c in plan.conversions] == ["warmup", "proxy", "main"]
    assert len(plan.templates) == 2  # warmup and main ask for the same thing: one template
    assert_valid(plan.pod)


def test_native_extended_resource_is_left_alone_with_a_warning(index: CatalogueIndex) -> None:
    subject = pod(container(limits={"nvidia.com/gpu": "1", "amd.com/gpu": "1"}))
    plan = rewrite_pod(subject, index=index, namespace="ns", native={"nvidia.com/gpu": "gpu.nvidia.com"})
    assert plan.pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert plan.warnings == ("main: nvidia.com/gpu left as is, DeviceClass gpu.nvidia.com serves it natively",)
    assert [c.legacy for c in plan.conversions] == [{"amd.com/gpu": "1"}]


# -- determinism and the fixed point ---------------------------------------------------------------
def test_same_shape_same_template_across_pods_and_sources(index: CatalogueIndex) -> None:
    a = rewrite_pod(pod(container("x", limits={"nvidia.com/gpumem-percentage": "50"})), index=index, namespace="ns")
    b = rewrite_pod(
        pod(container("y", limits={"volcano.sh/vgpu-memory-percentage": "50"})), index=index, namespace="ns"
    )
    c = rewrite_pod(pod(container("z"), annotations={"gpu-fraction": "0.5"}), index=index, namespace="ns")
    names = {p.templates[0]["metadata"]["name"] for p in (a, b, c)}
    assert len(names) == 1


def test_different_shapes_different_templates(index: CatalogueIndex) -> None:
    a = rewrite_pod(pod(container(limits={"nvidia.com/gpu": "1"})), index=index, namespace="ns")
    b = rewrite_pod(pod(container(limits={"nvidia.com/gpu": "2"})), index=index, namespace="ns")
    assert a.templates[0]["metadata"]["name"] != b.templates[0]["metadata"]["name"]


def test_input_is_never_modified(index: CatalogueIndex) -> None:
    import copy

    subject = pod(container(limits={"nvidia.com/gpu": "1"}), annotations={"team": "a"})
    before = copy.deepcopy(subject)
    rewrite_pod(subject, index=index, namespace="ns")
    assert subject == before


@pytest.mark.parametrize(
    ("limits", "annotations"),
    [
        ({"nvidia.com/gpu": "1"}, None),
        ({"nvidia.com/gpumem": "2048", "nvidia.com/gpucores": "20"}, None),
        ({"nvidia.com/mig-2g.10gb": "1"}, None),
        ({}, {"gpu-fraction": "0.5"}),
        ({"tencent.com/vcuda-core": "30"}, None),
    ],
)
def test_rewrite_is_a_fixed_point(
    index: CatalogueIndex, limits: dict[str, Any], annotations: dict[str, str] | None
) -> None:
    first = rewrite_pod(pod(container(limits=limits), annotations=annotations), index=index, namespace="ns")
    second = rewrite_pod(first.pod, index=index, namespace="ns")
    assert first.changed and not second.changed
    assert second.pod == first.pod


def test_converted_annotation_records_the_original_request(index: CatalogueIndex) -> None:
    import json

    plan = rewrite_pod(pod(container(limits={"nvidia.com/gpu": "2"}), annotations={}), index=index, namespace="ns")
    record = json.loads(plan.pod["metadata"]["annotations"][CONVERTED_ANNOTATION])
    assert record["containers"]["main"]["legacy"] == {"nvidia.com/gpu": "2"}
    assert record["containers"]["main"]["template"] == plan.templates[0]["metadata"]["name"]


def test_kai_annotations_are_moved_into_the_record(index: CatalogueIndex) -> None:
    import json

    plan = rewrite_pod(pod(container(), annotations={"gpu-fraction": "0.5", "owner": "x"}), index=index, namespace="ns")
    annotations = plan.pod["metadata"]["annotations"]
    assert "gpu-fraction" not in annotations and annotations["owner"] == "x"
    assert json.loads(annotations[CONVERTED_ANNOTATION])["annotations"] == {"gpu-fraction": "0.5"}


@pytest.mark.parametrize("name", ["a", "trainer", "x" * 59, "y" * 60, "z" * 63])
def test_claim_names_are_dns_labels(name: str) -> None:
    claim = claim_name(name)
    assert len(claim) <= 63
    assert claim == claim_name(name)
    import re

    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", claim)


# -- the structured amounts the audit summary adds up (never parsed from the summary phrase) ------
GI = 2**30


@pytest.mark.parametrize(
    ("limits", "devices", "memory"),
    [
        ({"nvidia.com/gpu": "2"}, 2, 0),
        ({"amd.com/gpu": "1"}, 1, 0),
        ({"nvidia.com/mig-1g.5gb": "3"}, 3, 0),
        ({"nvidia.com/gpu": "2", "nvidia.com/gpumem": "8192"}, 2, 16 * GI),
        ({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "3000"}, 1, 3000 * 2**20),
        ({"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "50"}, 1, 0),
        ({"nvidia.com/gpu": "2", "nvidia.com/gpumem": "8192", "nvidia.com/mig-1g.5gb": "1"}, 3, 16 * GI),
    ],
)
def test_conversions_carry_their_devices_and_memory(
    index: CatalogueIndex, limits: dict[str, str], devices: int, memory: int
) -> None:
    plan = rewrite_pod(pod(container("main", limits=limits)), index=index, namespace="ns")
    (conversion,) = plan.conversions
    assert (conversion.devices, conversion.memory) == (devices, memory)


# -- the GPU you asked for: HAMi's pins and GFD's product label become device selectors ------------
def pinned_selectors(template: dict[str, Any]) -> dict[str, list[str]]:
    return {a["class"]: a["selectors"] for a in alternatives(template)}


def test_hami_gputype_pins_every_alternative_to_the_model(index: CatalogueIndex) -> None:
    template = convert_one(
        index,
        {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "4096"},
        annotations={"nvidia.com/use-gputype": "A100, h100"},
    )
    for device_class, selectors in pinned_selectors(template).items():
        domain, attribute = {
            "shared.hami-core.dra-bridge.io": ("hami-core-gpu.project-hami.io", "productName"),
            "shared.nvidia.dra-bridge.io": ("gpu.nvidia.com", "productName"),
            "shared.example.dra-bridge.io": ("gpu.example.com", "model"),
        }[device_class]
        value = f"device.attributes['{domain}'].{attribute}"
        assert selectors == [
            f"has({value}) && ({value}.lowerAscii().contains('a100') || {value}.lowerAscii().contains('h100'))"
        ]


def test_nouse_and_uuid_pins_and_the_gfd_product_label(index: CatalogueIndex) -> None:
    obj = pod(
        container("main", limits={"nvidia.com/gpu": "2"}),
        annotations={"nvidia.com/nouse-gputype": "T4", "nvidia.com/use-gpuuuid": "GPU-a,GPU-b"},
    )
    obj["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    plan = rewrite_pod(obj, index=index, namespace="ns")
    selectors = pinned_selectors(plan.templates[0])["whole.nvidia.dra-bridge.io"]
    value = "device.attributes['gpu.nvidia.com']"
    assert selectors == [
        f"!has({value}.productName) || !({value}.productName.lowerAscii().contains('t4'))",
        f"has({value}.uuid) && ({value}.uuid in ['GPU-a', 'GPU-b'])",
        f"has({value}.productName) && ({value}.productName.replace(' ', '-') == 'NVIDIA-A100-SXM4-80GB')",
    ]
    assert rewrite_pod(plan.pod, index=index, namespace="ns").changed is False  # still a fixed point


def test_pins_select_the_right_devices(index: CatalogueIndex) -> None:
    """The generated selectors, evaluated against devices as the drivers publish them."""
    from fractions import Fraction

    from webhook.quota.cel import compile_selector, device_value

    obj = pod(container("main", limits={"nvidia.com/gpu": "1"}), annotations={"nvidia.com/use-gputype": "a100"})
    obj["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    selectors = pinned_selectors(rewrite_pod(obj, index=index, namespace="ns").templates[0])[
        "whole.nvidia.dra-bridge.io"
    ]

    def gpu(product: str | None) -> Any:
        attributes: dict[str, Any] = {"type": "gpu"}
        if product is not None:
            attributes["productName"] = product
        return device_value(
            driver="gpu.nvidia.com",
            attributes={"gpu.nvidia.com": attributes},
            capacity={"gpu.nvidia.com": {"memory": Fraction(80 * 2**30)}},
            allow_multiple=False,
        )

    programs = [compile_selector(s) for s in selectors]
    assert all(p.unsupported is None for p in programs)
    assert all(p.matches(gpu("NVIDIA A100-SXM4-80GB")) for p in programs)
    assert not all(p.matches(gpu("NVIDIA H100 80GB HBM3")) for p in programs)
    assert not all(p.matches(gpu(None)) for p in programs)


def test_a_pin_no_driver_can_honour_is_refused_with_the_reason() -> None:
    from tests.unit.translate.test_catalogue import default_doc
    from webhook.translate.catalogue import build_catalogue

    doc = default_doc()
    intel = next(s for s in doc["sources"] if s["name"] == "intel")
    intel["pins"] = [{"annotation": "example.com/device", "attribute": "uuid", "match": "equals"}]
    index = CatalogueIndex(build_catalogue([doc]))
    obj = pod(container("main", limits={"gpu.intel.com/i915": "1"}), annotations={"example.com/device": "d-1"})
    with pytest.raises(TranslationError, match=r"intel publishes no uuid attribute for example.com/device"):
        rewrite_pod(obj, index=index, namespace="ns")
    # without the annotation nothing is pinned and the Pod converts
    assert rewrite_pod(pod(container("main", limits={"gpu.intel.com/i915": "1"})), index=index, namespace="ns").changed
