"""Every answered review has exactly one audit record: 400, 413 and 503 included, with the uid when the body shows one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from tests.admission.helpers import review
from tests.conftest import POLICIES, container, pod
from tests.fuzz.test_fuzz import ListSink
from webhook.audit.log import AuditLog
from webhook.errors import AuditWriteError
from webhook.serving.http import LoopLag, create_app, uid_hint
from webhook.serving.metrics import Metrics
from webhook.serving.server import build_runtime, dev_cluster
from webhook.serving.settings import Settings


def post_raw(app: Any, path: str, body: bytes, content_type: str = "application/json") -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, content=body, headers={"content-type": content_type})

    return asyncio.run(go())


def wired(sink: ListSink, **settings: Any) -> Any:
    return build_runtime(
        Settings(dev=True, policies_dir=POLICIES, **settings), cluster=dev_cluster(POLICIES), audit=AuditLog(sink)
    ).app


def gpu_review(uid: str) -> dict[str, Any]:
    return review(pod(container(limits={"nvidia.com/gpu": "1"})), uid=uid)


def test_a_malformed_object_is_answered_400_naming_the_field_and_recorded_with_its_uid() -> None:
    sink = ListSink()
    body = gpu_review("u-400")
    body["request"]["object"]["spec"]["containers"][0]["resources"]["limits"] = ["nvidia.com/gpu"]
    response = post_raw(wired(sink), "/mutate", json.dumps(body).encode())
    assert response.status_code == 400
    assert response.json()["message"] == (
        "request.object.spec.containers[0].resources.limits: expected a mapping, got a list of 1 items"
    )
    [record] = sink.records()
    assert record["uid"] == "u-400" and record["decision"] == "error" and record["reason"] == "malformed-object"
    assert record["extra"] == {"httpStatus": 400} and record["seq"] == 1


def test_a_body_that_is_not_json_is_recorded_with_the_uid_read_from_its_text() -> None:
    sink = ListSink()
    text = json.dumps(gpu_review("u-nan")).replace('"dryRun": false', '"dryRun": NaN')
    assert post_raw(wired(sink), "/validate", text.encode()).status_code == 400
    deep = json.dumps(gpu_review("u-deep")).replace(
        '"image": "registry.example/app:1"', '"image": ' + "[" * 3000 + "]" * 3000
    )
    assert post_raw(wired(sink), "/validate", deep.encode()).status_code == 400
    assert post_raw(wired(sink), "/validate", b"\xff\xfe garbage").status_code == 400
    assert [(r["uid"], r["reason"]) for r in sink.records()] == [
        ("u-nan", "malformed-json"),
        ("u-deep", "malformed-json"),
        ("", "malformed-json"),
    ]


def test_too_large_and_wrong_content_type_are_recorded() -> None:
    sink = ListSink()
    app = wired(sink, max_body_bytes=2048)
    big = gpu_review("u-big")
    big["request"]["object"]["metadata"]["annotations"] = {"note": "x" * 4096}
    assert post_raw(app, "/mutate", json.dumps(big).encode()).status_code == 413
    assert post_raw(app, "/mutate", json.dumps(gpu_review("u-type")).encode(), "text/plain").status_code == 400
    assert [(r["uid"], r["reason"], r["extra"]) for r in sink.records()] == [
        ("u-big", "too-large", {"httpStatus": 413}),
        ("u-type", "content-type", {"httpStatus": 400}),
    ]


def test_a_shed_request_is_recorded_with_its_uid() -> None:
    sink, lag = ListSink(), LoopLag()
    app = create_app(
        mutate=lambda r: (_ for _ in ()).throw(AssertionError("decided")),
        validate=lambda r: (_ for _ in ()).throw(AssertionError("decided")),
        metrics=Metrics(),
        readiness=lambda: (True, {}),
        lag=lag,
        audit=AuditLog(sink),
    )
    lag.seconds = 2.5
    assert post_raw(app, "/validate", json.dumps(gpu_review("u-shed")).encode()).status_code == 503
    [record] = sink.records()
    assert (record["uid"], record["reason"], record["extra"]) == ("u-shed", "overloaded", {"httpStatus": 503})


class _BrokenSink(ListSink):
    def write(self, line: str) -> None:
        raise AuditWriteError("disk full")


def test_a_rejection_that_cannot_be_recorded_is_a_500_and_a_gap() -> None:
    log = AuditLog(_BrokenSink())
    app = create_app(
        mutate=lambda r: None,  # type: ignore[arg-type,return-value]
        validate=lambda r: None,  # type: ignore[arg-type,return-value]
        metrics=Metrics(),
        readiness=lambda: (True, {}),
        audit=log,
    )
    response = post_raw(app, "/mutate", b"not json")
    assert response.status_code == 500 and "could not be recorded" in response.json()["message"]
    assert log.last_seq == 1  # the number was taken: the reader sees the gap


def test_uid_hint_reads_only_the_request_uid() -> None:
    assert uid_hint(b'{"apiVersion":"x","request":{"uid":"abc-1","kind":') == "abc-1"
    assert uid_hint(b'{"request": {"uid": "a\\"b"') == 'a"b'
    assert uid_hint(b'{"request":{"kind":{},"uid":"late"}') is None  # the apiserver writes uid first
    assert uid_hint(b'{"request":{"uid":"\\ud800"}') is None
    assert uid_hint(b'{"object":{"metadata":{"uid":"not-the-review"}}}') is None


def test_a_large_body_is_decided_on_a_thread_and_a_small_one_on_the_loop() -> None:
    import threading

    from webhook.admission.decision import Decision
    from webhook.admission.review import allowed

    where: list[str] = []

    def decide(request: Any) -> Decision:
        where.append(threading.current_thread().name)
        return Decision(webhook="mutate", response=allowed(request.uid), outcome="allowed", reason="x")

    app = create_app(
        mutate=decide, validate=decide, metrics=Metrics(), readiness=lambda: (True, {}), inline_max_bytes=4096
    )
    small = gpu_review("u-small")
    large = gpu_review("u-large")
    large["request"]["object"]["metadata"]["annotations"] = {"note": "x" * 8192}
    assert post_raw(app, "/mutate", json.dumps(small).encode()).status_code == 200
    assert post_raw(app, "/mutate", json.dumps(large).encode()).status_code == 200
    assert where[0] == threading.current_thread().name or not where[0].startswith("decide")
    assert where[1].startswith("decide")


def test_a_claim_whose_charge_is_beyond_cel_integers_is_denied_by_the_rule_not_a_500() -> None:
    from tests.fuzz.reviews import seeds
    from tests.fuzz.test_fuzz import runtime

    sink = ListSink()
    path, body = next(
        s for s in seeds() if s[1]["request"]["kind"]["kind"] == "ResourceClaim" and s[1]["request"]["object"]
    )
    exactly = body["request"]["object"]["spec"]["devices"]["requests"][0]["exactly"]
    # A count is charged at most 32 (no allocation holds more devices), but a capacity request on a
    # shared device is charged as asked when no device can meet it: 2**62 GiB passes int64 in bytes.
    exactly["deviceClassName"] = "shared.hami-core.dra-bridge.io"
    exactly["capacity"] = {"requests": {"memory": f"{2**62}Gi"}}
    response = post_raw(runtime(sink).app, path, json.dumps(body).encode())
    assert response.status_code == 200
    answer = response.json()["response"]
    assert answer["allowed"] is False and "beyond CEL's 64-bit integers" in answer["status"]["message"]
    [record] = sink.records()
    assert record["decision"] == "denied"
