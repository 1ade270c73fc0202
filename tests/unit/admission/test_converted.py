"""The conversion per Pod shape: a memoised answer is exactly what converting that Pod answers.

Differential: a sequence of Pods made from the fuzz seeds, a Pod as the apiserver sends it (service
account volume, env, labels, affinity, pins) and the catalogue's names, each a random change of one
field of an earlier Pod (what differs between replicas, so the memo is hit, as well as anything
else anywhere, so it is missed), goes through ``convert`` on one catalogue; every answer is
compared with a fresh ``rewrite_pod`` of that very Pod. It fails if the key leaves out anything the
conversion reads or changes.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from tests.conftest import container, pod
from tests.fuzz.reviews import _spots as spots
from tests.fuzz.reviews import seeds
from webhook.admission import converted as memo_module
from webhook.admission.converted import NOTHING_TO_CONVERT, Converted, ShapeMemo, convert, shape_of
from webhook.admission.shapes import check_object
from webhook.errors import MalformedReview, TranslationError
from webhook.translate.catalogue import CatalogueIndex
from webhook.translate.legacy import mentions_legacy
from webhook.translate.rewrite import rewrite_pod

NAMES = ["nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpucores", "nvidia.com/mig-1g.5gb", "amd.com/gpu", "cpu"]


def fresh(pod_: dict[str, Any], index: CatalogueIndex, namespace: str = "team-a", **native: str) -> Converted:
    return Converted.of(pod_, rewrite_pod(pod_, index=index, namespace=namespace, native=native), index)


def memo_of(index: CatalogueIndex) -> ShapeMemo:
    found = index.derived.get(ShapeMemo)
    assert isinstance(found, ShapeMemo)
    return found


def as_sent(name: str, volume: str) -> dict[str, Any]:
    """A replica of a workload as the apiserver hands it to mutating webhooks."""
    main = container("main", limits={"nvidia.com/gpu": "2", "nvidia.com/gpumem": "4096"}, requests={"cpu": "1"})
    main["env"] = [{"name": "RANK", "value": name[-1]}]
    main["volumeMounts"] = [{"name": volume, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]
    side = container("side", limits={"cpu": "1"})
    side["volumeMounts"] = list(main["volumeMounts"])
    out = pod(
        main,
        side,
        annotations={"nvidia.com/use-gputype": "A100", "team": "ml"},
        volumes=[{"name": volume, "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}],
        nodeSelector={"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"},
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}},
        ephemeralContainers=[container("debug", limits={"nvidia.com/gpu": "1"})],
        serviceAccountName="default",
    )
    out["metadata"].update(name=name, generateName="trainer-7d9f8c6b5-", labels={"app": "trainer", "pod": name})
    return out


def seed_pods() -> list[dict[str, Any]]:
    pods = [r["request"]["object"] for _, r in seeds() if r["request"]["kind"]["kind"] == "Pod"]
    pods += [pod(container("main", limits={name: "1"})) for name in NAMES]
    pods += [as_sent("trainer-7d9f8c6b5-abcde", "kube-api-access-x7k2p")]
    return [copy.deepcopy(p) for p in pods]


def changed(rng: random.Random, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with one field changed: renamed (identity), a number, a legacy name, a key, or removed."""
    out = copy.deepcopy(base)
    choice = rng.random()
    if choice < 0.3:  # another replica of the same workload
        meta = out.setdefault("metadata", {})
        meta["name"] = f"replica-{rng.randrange(10**6)}"
        meta["uid"] = f"uid-{rng.randrange(10**6)}"
        meta["creationTimestamp"] = "2026-11-30T08:00:00Z"
        meta.setdefault("labels", {})["pod"] = meta["name"]
        for volume in (out.get("spec") or {}).get("volumes") or []:
            volume["name"] = f"kube-api-access-{rng.randrange(10**5)}"
        return out
    if choice < 0.35:  # a new key somewhere
        places = [s for s in spots(out, ()) if isinstance(s[1][s[2]], dict)]
        if places:
            _, parent, key = rng.choice(places)
            parent[key][rng.choice([*NAMES, "annotations", "nodeSelector", "resourceClaims", "x"])] = rng.choice(
                ["1", "main", {}, []]
            )
        return out
    places = [s for s in spots(out, ()) if s[0][:2] != ("metadata", "name")]
    path, parent, key = rng.choice(places)
    value = parent[key]
    if choice < 0.5 and isinstance(value, str) and value[:1].isdigit():
        parent[key] = str(rng.choice([0, 1, 2, 3, 50, 1024]))
    elif choice < 0.65 and isinstance(parent, dict) and isinstance(value, str):
        parent[key] = rng.choice([*NAMES, "x", "main", "gpu-fraction"])
    elif choice < 0.8 and isinstance(parent, dict):
        parent[rng.choice(NAMES)] = parent.pop(key)
    elif (isinstance(parent, dict) and path[0] != "spec") or len(path) > 3:
        del parent[key]
    return out


