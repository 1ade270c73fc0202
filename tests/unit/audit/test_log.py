"""The decision log's writer: record format, annotations, sinks, rotation under threads, failures."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import re
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest

from webhook.admission.decision import Decision
from webhook.admission.review import AdmissionRequest, allowed, denied, patched
from webhook.audit.log import (
    MAX_ANNOTATION,
    MAX_MESSAGE,
    SCHEMA,
    AuditLog,
    AuditWriteError,
    RotatingFileSink,
    StreamSink,
    annotated,
    audit_annotations,
    default_replica,
    open_audit_log,
    rfc3339,
)
from webhook.errors import ClusterError, NotReady
from webhook.quota.figure import QuotaFigure
from webhook.serving.http import create_app
from webhook.serving.metrics import Metrics
from webhook.translate.rewrite import Conversion

NOW = datetime(2025, 11, 22, 10, 55, 1, 123456, tzinfo=UTC)
ANNOTATION_KEY = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


def request(**overrides: Any) -> AdmissionRequest:
    body: dict[str, Any] = {
        "uid": "7d3c-uid",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "operation": "CREATE",
        "namespace": "team-a",
        "userInfo": {"username": "alice", "uid": "u-1", "groups": ["devs", "system:authenticated"]},
        "object": {"metadata": {"generateName": "trainer-"}},
    }
    body.update(overrides)
    return AdmissionRequest.model_validate(body)


CONVERSION = Conversion(
    container="train",
    claim="gpu-train",
    template="dra-bridge-93ce8af22336",
    legacy={"nvidia.com/gpu": "2", "nvidia.com/gpumem": "8192"},
    summary="2 shared devices (nvidia, 8Gi)",
    devices=2,
    memory=Fraction(16 * 2**30),
)
MEMORY = QuotaFigure(dimension="memory", requested="16Gi", used="56Gi", limit="64Gi", policy="gpu-quota@12")
DEVICES = QuotaFigure(dimension="devices/whole.nvidia.dra-bridge.io", requested="2", used="6", limit="8", policy="q@1")


def patched_decision(**overrides: Any) -> Decision:
    fields: dict[str, Any] = {
        "webhook": "mutate",
        "response": patched("7d3c-uid", [{"op": "add", "path": "/x", "value": 1}]),
        "outcome": "patched",
        "reason": "converted",
        "message": "train: 2 shared devices (nvidia, 8Gi)",
        "conversions": (CONVERSION,),
        "templates_created": ("dra-bridge-93ce8af22336",),
        "tenant": "team-a",
        "quota": (DEVICES,),
        "policy_version": "rv-381",
        "extra": {"note": "x"},
    }
    fields.update(overrides)
    return Decision(**fields)


def quota_denial() -> Decision:
    message = "tenant team-a: memory 16Gi requested, 56Gi used of 64Gi (gpu-quota@12)"
    return Decision(
        webhook="validate",
        response=denied("7d3c-uid", message, reason="Forbidden", code=403),
        outcome="denied",
        reason="quota-exceeded",
        message=message,
        tenant="team-a",
        quota=(MEMORY, DEVICES),
        policy_version="rv-381",
    )


def memory_log(**kwargs: Any) -> tuple[AuditLog, io.StringIO]:
    stream = io.StringIO()
    log = AuditLog(StreamSink(stream), replica="dra-bridge-0", process="p-1", clock=lambda: NOW, **kwargs)
    return log, stream


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


# -- record format -------------------------------------------------------------------------------
def test_a_patched_decision_records_every_field() -> None:
    log, stream = memory_log()
    log.record(patched_decision(), request(), 0.001234567)
    assert records(stream) == [
        {
            "time": "2025-11-22T10:55:01.123Z",
            "webhook": "mutate",
            "uid": "7d3c-uid",
            "operation": "CREATE",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "team-a",
            "name": "trainer-*",
            "user": "alice",
            "groups": ["devs", "system:authenticated"],
            "tenant": "team-a",
            "dryRun": False,
            "decision": "patched",
            "reason": "converted",
            "message": "train: 2 shared devices (nvidia, 8Gi)",
            "conversions": [
                {
                    "container": "train",
                    "claim": "gpu-train",
                    "template": "dra-bridge-93ce8af22336",
                    "legacy": {"nvidia.com/gpu": "2", "nvidia.com/gpumem": "8192"},
                    "summary": "2 shared devices (nvidia, 8Gi)",
                    "devices": 2,
                    "memory": str(16 * 2**30),
                }
            ],
            "templatesCreated": ["dra-bridge-93ce8af22336"],
            "quota": [
                {
                    "dimension": "devices/whole.nvidia.dra-bridge.io",
                    "requested": "2",
                    "used": "6",
                    "limit": "8",
                    "policy": "q@1",
                    "exceeded": False,
                }
            ],
            "policyVersion": "rv-381",
            "extra": {"note": "x"},
            "latencyMs": 1.235,
            "replica": "dra-bridge-0",
            "process": "p-1",
            "seq": 1,
            "schema": SCHEMA,
        }
    ]


def test_a_record_is_one_compact_line_even_when_the_message_has_newlines() -> None:
    log, stream = memory_log()
    log.record(patched_decision(message="line one\nline two"), request(), 0.0)
    text = stream.getvalue()
    assert text.count("\n") == 1 and ": " not in text
    assert json.loads(text)["message"] == "line one\nline two"


def test_a_dry_run_is_marked_and_a_named_object_keeps_its_name() -> None:
    log, stream = memory_log()
    log.record(patched_decision(), request(dryRun=True, name="trainer-0"), 0.0)
    (record,) = records(stream)
    assert record["dryRun"] is True
    assert record["name"] == "trainer-0"


def test_a_quota_denial_records_its_figures_in_order() -> None:
    log, stream = memory_log()
    log.record(quota_denial(), request(), 0.0025)
    (record,) = records(stream)
    assert record["decision"] == "denied" and record["reason"] == "quota-exceeded"
    assert record["webhook"] == "validate" and record["tenant"] == "team-a"
    assert record["message"] == "tenant team-a: memory 16Gi requested, 56Gi used of 64Gi (gpu-quota@12)"
    assert record["quota"] == [
        {
            "dimension": "memory",
            "requested": "16Gi",
            "used": "56Gi",
            "limit": "64Gi",
            "policy": "gpu-quota@12",
            "exceeded": False,
        },
        {
            "dimension": "devices/whole.nvidia.dra-bridge.io",
            "requested": "2",
            "used": "6",
            "limit": "8",
            "policy": "q@1",
            "exceeded": False,
        },
    ]
    assert record["conversions"] == [] and record["templatesCreated"] == []
    assert record["latencyMs"] == 2.5


def test_an_allowed_decision_without_extras_has_the_same_keys() -> None:
    log, stream = memory_log()
    log.record(patched_decision(), request(), 0.0)
    minimal = Decision(webhook="validate", response=allowed("u"), outcome="allowed", reason="no-legacy-request")
    log.record(minimal, request(operation="DELETE", object=None, name="gone"), 0.0)
    full, small = records(stream)
    assert small.keys() == full.keys()
    assert small["tenant"] is None and small["policyVersion"] is None and small["name"] == "gone"
    assert small["operation"] == "DELETE" and small["quota"] == [] and small["extra"] == {}


def test_internal_errors_are_recorded_with_outcome_error() -> None:
    log, stream = memory_log()
    log.record_error("validate", request(), 0.5, RuntimeError("cache exploded"))
    log.record_error("mutate", request(), 0.25, ClusterError("apiserver unreachable"))
    first, second = records(stream)
    assert first["decision"] == "error" and first["reason"] == "internal-error" and first["webhook"] == "validate"
    assert first["message"] == "RuntimeError: cache exploded"
    assert first["tenant"] is None and first["conversions"] == [] and first["latencyMs"] == 500.0
    assert second["reason"] == "cluster-error" and second["message"] == "ClusterError: apiserver unreachable"
    assert [first["seq"], second["seq"]] == [1, 2]


def test_long_messages_are_cut() -> None:
    log, stream = memory_log()
    log.record(patched_decision(message="x" * 10_000), request(), 0.0)
    message = records(stream)[0]["message"]
    assert len(message) == MAX_MESSAGE and message.endswith("...")


def test_sequence_and_process_identify_records_and_restarts() -> None:
    stream = io.StringIO()
    first = AuditLog(StreamSink(stream), replica="r")
    for _ in range(3):
        first.record(patched_decision(), request(), 0.0)
    second = AuditLog(StreamSink(stream), replica="r")
    second.record(patched_decision(), request(), 0.0)
    lines = records(stream)
    assert [r["seq"] for r in lines] == [1, 2, 3, 1]
    assert len({r["process"] for r in lines[:3]}) == 1
    assert lines[3]["process"] != lines[0]["process"]
    assert first.last_seq == 3


def test_the_replica_is_the_pod_name_else_the_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "dra-bridge-7c9d-x2")
    assert default_replica() == "dra-bridge-7c9d-x2"
    assert AuditLog(StreamSink(io.StringIO())).replica == "dra-bridge-7c9d-x2"
    monkeypatch.delenv("POD_NAME")
    assert default_replica() == __import__("socket").gethostname()


def test_times_are_rfc3339_utc_with_milliseconds() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert rfc3339(datetime(2025, 1, 2, 3, 4, 5, 678900, tzinfo=plus_two)) == "2025-01-02T01:04:05.678Z"
    assert rfc3339(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2025-01-02T03:04:05.000Z"
    log = AuditLog(StreamSink(stream := io.StringIO()), replica="r")
    log.record(patched_decision(), request(), 0.0)
    stamp = json.loads(stream.getvalue())["time"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    assert abs(datetime.fromisoformat(stamp) - datetime.now(UTC)) < timedelta(seconds=60)


# -- audit annotations ---------------------------------------------------------------------------
def test_audit_annotations_carry_the_key_facts() -> None:
    notes = audit_annotations(patched_decision(quota=(MEMORY, DEVICES)))
    assert notes == {
        "decision": "patched",
        "reason": "converted",
        "tenant": "team-a",
        "templates": "train=dra-bridge-93ce8af22336",
        "quota": "memory: requested 16Gi, used 56Gi, limit 64Gi (gpu-quota@12)",
        "policy-version": "rv-381",
    }


def test_audit_annotations_of_a_plain_decision_are_decision_and_reason() -> None:
    minimal = Decision(webhook="validate", response=allowed("u"), outcome="allowed", reason="no-legacy-request")
    assert audit_annotations(minimal) == {"decision": "allowed", "reason": "no-legacy-request"}


def test_audit_annotation_keys_are_valid_and_values_short() -> None:
    many = tuple(
        Conversion(container=f"c{i}", claim=f"gpu-c{i}", template=f"dra-bridge-{i:012d}", legacy={}, summary="")
        for i in range(40)
    )
    notes = audit_annotations(patched_decision(conversions=many, tenant="t" * 500, quota=(MEMORY,)))
    assert notes and all(ANNOTATION_KEY.fullmatch(key) for key in notes)
    assert all(len(value) <= MAX_ANNOTATION for value in notes.values())
    assert notes["templates"].endswith("...")


# -- the stream sink -----------------------------------------------------------------------------
class Trickle(io.StringIO):
    """Writes 64 characters at a time and lets other threads run in between: interleaves unless locked."""

    def write(self, text: str) -> int:
        for start in range(0, len(text), 64):
            super().write(text[start : start + 64])
            time.sleep(0)
        return len(text)


def test_the_stream_sink_never_interleaves_lines_across_threads() -> None:
    stream = Trickle()
    log = AuditLog(StreamSink(stream), replica="r")
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(25):
            log.record(patched_decision(), request(), 0.0)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r["seq"] for r in records(stream)] == list(range(1, 201))


class FullDevice(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


def test_a_stream_that_cannot_be_written_raises() -> None:
    log = AuditLog(StreamSink(FullDevice()), replica="r")
    with pytest.raises(AuditWriteError, match="No space left on device"):
        log.record(patched_decision(), request(), 0.0)
    closed = io.StringIO()
    closed.close()
    with pytest.raises(AuditWriteError, match="closed"):
        AuditLog(StreamSink(closed), replica="r").record(patched_decision(), request(), 0.0)


def test_open_audit_log_dash_is_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    log = open_audit_log("-", replica="r")
    log.record(patched_decision(), request(), 0.0)
    assert json.loads(capsys.readouterr().out)["seq"] == 1


# -- the rotating file sink ----------------------------------------------------------------------
def file_lines(folder: Path, name: str = "audit.log") -> list[bytes]:
    """Every line of the log files, oldest file first, read without the project's reader."""
    rotated = sorted((p for p in folder.glob(f"{name}.*")), key=lambda p: -int(p.suffix[1:]))
    lines: list[bytes] = []
    for path in [*rotated, folder / name]:
        data = path.read_bytes()
        assert data.endswith(b"\n"), f"{path.name} ends in the middle of a line"
        lines.extend(data.splitlines())
    return lines


