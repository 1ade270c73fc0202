"""A record is written whatever the strings hold, and a record that cannot be made still takes its number."""

from __future__ import annotations

import json

from tests.admission.helpers import request
from tests.conftest import container, pod
from tests.fuzz.test_fuzz import ListSink
from webhook.admission.decision import Decision
from webhook.admission.review import allowed
from webhook.audit.log import AuditLog


def test_a_lone_surrogate_is_written_escaped_not_lost() -> None:
    sink = ListSink()
    log = AuditLog(sink)
    odd = pod(container())
    odd["metadata"]["name"] = "p\ud800"  # the envelope refuses one in its own strings; the object is a plain dict
    req = request(odd, uid="u-1")
    decision = Decision(webhook="mutate", response=allowed(req.uid), outcome="allowed", reason="x", message="a\udfffb")
    log.record(decision, req, 0.001)
    [line] = sink.lines
    assert line.isascii() and "\\ud800" in line
    record = json.loads(line)
    assert record["name"] == "p\ud800" and record["message"] == "a\udfffb" and record["seq"] == 1


def test_a_record_whose_fields_cannot_be_made_says_so_under_its_number() -> None:
    sink = ListSink()
    log = AuditLog(sink)
    req = request(pod(container()), uid="u-odd")
    decision = Decision(webhook="validate", response=allowed("u-odd"), outcome="allowed", reason="x", quota=(object(),))  # type: ignore[arg-type]
    log.record(decision, req, 0.001)
    [record] = sink.records()
    assert record["uid"] == "u-odd" and record["decision"] == "error" and record["reason"] == "audit-record-failed"
    assert record["seq"] == 1 and record["extra"] == {"httpStatus": 500}


def test_text_in_any_script_is_written_as_it_is_and_reads_back_the_same() -> None:
    sink = ListSink()
    log = AuditLog(sink)
    named = pod(container())
    named["metadata"]["name"] = "gpu-für-チーム"
    req = request(named, uid="u-2")
    message = 'quota "über" 100 % — 日本語 \\ \t \x00 \U0001f600'
    decision = Decision(webhook="mutate", response=allowed(req.uid), outcome="allowed", reason="x", message=message)
    log.record(decision, req, 1e-7)
    [line] = sink.lines
    assert "gpu-für-チーム" in line and "\n" not in line.rstrip("\n")  # UTF-8 on one line, not escaped
    record = json.loads(line)
    assert record["name"] == "gpu-für-チーム" and record["message"] == message
    assert record["latencyMs"] == round(1e-7 * 1000, 3) and record["seq"] == 1