def test_a_memoised_answer_is_the_answer_for_that_very_pod(index: CatalogueIndex) -> None:
    rng = random.Random(20261130)
    index = CatalogueIndex(index.catalogue)  # a memo of its own
    pods = seed_pods()
    compared = errors = 0
    for _ in range(1500):
        candidate = changed(rng, rng.choice(pods))
        try:
            check_object("Pod", candidate)  # what reaches the engine: the boundary refuses the rest
        except MalformedReview:
            continue
        try:
            expected = fresh(candidate, index)
        except TranslationError as err:
            with pytest.raises(TranslationError) as raised:
                convert(candidate, index=index, namespace="team-a", native={})
            assert str(raised.value) == str(err)
            errors += 1
            continue
        assert convert(candidate, index=index, namespace="team-a", native={}) == expected, json.dumps(candidate)
        compared += 1
        pods.append(candidate)
    memo = memo_of(index)
    assert compared > 1000 and errors > 0
    assert memo.hits > 200 and memo.misses > 100, (memo.hits, memo.misses)


def test_replicas_of_a_workload_share_one_entry(index: CatalogueIndex) -> None:
    index = CatalogueIndex(index.catalogue)
    first = pod(container("main", limits={"nvidia.com/gpu": "2"}))
    convert(first, index=index, namespace="team-a", native={})
    for n in range(5):
        replica = copy.deepcopy(first)
        replica["metadata"].update(name=f"p-{n}", uid=f"u-{n}", managedFields=[{"manager": "kcm", "time": str(n)}])
        assert convert(replica, index=index, namespace="team-a", native={}) == fresh(replica, index)
    assert (len(memo_of(index)), memo_of(index).hits) == (1, 5)


@pytest.mark.parametrize(
    "what",
    ["namespace", "native", "catalogue"],
)
def test_what_the_pod_does_not_say_is_part_of_the_key(index: CatalogueIndex, what: str) -> None:
    base = CatalogueIndex(index.catalogue)
    gpu_pod = pod(container("main", limits={"nvidia.com/gpu": "1"}))
    first = convert(gpu_pod, index=base, namespace="team-a", native={})
    if what == "namespace":
        other = convert(gpu_pod, index=base, namespace="team-b", native={})
        assert other == fresh(gpu_pod, base, "team-b") and other.templates != first.templates
    elif what == "native":
        other = convert(gpu_pod, index=base, namespace="team-a", native={"nvidia.com/gpu": "gpu.example.com"})
        assert not other.changed and other.warnings  # left for the native mapping, with a warning
    else:
        reloaded = CatalogueIndex(index.catalogue)  # a catalogue reload builds a new index
        convert(gpu_pod, index=reloaded, namespace="team-a", native={})
        assert memo_of(reloaded).misses == 1 and memo_of(reloaded).hits == 0
    assert memo_of(base).hits == 0


def test_errors_are_never_kept(index: CatalogueIndex) -> None:
    index = CatalogueIndex(index.catalogue)
    bad = pod(container("main", limits={"nvidia.com/gpu": "1.5"}))
    for _ in range(2):
        with pytest.raises(TranslationError, match="not a whole number"):
            convert(bad, index=index, namespace="team-a", native={})
    assert len(memo_of(index)) == 0


def test_nothing_to_convert_is_decided_without_the_memo(index: CatalogueIndex) -> None:
    index = CatalogueIndex(index.catalogue)
    plain = pod(container("web", limits={"cpu": "1", "memory": "1Gi"}))
    assert convert(plain, index=index, namespace="team-a", native={}) is NOTHING_TO_CONVERT
    assert ShapeMemo not in index.derived


def test_mentions_legacy_is_false_only_where_the_rewrite_leaves_the_pod_alone(index: CatalogueIndex) -> None:
    rng = random.Random(7)
    pods = seed_pods()
    quiet = 0
    for _ in range(1500):
        candidate = changed(rng, rng.choice(pods))
        pods.append(candidate)
        if mentions_legacy(candidate, index=index):
            continue
        quiet += 1
        plan = rewrite_pod(candidate, index=index, namespace="team-a", native={"nvidia.com/gpu": "x"})
        assert not plan.changed and not plan.warnings, json.dumps(candidate)
    assert quiet > 50


def test_replicas_as_the_apiserver_sends_them_share_one_entry(index: CatalogueIndex) -> None:
    index = CatalogueIndex(index.catalogue)
    replicas = [as_sent(f"trainer-7d9f8c6b5-{n:05d}", f"kube-api-access-{n:05d}") for n in range(20)]
    for replica in replicas:
        assert convert(replica, index=index, namespace="team-a", native={}) == fresh(replica, index)
    assert (len(memo_of(index)), memo_of(index).hits) == (1, 19)