def test_eight_threads_through_hundreds_of_rotations_lose_and_repeat_nothing(tmp_path: Path) -> None:
    sink = RotatingFileSink(tmp_path / "audit.log", max_bytes=16 * 1024, max_files=100_000)
    log = AuditLog(sink, replica="r")
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        barrier.wait()
        try:
            for i in range(625):
                log.record(patched_decision(message=f"thread {n} record {i}"), request(), 0.0)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    assert not errors
    rotated = list(tmp_path.glob("audit.log.*"))
    assert len(rotated) > 100  # many rotations happened
    assert all(p.stat().st_size <= 16 * 1024 for p in [*rotated, tmp_path / "audit.log"])
    seqs = [json.loads(line)["seq"] for line in file_lines(tmp_path)]
    assert seqs == list(range(1, 5001))  # each exactly once, in order across every rotation
    messages = {json.loads(line)["message"] for line in file_lines(tmp_path)}
    assert len(messages) == 5000


def test_the_file_sink_alone_is_thread_safe_across_rotations(tmp_path: Path) -> None:
    sink = RotatingFileSink(tmp_path / "audit.log", max_bytes=4096, max_files=100_000)
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(400):
            sink.write(json.dumps({"id": f"{n}-{i}", "pad": "x" * (i % 97)}) + "\n")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    ids = [json.loads(line)["id"] for line in file_lines(tmp_path)]
    assert sorted(ids) == sorted(f"{n}-{i}" for n in range(8) for i in range(400))
    assert len(list(tmp_path.glob("audit.log.*"))) > 50


