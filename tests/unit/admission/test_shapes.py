"""The boundary: what an apiserver would never send is refused with the field path and the value."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import container, pod
from webhook.admission.shapes import MAX_DEPTH, check_object, parse_body
from webhook.errors import MalformedReview


def refused(body: bytes) -> str:
    with pytest.raises(MalformedReview) as caught:
        parse_body(body)
    return str(caught.value)


def test_a_review_as_the_apiserver_sends_it_parses() -> None:
    document = {"a": [1, -(2**63), 2**63 - 1, 1.5, "\U0001f642", {"b": None}]}
    assert parse_body(json.dumps(document).encode()) == document
    assert parse_body(json.dumps(document, ensure_ascii=False).encode()) == document


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"count": NaN}', "NaN"),
        (b'{"count": Infinity}', "Infinity"),
        (b'{"count": -Infinity}', "-Infinity"),
        (b'{"count": 1e999}', "1e999"),
        (b'{"count": 9223372036854775808}', "9223372036854775808"),
        (b'{"count": -9223372036854775809}', "beyond int64"),
        (b'{"name": "a\\ud800b"}', 'name: "a\\ud800b" holds a lone surrogate'),
        (b'{"\\udfff": 1}', "lone surrogate"),
        (b'{"name": "\xed\xa0\x80"}', "not UTF-8"),
        (b'{"name": ', "not JSON"),
        (b"[" * 5000 + b"]" * 5000, f"deeper than {MAX_DEPTH}"),
        (b"[" * 500 + b"]" * 500, f"deeper than {MAX_DEPTH}"),
        (b'{"a":' * 150 + b"1" + b"}" * 150, f"deeper than {MAX_DEPTH}"),
    ],
)
def test_what_no_apiserver_sends_is_refused(body: bytes, says: str) -> None:
    assert says in refused(body)


def test_one_decoder_for_every_review_answers_as_a_decoder_of_its_own() -> None:
    """The shared decoder's answer (document or refusal, word for word) is json.loads's with the
    same hooks, over well-formed, malformed and interleaved documents."""
    from webhook.admission import shapes

    def fresh(body: bytes) -> Any:
        try:
            text = body.decode("utf-8")
            return (
                "document",
                json.loads(text, parse_constant=shapes._constant, parse_int=shapes._integer, parse_float=shapes._float),
            )
        except MalformedReview as err:
            return ("refused", str(err))
        except ValueError as err:
            return ("refused", f"body is not JSON: {err}")

    def shared(body: bytes) -> Any:
        try:
            return ("document", parse_body(body))
        except MalformedReview as err:
            return ("refused", str(err))

    bodies = [
        json.dumps(
            {"kind": "AdmissionReview", "request": {"object": pod(container(limits={"nvidia.com/gpu": 2}))}}
        ).encode(),
        b"\xef\xbb\xbf{}",  # a byte order mark
        b'{"a": 1, "a": 2}',
        b'{"a": [1, 2.5, -0.0, 1e308, true, null, "x"]}',
        b" \n[] ",
        b"",
        b"{",
        b'{"a": 1} {"b": 2}',
        b'{"a": 00}',
        b'{"a": NaN}',
        b'{"a": 9223372036854775808}',
        b'{"a": 1e400}',
        b"nul",
        b'"text"',
    ]
    for body in bodies * 2:  # each again after the others: nothing carries over between documents
        assert shared(body) == fresh(body), body


def test_a_valid_surrogate_pair_is_text() -> None:
    assert parse_body(b'{"name": "\\ud83d\\ude42"}') == {"name": "\U0001f642"}


def shape_error(kind: str, obj: dict[str, Any]) -> str:
    with pytest.raises(MalformedReview) as caught:
        check_object(kind, obj)
    return str(caught.value)


def test_a_pod_as_the_apiserver_sends_it_passes() -> None:
    obj = pod(container(limits={"nvidia.com/gpu": "1"}), annotations={"gpu-fraction": "0.5"})
    obj["metadata"]["creationTimestamp"] = None  # Go writes an unset time as null
    check_object("Pod", obj)


@pytest.mark.parametrize(
    ("kind", "obj", "says"),
    [
        (
            "Pod",
            {"spec": {"containers": {"main": {}}}},
            "request.object.spec.containers: expected a list, got a mapping (1 keys",
        ),
        (
            "Pod",
            {"spec": {"containers": [{"name": {"a": "b"}}]}},
            "request.object.spec.containers[0].name: expected a string",
        ),
        (
            "Pod",
            {"spec": {"containers": [{"resources": {"limits": ["x"]}}]}},
            "resources.limits: expected a mapping, got a list of 1 items",
        ),
        (
            "Pod",
            {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": {"n": 1}}}}]}},
            'limits["nvidia.com/gpu"]: expected a quantity',
        ),
        ("Pod", {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": True}}}]}}, "got true"),
        ("Pod", {"spec": {"resourceClaims": None}}, "spec.resourceClaims: expected a list, got null"),
        ("Pod", {"metadata": {"labels": {"a": 1}}}, 'metadata.labels["a"]: expected a string, got 1'),
        (
            "Pod",
            {"metadata": {"annotations": "gpu-fraction=1"}},
            'metadata.annotations: expected a mapping, got "gpu-fraction=1"',
        ),
        ("Pod", {"metadata": []}, "request.object.metadata: expected a mapping"),
        ("Pod", {"spec": "x" * 500}, '..."'),
        (
            "ResourceClaim",
            {"spec": {"devices": {"requests": [{"exactly": {"count": "1e3"}}]}}},
            'exactly.count: expected an integer, got "1e3"',
        ),
        (
            "ResourceClaim",
            {"spec": {"devices": {"requests": [{"exactly": {"count": True}}]}}},
            "exactly.count: expected an integer, got true",
        ),
        ("Pod", {"metadata": {"labels": {"a": "x", "b": False}}}, 'metadata.labels["b"]: expected a string, got false'),
        (
            "ResourceClaim",
            {"spec": {"devices": {"requests": [{"firstAvailable": [{"capacity": {"requests": 3}}]}]}}},
            "capacity.requests: expected a mapping, got 3",
        ),
        (
            "ResourceClaimTemplate",
            {"spec": {"spec": {"devices": {"requests": [7]}}}},
            "requests[0]: expected a mapping, got 7",
        ),
        ("ConfigMap", {"data": {"policy.yaml": {"tenants": []}}}, 'data["policy.yaml"]: expected a string'),
        ("Namespace", {"metadata": {"name": ["team-a"]}}, "metadata.name: expected a string, got a list"),
        ("Deployment", {"metadata": {"generateName": 5}}, "metadata.generateName: expected a string, got 5"),
    ],
)
def test_mistyped_fields_are_named_with_their_value(kind: str, obj: dict[str, Any], says: str) -> None:
    assert says in shape_error(kind, obj)


def test_fields_the_core_does_not_read_may_hold_anything() -> None:
    check_object("Pod", {"spec": {"containers": [{"env": {"odd": [1, None]}}], "x": [{"y": None}]}, "status": 7})
    check_object("Deployment", {"spec": {"template": "anything"}})