def test_large_keys_and_full_memos_stay_bounded(index: CatalogueIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    index = CatalogueIndex(index.catalogue)
    gpu_pod = pod(container("main", limits={"nvidia.com/gpu": "1"}))
    big = copy.deepcopy(gpu_pod)
    big["metadata"]["annotations"] = {"note": "x" * (memo_module.MAX_SHAPE_BYTES + 1)}
    assert shape_of(big) is None
    assert convert(big, index=index, namespace="team-a", native={}) == fresh(big, index)
    assert ShapeMemo not in index.derived
    odd = copy.deepcopy(gpu_pod)
    odd["spec"]["containers"].append("not a container")
    assert shape_of(odd) is None

    monkeypatch.setattr(memo_module, "MAX_SHAPES", 3)
    for n in range(7):
        shaped = pod(container(f"c{n}", limits={"nvidia.com/gpu": "1"}))
        convert(shaped, index=index, namespace="team-a", native={})
        assert len(memo_of(index)) <= 3
    assert len(memo_of(index)) == 1  # full after the sixth: emptied, then the seventh kept

    monkeypatch.setattr(memo_module, "MAX_SHAPES", 1000)
    monkeypatch.setattr(memo_module, "MAX_KEY_BYTES", 2 * len(shape_of(gpu_pod) or b""))
    for n in range(5):
        convert(pod(container(f"d{n}", limits={"nvidia.com/gpu": "1"})), index=index, namespace="team-a", native={})
        assert len(memo_of(index)) <= 2


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("nodeSelector", [{"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}, {"nvidia.com/gpu.product": "NVIDIA-H100"}]),
        ("annotations", [{"nvidia.com/use-gputype": "A100"}, {"nvidia.com/use-gputype": "H100"}]),
    ],
)
def test_a_model_pin_is_part_of_the_shape(index: CatalogueIndex, field: str, values: list[dict[str, str]]) -> None:
    index = CatalogueIndex(index.catalogue)
    answers = []
    for value in values:
        pinned = pod(container("main", limits={"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024"}))
        if field == "nodeSelector":
            pinned["spec"]["nodeSelector"] = value
        else:
            pinned["metadata"]["annotations"] = value
        answers.append(convert(pinned, index=index, namespace="team-a", native={}))
        assert answers[-1] == fresh(pinned, index)
    assert answers[0].templates != answers[1].templates  # the pins select other devices


def _reordered(obj: dict[str, Any], first: list[str]) -> dict[str, Any]:
    """``obj`` with the keys ``first`` (those it has) moved to the front, the rest in their order."""
    return {**{k: obj[k] for k in first if k in obj}, **{k: v for k, v in obj.items() if k not in first}}


def test_pods_differing_only_in_field_order_each_get_their_own_patch(index: CatalogueIndex) -> None:
    """The patch lists its operations in the Pod's order of fields: a Pod whose levels, spec fields,
    container fields or resource names come in another order is answered for that very order."""
    index = CatalogueIndex(index.catalogue)
    base = pod(
        container("main", limits={"nvidia.com/gpu": "1", "cpu": "1"}, requests={"nvidia.com/gpu": "1"}),
        annotations={"nvidia.com/use-gputype": "A100"},
        initContainers=[container("init", limits={"nvidia.com/gpumem": "1024", "nvidia.com/gpu": "1"})],
        resourceClaims=[{"name": "scratch", "resourceClaimName": "scratch"}],
        nodeSelector={"pool": "gpu"},
    )
    variants = [base]
    spec_orders = [
        ["resourceClaims", "containers", "initContainers"],
        ["containers", "nodeSelector", "initContainers", "resourceClaims"],
        ["initContainers", "resourceClaims", "containers"],
    ]
    for order in spec_orders:
        variant = copy.deepcopy(base)
        variant["spec"] = _reordered(variant["spec"], order)
        variants.append(variant)
    flipped = copy.deepcopy(base)
    flipped = _reordered(flipped, ["spec", "metadata"])
    variants.append(flipped)
    for c in ("containers", "initContainers"):
        variant = copy.deepcopy(base)
        variant["spec"][c] = [_reordered(item, ["resources", "name"]) for item in variant["spec"][c]]
        for item in variant["spec"][c]:
            item["resources"] = _reordered(item["resources"], ["requests"])
            item["resources"]["limits"] = dict(reversed(list(item["resources"]["limits"].items())))
        variants.append(variant)
    patches = set()
    for variant in variants * 2:  # the second round is answered from the memo
        expected = fresh(variant, index)
        assert convert(variant, index=index, namespace="team-a", native={}) == expected, json.dumps(variant)
        patches.add(expected.patch)
    assert len(patches) > 2  # the orders do reach the patch: the test can tell them apart