def test_retention_deletes_the_oldest_files_and_keeps_a_contiguous_tail(tmp_path: Path) -> None:
    log = AuditLog(RotatingFileSink(tmp_path / "audit.log", max_bytes=2000, max_files=3), replica="r")
    for _ in range(200):
        log.record(patched_decision(), request(), 0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.log", "audit.log.1", "audit.log.2", "audit.log.3"]
    seqs = [json.loads(line)["seq"] for line in file_lines(tmp_path)]
    assert seqs[-1] == 200 and seqs[0] > 1
    assert seqs == list(range(seqs[0], 201))


def test_max_files_zero_keeps_only_the_current_file(tmp_path: Path) -> None:
    log = AuditLog(RotatingFileSink(tmp_path / "audit.log", max_bytes=2000, max_files=0), replica="r")
    for _ in range(20):
        log.record(patched_decision(), request(), 0.0)
    assert [p.name for p in tmp_path.iterdir()] == ["audit.log"]
    seqs = [json.loads(line)["seq"] for line in file_lines(tmp_path)]
    assert seqs == list(range(seqs[0], 21))


def test_a_lowered_max_files_removes_older_rotations(tmp_path: Path) -> None:
    for n in (1, 2, 7):
        (tmp_path / f"audit.log.{n}").write_text("{}\n")
    (tmp_path / "audit.log").write_text("{}\n")
    log = AuditLog(RotatingFileSink(tmp_path / "audit.log", max_bytes=10, max_files=2), replica="r")
    log.record(patched_decision(), request(), 0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.log", "audit.log.1", "audit.log.2"]
    assert (tmp_path / "audit.log.1").read_text() == "{}\n"  # the previous current file, rotated once


def test_a_line_longer_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    log = AuditLog(RotatingFileSink(tmp_path / "audit.log", max_bytes=100, max_files=5), replica="r")
    for _ in range(3):
        log.record(patched_decision(), request(), 0.0)
    assert [len(p.read_text().splitlines()) for p in sorted(tmp_path.iterdir())] == [1, 1, 1]


def test_fsync_mode_writes_and_rotates(tmp_path: Path) -> None:
    log = AuditLog(RotatingFileSink(tmp_path / "a" / "audit.log", max_bytes=2000, max_files=2, fsync=True))
    for _ in range(6):
        log.record(patched_decision(), request(), 0.0)
    assert [json.loads(line)["seq"] for line in file_lines(tmp_path / "a")][-1] == 6


def test_a_restarted_writer_appends_to_the_existing_file(tmp_path: Path) -> None:
    for _ in range(2):
        log = open_audit_log(tmp_path / "audit.log", replica="r")
        log.record(patched_decision(), request(), 0.0)
        log.close()
    lines = [json.loads(line) for line in file_lines(tmp_path)]
    assert [r["seq"] for r in lines] == [1, 1] and lines[0]["process"] != lines[1]["process"]


def test_bad_rotation_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        RotatingFileSink(tmp_path / "audit.log", max_bytes=0)
    with pytest.raises(ValueError, match="max_files"):
        RotatingFileSink(tmp_path / "audit.log", max_files=-1)


# -- failures ------------------------------------------------------------------------------------
def test_a_path_under_a_regular_file_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    with pytest.raises(AuditWriteError, match="cannot open the audit log"):
        open_audit_log(tmp_path / "not-a-dir" / "audit.log")


def test_a_removed_directory_fails_the_next_record_instead_of_writing_into_the_void(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    log = open_audit_log(folder / "audit.log", replica="r")
    log.record(patched_decision(), request(), 0.0)
    shutil.rmtree(folder)
    with pytest.raises(AuditWriteError, match="cannot write the audit log"):
        log.record(patched_decision(), request(), 0.0)
    assert not folder.exists()
    assert log.last_seq == 2  # the failed record used its number: readers will see the gap


def test_a_deleted_file_is_created_again(tmp_path: Path) -> None:
    log = open_audit_log(tmp_path / "audit.log", replica="r")
    log.record(patched_decision(), request(), 0.0)
    (tmp_path / "audit.log").unlink()
    log.record(patched_decision(), request(), 0.0)
    assert [json.loads(line)["seq"] for line in file_lines(tmp_path)] == [2]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_device_raises_on_every_record() -> None:
    log = AuditLog(RotatingFileSink(Path("/dev/full")), replica="r")
    for _ in range(2):
        with pytest.raises(AuditWriteError, match="No space left on device"):
            log.record(patched_decision(), request(), 0.0)


def test_a_write_that_stops_half_way_leaves_one_bad_line_and_the_next_record_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = RotatingFileSink(tmp_path / "audit.log", max_bytes=1 << 20, max_files=2)
    log = AuditLog(sink, replica="r")
    log.record(patched_decision(), request(), 0.0)
    real_write = os.write
    calls = 0

    def disk_fills_up(fd: int, data: Any) -> int:
        nonlocal calls
        if fd != sink._fd:
            return real_write(fd, data)
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data)[:40])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_fills_up)
    with pytest.raises(AuditWriteError, match="No space left"):
        log.record(patched_decision(), request(), 0.0)
    with pytest.raises(AuditWriteError, match="No space left"):
        log.record(patched_decision(), request(), 0.0)
    monkeypatch.setattr(os, "write", real_write)
    log.record(patched_decision(), request(), 0.0)
    lines = (tmp_path / "audit.log").read_bytes().splitlines()
    assert len(lines) == 3 and len(lines[1]) == 40
    assert [json.loads(lines[0])["seq"], json.loads(lines[2])["seq"]] == [1, 4]


