"""The catalogue format: the shipped default, admin overrides, and errors that name field and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import POLICIES, container, pod
from webhook.translate.catalogue import CatalogueError, CatalogueIndex, build_catalogue, load_catalogue, parse_document
from webhook.translate.rewrite import rewrite_pod


def default_doc() -> dict[str, Any]:
    return parse_document((POLICIES / "catalogue.yaml").read_text(), origin="default")


def test_every_legacy_name_of_the_reference_is_in_the_default(index: CatalogueIndex) -> None:
    names = [
        "nvidia.com/gpu", "nvidia.com/gpu.shared", "nvidia.com/mig-1g.5gb", "nvidia.com/mig-3g.20gb",
        "nvidia.com/gpumem", "nvidia.com/gpumem-percentage", "nvidia.com/gpucores",
        "volcano.sh/vgpu-number", "volcano.sh/vgpu-memory", "volcano.sh/vgpu-memory-percentage", "volcano.sh/vgpu-cores",
        "aliyun.com/gpu-mem", "aliyun.com/gpu-count", "aliyun.com/gpu-core.percentage",
        "tencent.com/vcuda-core", "tencent.com/vcuda-memory",
        "amd.com/gpu", "gpu.intel.com/i915", "gpu.intel.com/xe", "gpu.intel.com/millicores", "gpu.intel.com/memory.max",
        "google.com/tpu",
    ]  # fmt: skip
    missing = [n for n in names if index.resource(n) is None]
    assert missing == []
    for annotation in ("gpu-fraction", "gpu-memory", "gpu-fraction-container-name", "gpu-fraction-num-devices"):
        assert index.annotation(annotation) is not None
    assert index.resource("cpu") is None
    assert index.resource("nvidia.com/mig-9g.5gb") is None  # at most 7 slices


def test_admin_adds_a_vendor_without_code(tmp_path: Path) -> None:
    """A ConfigMap adding Hygon DCU names (HAMi-supported) on a new driver: no code change needed."""
    extra = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "catalogue-hygon", "labels": {"dra-bridge.io/catalogue": "true"}},
        "data": {
            "catalogue.yaml": yaml.safe_dump(
                {
                    "apiVersion": "dra-bridge.io/v1alpha1",
                    "kind": "TranslationCatalogue",
                    "drivers": [
                        {
                            "name": "hygon",
                            "driver": "dcu.hygon.example.com",
                            "whole": {},
                            "shared": {
                                "memory": {"capacity": "memory", "step": "1Mi"},
                                "compute": {"capacity": "cores", "wholeDevice": 100},
                            },
                        }
                    ],
                    "targets": [{"name": "hygon", "whole": ["hygon"], "shared": ["hygon"]}],
                    "sources": [
                        {
                            "name": "hygon",
                            "target": "hygon",
                            "resources": [
                                {"name": "hygon.com/dcunum", "meaning": "devices"},
                                {"name": "hygon.com/dcumem", "meaning": "memory", "unit": "1Mi"},
                                {"name": "hygon.com/dcucores", "meaning": "compute", "wholeDevice": 100},
                            ],
                        }
                    ],
                }
            )
        },
    }
    path = tmp_path / "catalogue-hygon.yaml"
    path.write_text(yaml.safe_dump(extra))
    index = CatalogueIndex(load_catalogue([POLICIES / "catalogue.yaml", path]))
    plan = rewrite_pod(
        pod(container(limits={"hygon.com/dcumem": "2048", "hygon.com/dcucores": "20"})), index=index, namespace="ns"
    )
    request = plan.templates[0]["spec"]["spec"]["devices"]["requests"][0]
    assert request["exactly"]["deviceClassName"] == "shared.hygon.dra-bridge.io"
    assert request["exactly"]["capacity"]["requests"] == {"memory": "2Gi", "cores": "20"}


def test_override_replaces_an_entry_by_name() -> None:
    doc = default_doc()
    override = {"targets": [{"name": "nvidia", "whole": ["nvidia"], "partition": ["nvidia"], "shared": ["hami-core"]}]}
    catalogue = build_catalogue([doc, override])
    assert catalogue.target("nvidia").whole == ("nvidia",)
    assert catalogue.target("nvidia").partition_as_shared == ()


def test_a_source_can_be_disabled() -> None:
    override = {
        "sources": [
            {
                "name": "tpu",
                "target": "tpu",
                "enabled": False,
                "resources": [{"name": "google.com/tpu", "meaning": "devices"}],
            }
        ]
    }
    index = CatalogueIndex(build_catalogue([default_doc(), override]))
    assert index.resource("google.com/tpu") is None


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        (
            {"sources": [{"name": "x", "target": "nvidia", "resources": [{"name": "x.com/gpu", "meaning": "gpus"}]}]},
            ["sources[x].resources[x.com/gpu].meaning", "'gpus'"],
        ),
        ({"sources": [{"name": "x", "target": "nowhere", "resources": []}]}, ["sources[x].target", "'nowhere'"]),
        ({"targets": [{"name": "t", "whole": ["ghost"]}]}, ["targets[t].whole", "'ghost'"]),
        (
            {"targets": [{"name": "t", "partition": ["example"]}]},
            ["targets[t].partition", "'example'", "no partition devices"],
        ),
        (
            {
                "sources": [
                    {"name": "x", "target": "nvidia", "resources": [{"name": "nvidia.com/gpu", "meaning": "devices"}]}
                ]
            },
            ["'nvidia.com/gpu'", "claimed by sources 'nvidia' and 'x'"],
        ),
        (
            {
                "sources": [
                    {
                        "name": "x",
                        "target": "nvidia",
                        "resources": [{"pattern": "x.com/p-(.*)", "meaning": "partition"}],
                    }
                ]
            },
            ["(?P<profile>"],
        ),
        (
            {
                "sources": [
                    {"name": "x", "target": "nvidia", "resources": [{"pattern": "x.com/(", "meaning": "devices"}]}
                ]
            },
            ["not a regular expression"],
        ),
        (
            {"sources": [{"name": "x", "target": "nvidia", "resources": [{"name": "x.com/c", "meaning": "compute"}]}]},
            ["wholeDevice"],
        ),
        (
            {
                "sources": [
                    {
                        "name": "x",
                        "target": "nvidia",
                        "resources": [{"name": "x.com/m", "meaning": "memory", "unit": "lots"}],
                    }
                ]
            },
            ["unit", "'lots'"],
        ),
        ({"drivers": [{"name": "Bad_Name", "driver": "d.example.com"}]}, ["drivers[Bad_Name].name", "'Bad_Name'"]),
        (
            {
                "drivers": [
                    {
                        "name": "hami-core",
                        "driver": "hami-core-gpu.project-hami.io",
                        "shared": {
                            "memory": {"capacity": "memory"},
                            "memorySizes": ["1Gi", "2Gi", "3Gi", "4Gi", "5Gi", "6Gi"],
                        },
                    }
                ]
            },
            ["percentages of memory would need 9 alternatives", "DRA allows 8"],
        ),
        (
            {
                "drivers": [
                    {
                        "name": "x",
                        "driver": "x.example.com",
                        "shared": {"memory": {"capacity": "memory"}, "compute": {"capacity": "cores"}},
                    }
                ]
            },
            ["wholeDevice is required"],
        ),
        ({"classDomain": "Not A Domain"}, ["classDomain", "'Not A Domain'"]),
        ({"sources": "nope"}, ["sources: expected a list"]),
    ],
)
def test_errors_name_the_field_and_the_value(override: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(CatalogueError) as caught:
        build_catalogue([default_doc(), override])
    for fragment in fragments:
        assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: [", "not valid YAML"),
        ("- 1", "expected a mapping"),
        ("kind: Secret", "kind must be"),
        ("kind: ConfigMap\ndata: {other: x}", "no data key 'catalogue.yaml'"),
    ],
)
def test_unreadable_documents(text: str, fragment: str) -> None:
    with pytest.raises(CatalogueError, match=fragment):
        parse_document(text, origin="x.yaml")


def test_knows_any_answers_as_resource_finds(index: CatalogueIndex) -> None:
    """The yes/no test the request path asks of a container's names agrees with ``resource``, name
    by name and for sets of names, over every exact name, names the patterns match, near misses
    and names no catalogue knows."""
    exact = [name for source in index.catalogue.sources for e in source.resources if (name := e.name) is not None]
    patterned = ["nvidia.com/mig-1g.5gb", "nvidia.com/mig-3g.20gb", "nvidia.com/mig-7g.80gb", "nvidia.com/mig-2g.10gb"]
    near = [n + "x" for n in exact] + [n[:-1] for n in exact] + [n.upper() for n in exact]
    near += ["nvidia.com/mig-", "nvidia.com/mig-9g.5gb"]  # a pattern's prefix, not its match
    others = ["cpu", "memory", "ephemeral-storage", "example.com/foo", "", "hugepages-2Mi"]
    names = exact + patterned + near + others
    assert any(index.resource(n) is not None for n in patterned), "the corpus holds names only a pattern finds"
    for name in names:
        assert index.knows_any([name]) == (index.resource(name) is not None), name
        assert index.knows_any({name: "1", "cpu": "1"}) == (index.resource(name) is not None), name
    assert not index.knows_any(others) and not index.knows_any([])
    assert index.knows_any([*others, patterned[0]]) and index.knows_any([*others, exact[0]])