def allow(req: AdmissionRequest) -> Decision:
    return Decision(webhook="mutate", response=allowed(req.uid), outcome="allowed", reason="no-legacy-request")


def post_review(*, mutate: Any = allow) -> httpx.Response:
    """One AdmissionReview through the real HTTP layer (in process, no socket)."""
    app = create_app(mutate=mutate, validate=allow, metrics=Metrics(), readiness=lambda: (True, {}))

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://webhook") as client:
            return await client.post("/mutate", json=REVIEW)

    return asyncio.run(send())


REVIEW = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {"uid": "u-9", "kind": {"kind": "Pod"}, "operation": "CREATE", "object": {}},
}


# -- the handler decorator -----------------------------------------------------------------------
def test_annotated_merges_into_the_response_and_the_engine_keys_win() -> None:
    engine_notes = {"converted": "train:dra-bridge-1", "tenant": "x"}
    decision = patched_decision(response=dataclasses.replace(patched("u", []), audit_annotations=engine_notes))
    notes = annotated(decision).response.audit_annotations
    assert notes is not None
    assert notes["converted"] == "train:dra-bridge-1" and notes["tenant"] == "x"
    assert notes["decision"] == "patched" and notes["templates"] == "train=dra-bridge-93ce8af22336"
    assert decision.response.audit_annotations == {"converted": "train:dra-bridge-1", "tenant": "x"}  # a copy


def test_audited_records_and_annotates_every_decision() -> None:
    log, stream = memory_log()
    decide = log.audited("mutate", lambda req: patched_decision())
    decision = decide(request())
    assert decision.response.audit_annotations is not None
    assert decision.response.audit_annotations["reason"] == "converted"
    (record,) = records(stream)
    assert record["decision"] == "patched" and record["uid"] == "7d3c-uid" and record["latencyMs"] >= 0
    plain = log.audited("validate", lambda req: patched_decision(), annotate=False)(request())
    assert plain.response.audit_annotations is None


def test_audited_records_a_failure_and_raises_it_again() -> None:
    log, stream = memory_log()
    failure = ClusterError("apiserver unreachable")

    def broken(req: AdmissionRequest) -> Decision:
        raise failure

    with pytest.raises(ClusterError) as caught:
        log.audited("validate", broken)(request())
    assert caught.value is failure
    (record,) = records(stream)
    assert (record["decision"], record["reason"], record["webhook"]) == ("error", "cluster-error", "validate")


def test_audited_returns_no_decision_it_could_not_record() -> None:
    log = AuditLog(StreamSink(FullDevice()), replica="r")
    with pytest.raises(AuditWriteError):
        log.audited("mutate", lambda req: patched_decision())(request())


def test_over_http_an_audited_handler_that_cannot_record_gets_500() -> None:
    log = AuditLog(StreamSink(FullDevice()), replica="r")
    assert post_review(mutate=log.audited("mutate", allow)).status_code == 500

    def not_ready(req: AdmissionRequest) -> Decision:
        raise NotReady("caches")

    assert post_review(mutate=log.audited("mutate", not_ready)).status_code == 500  # even the error record fails


def test_over_http_an_audited_handler_records_then_answers_with_annotations() -> None:
    log, stream = memory_log()
    response = post_review(mutate=log.audited("mutate", allow))
    assert response.status_code == 200
    assert response.json()["response"]["auditAnnotations"] == {"decision": "allowed", "reason": "no-legacy-request"}
    assert records(stream)[0]["uid"] == "u-9"

    def crash(req: AdmissionRequest) -> Decision:
        raise RuntimeError("bug")

    assert post_review(mutate=log.audited("mutate", crash)).status_code == 500
    assert records(stream)[1]["decision"] == "error" and records(stream)[1]["message"] == "RuntimeError: bug"
