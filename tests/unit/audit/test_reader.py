"""Reading the decision log: file order, malformed lines, time bounds, filters, sequences, summaries, follow."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from webhook.admission.decision import Decision
from webhook.admission.review import AdmissionRequest, allowed
from webhook.audit.log import AuditLog, RotatingFileSink
from webhook.audit.reader import (
    Entry,
    Filter,
    Malformed,
    RawLine,
    SequenceCheck,
    follow_lines,
    log_files,
    parse_line,
    parse_when,
    read_lines,
    summarise,
)

NOW = datetime(2025, 11, 22, 12, 0, tzinfo=UTC)
GI = 2**30


def entry(seq: int = 1, **fields: Any) -> Entry:
    record = {
        "time": "2025-11-22T10:00:00.000Z",
        "decision": "allowed",
        "reason": "no-legacy-request",
        "webhook": "validate",
        "namespace": "team-a",
        "user": "alice",
        "tenant": "team-a",
        "replica": "r1",
        "process": "p1",
        "seq": seq,
        **fields,
    }
    return parse_line(RawLine("audit.log", seq, json.dumps(record).encode()))


# -- files and lines -----------------------------------------------------------------------------
def test_log_files_are_oldest_first_by_number_not_by_name(tmp_path: Path) -> None:
    for name in ("audit.log", "audit.log.1", "audit.log.2", "audit.log.10", "audit.log.bak", "other.log.3"):
        (tmp_path / name).write_text("")
    assert [p.name for p in log_files(tmp_path / "audit.log")] == [
        "audit.log.10",
        "audit.log.2",
        "audit.log.1",
        "audit.log",
    ]


def test_rotated_files_alone_are_still_a_log(tmp_path: Path) -> None:
    (tmp_path / "audit.log.1").write_text('{"a":1}\n')
    assert [line.data for line in read_lines(tmp_path / "audit.log")] == [b'{"a":1}']


def test_no_log_at_all_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such audit log"):
        list(read_lines(tmp_path / "audit.log"))
    with pytest.raises(FileNotFoundError):
        list(read_lines(tmp_path / "missing-dir" / "audit.log"))


def test_lines_come_in_order_with_their_file_and_number_and_blank_lines_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "audit.log.2").write_text("a\nb\n")
    (tmp_path / "audit.log.1").write_text("c\n\nd\n")
    (tmp_path / "audit.log").write_text("e\nunterminated")
    lines = [(Path(line.source).name, line.lineno, line.data) for line in read_lines(tmp_path / "audit.log")]
    assert lines == [
        ("audit.log.2", 1, b"a"),
        ("audit.log.2", 2, b"b"),
        ("audit.log.1", 1, b"c"),
        ("audit.log.1", 3, b"d"),
        ("audit.log", 1, b"e"),
        ("audit.log", 2, b"unterminated"),
    ]


def test_a_file_seen_under_two_names_during_a_rotation_is_read_once(tmp_path: Path) -> None:
    (tmp_path / "audit.log.1").write_text("old\n")
    (tmp_path / "audit.log").write_text("current\n")
    os.link(tmp_path / "audit.log", tmp_path / "audit.log.2")  # same inode under two names, as mid-rename
    assert [line.data for line in read_lines(tmp_path / "audit.log")] == [b"old", b"current"]


# -- records -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{not json", "not JSON"),
        (b'{"time": "2025-01-01T00:00:00Z", "decision": "allowed"', "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"time": "2025-01-01T00:00:00Z"}', "no decision"),
        (b'{"decision": "allowed"}', "no valid time: None"),
        (b'{"decision": "allowed", "time": "yesterday"}', "no valid time: 'yesterday'"),
        (b'{"decision": "allowed", "time": 17}', "no valid time: 17"),
    ],
)
def test_malformed_lines_say_where_and_why(data: bytes, problem: str) -> None:
    with pytest.raises(Malformed) as caught:
        parse_line(RawLine("/var/log/audit.log.3", 41, data))
    assert str(caught.value).startswith(f"/var/log/audit.log.3:41: {problem}")


def test_a_record_keeps_its_line_and_a_naive_time_is_utc() -> None:
    line = RawLine("f", 1, b'{"time": "2025-01-01T01:02:03.004", "decision": "denied"} ')
    parsed = parse_line(line)
    assert parsed.time == datetime(2025, 1, 1, 1, 2, 3, 4000, tzinfo=UTC)
    assert parsed.text == '{"time": "2025-01-01T01:02:03.004", "decision": "denied"}'
    assert parsed.get("decision") == "denied" and parsed.get("tenant") is None


# -- time bounds ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h", NOW - timedelta(hours=1)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2d", NOW - timedelta(days=2)),
        ("45s", NOW - timedelta(seconds=45)),
        ("1h30m", NOW - timedelta(hours=1, minutes=30)),
        (" 1d12h ", NOW - timedelta(days=1, hours=12)),
        ("2025-11-20T08:00:00Z", datetime(2025, 11, 20, 8, tzinfo=UTC)),
        ("2025-11-20T10:00:00.500+02:00", datetime(2025, 11, 20, 8, 0, 0, 500000, tzinfo=UTC)),
        ("2025-11-20T08:00:00", datetime(2025, 11, 20, 8, tzinfo=UTC)),
        ("2025-11-20", datetime(2025, 11, 20, tzinfo=UTC)),
    ],
)
def test_parse_when(text: str, expected: datetime) -> None:
    assert parse_when(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["", "h", "1x", "yesterday", "-1h", "1h 30m", "2025-13-01T00:00:00Z"])
def test_parse_when_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_when(text, now=NOW)


# -- filters -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("selection", "fields", "matches"),
    [
        (Filter(), {}, True),
        (Filter(tenants=frozenset({"team-a"})), {}, True),
        (Filter(tenants=frozenset({"team-b"})), {}, False),
        (Filter(tenants=frozenset({"-"})), {"tenant": None}, True),
        (Filter(tenants=frozenset({"-"})), {}, False),
        (Filter(namespaces=frozenset({"team-a", "ml"})), {"namespace": "ml"}, True),
        (Filter(namespaces=frozenset({"team-a"})), {"namespace": "ml"}, False),
        (Filter(users=frozenset({"bob"})), {}, False),
        (Filter(users=frozenset({"bob"})), {"user": "bob"}, True),
        (Filter(decisions=frozenset({"denied", "error"})), {"decision": "error"}, True),
        (Filter(decisions=frozenset({"denied"})), {}, False),
        (Filter(reasons=frozenset({"quota-exceeded"})), {"reason": "quota-exceeded"}, True),
        (Filter(reasons=frozenset({"quota-exceeded"})), {}, False),
        (Filter(webhooks=frozenset({"mutate"})), {}, False),
        (Filter(webhooks=frozenset({"mutate"})), {"webhook": "mutate"}, True),
        (Filter(since=datetime(2025, 11, 22, 10, tzinfo=UTC)), {}, True),  # bounds are inclusive
        (Filter(since=datetime(2025, 11, 22, 10, 0, 1, tzinfo=UTC)), {}, False),
        (Filter(until=datetime(2025, 11, 22, 10, tzinfo=UTC)), {}, True),
        (Filter(until=datetime(2025, 11, 22, 9, 59, tzinfo=UTC)), {}, False),
        (Filter(tenants=frozenset({"team-a"}), decisions=frozenset({"denied"})), {}, False),  # all kinds must match
    ],
)
def test_filters(selection: Filter, fields: dict[str, Any], matches: bool) -> None:
    assert selection.matches(entry(**fields)) is matches


# -- sequences -----------------------------------------------------------------------------------
def test_sequence_gaps_repeats_and_restarts() -> None:
    check = SequenceCheck()
    for seq in (1, 2, 3, 7, 8, 9, 9):
        check.feed(entry(seq))
    check.feed(entry(1, process="p2"))  # a restart of r1
    check.feed(entry(5, replica="r2"))  # another replica, first seen at 5: earlier records were rotated away
    check.feed(entry(6, replica="r2"))
    check.feed(entry("x", replica="r2"))  # type: ignore[arg-type]  # no usable seq: ignored
    assert check.problems == [
        "3 records missing between seq 3 and 7 on replica r1 (process p1)",
        "seq 9 after 9 on replica r1 (process p1): repeated or out of order at audit.log:9",
    ]
    assert check.missing == 3
    assert check.restarts == {"r1": 1}


def test_a_single_missing_record_is_singular() -> None:
    check = SequenceCheck()
    for seq in (41, 43):
        check.feed(entry(seq))
    assert check.problems == ["1 record missing between seq 41 and 43 on replica r1 (process p1)"]


# -- summaries -----------------------------------------------------------------------------------
def quota(dimension: str, requested: str) -> dict[str, str]:
    return {"dimension": dimension, "requested": requested, "used": "0", "limit": "99", "policy": "p"}


CLAIM = {"group": "resource.k8s.io", "version": "v1", "kind": "ResourceClaim"}
POD = {"group": "", "version": "v1", "kind": "Pod"}


def test_charged_claims_win_over_conversions_and_overlapping_figures_count_once() -> None:
    conversion = {"summary": "4 whole devices (nvidia)", "devices": 4, "memory": "0"}
    entries = [
        entry(1, decision="patched", webhook="mutate", conversions=[conversion]),  # the Pod of the claim of seq 3
        entry(2, kind=POD, quota=[quota("devices/*", "4"), quota("memory", "320Gi")]),  # a preview of seq 3
        entry(
            3,
            kind=CLAIM,
            quota=[
                quota("devices/whole.*.dra-bridge.io", "4"),
                quota("devices/*", "4"),  # overlapping patterns: the same four devices
                quota("memory", "320Gi"),
                quota("memory", "320Gi"),  # a second policy checked the same request
                quota("perClaim.memory", "320Gi"),
                quota("compute", "400"),
                quota("claims", "1"),
            ],
        ),
        entry(4, kind=CLAIM, quota=[quota("perClaim.devices", "3"), quota("devices/partition.*", "2")]),
        entry(5, kind=CLAIM, quota=[quota("claims", "1")]),  # nothing to count: not a charge of devices or memory
        entry(6, kind=CLAIM, dryRun=True, quota=[quota("devices/*", "8"), quota("memory", "80Gi")]),
        entry(7, kind=CLAIM, decision="denied", reason="quota-exceeded", quota=[quota("devices/*", "8")]),
        entry(8, decision="error", reason="internal-error"),
    ]
    team = summarise(entries, Filter()).tenants["team-a"]
    assert team.source == "quota" and team.charged_claims == 2
    assert (team.gpus, team.memory) == (Fraction(7), Fraction(320 * GI))
    assert dict(team.outcomes) == {"patched": 1, "allowed": 5, "denied": 1, "error": 1}
    assert team.dry_run == 1 and dict(team.denials) == {"quota-exceeded": 1}


def test_without_charged_claims_conversions_of_mutate_records_are_counted() -> None:
    def patched(seq: int, devices: int, memory: str, **fields: Any) -> Entry:
        conversion = {"summary": "(prose is not read)", "devices": devices, "memory": memory}
        return entry(seq, **{"decision": "patched", "webhook": "mutate", "conversions": [conversion], **fields})

    entries = [
        patched(1, 2, "0"),
        patched(2, 3, "16Gi"),
        patched(3, 8, "0", dryRun=True),
        entry(
            4,
            decision="denied",
            reason="invalid-request",
            webhook="mutate",
            conversions=[{"summary": "8 whole devices (n)", "devices": 8, "memory": "0"}],
        ),
        entry(
            5,
            decision="patched",
            webhook="mutate",
            conversions=["junk", {"summary": None}, {"devices": "9", "memory": "x"}, {"devices": True}],
        ),
        patched(6, 1, "0", webhook="validate"),  # only mutate records convert
        entry(7, kind=POD, quota=[quota("devices/*", "9")]),  # a Pod preview is not a charge
    ]
    team = summarise(entries, Filter()).tenants["team-a"]
    assert team.source == "conversions" and team.charged_claims == 0
    assert (team.gpus, team.memory) == (Fraction(5), Fraction(16 * GI))


def test_summaries_are_per_tenant_and_gaps_ignore_filters_but_not_the_window() -> None:
    entries = [
        entry(1, tenant="team-a"),
        entry(2, tenant=None),
        entry(4, tenant="team-b"),
        entry(5, tenant="team-a", time="2025-11-22T11:00:00Z"),
        entry(9, tenant="team-a", time="2025-11-22T13:00:00Z"),  # outside the window
    ]
    selection = Filter(tenants=frozenset({"team-a", "-"}), until=datetime(2025, 11, 22, 12, tzinfo=UTC))
    summary = summarise(entries, selection)
    assert sorted(summary.tenants) == ["-", "team-a"] and summary.records == 3
    assert summary.tenants["team-a"].outcomes["allowed"] == 2
    assert summary.sequence.problems == ["1 record missing between seq 2 and 4 on replica r1 (process p1)"]


# -- following -----------------------------------------------------------------------------------
class Script:
    """A fake clock and sleep: each sleep runs the next step, so a follow is deterministic."""

    def __init__(self, *steps: Callable[[], None]) -> None:
        self.steps = list(steps)
        self.now = 0.0

    def sleep(self, _seconds: float) -> None:
        self.now += 1
        if self.steps:
            self.steps.pop(0)()

    def clock(self) -> float:
        return self.now


def writer(folder: Path, **sink: Any) -> Callable[[int], None]:
    log = AuditLog(RotatingFileSink(folder / "audit.log", **sink), replica="r", process="p")
    req = AdmissionRequest.model_validate({"uid": "u", "kind": {"kind": "Pod"}, "operation": "CREATE"})
    decision = Decision(webhook="mutate", response=allowed("u"), outcome="allowed", reason="no-legacy-request")

    def write(n: int) -> None:
        for _ in range(n):
            log.record(decision, req, 0.0)

    return write


def seqs(lines: Any) -> list[int]:
    return [parse_line(line).record["seq"] for line in lines]


def test_follow_reads_history_then_new_lines_across_one_and_several_rotations(tmp_path: Path) -> None:
    write = writer(tmp_path, max_bytes=1500, max_files=1000)  # about 3 records a file
    write(5)
    script = Script(
        lambda: write(1),  # same file or one rotation
        lambda: None,
        lambda: write(12),  # several rotations between two polls
        lambda: write(2),
    )
    lines = follow_lines(tmp_path / "audit.log", timeout=6, poll_interval=0, sleep=script.sleep, clock=script.clock)
    assert seqs(lines) == list(range(1, 21))
    assert len(list(tmp_path.glob("audit.log.*"))) > 4


def test_follow_survives_its_file_being_deleted_by_retention(tmp_path: Path) -> None:
    write = writer(tmp_path, max_bytes=1500, max_files=1)
    write(2)
    script = Script(lambda: write(30), lambda: write(1))
    got = seqs(follow_lines(tmp_path / "audit.log", timeout=4, poll_interval=0, sleep=script.sleep, clock=script.clock))
    assert got[:2] == [1, 2] and got[-1] == 33
    assert got == sorted(set(got))  # records deleted before they were read are missing, none repeated


def test_follow_holds_back_a_partial_line_until_it_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b"first\nsec")

    def append(data: bytes) -> Callable[[], None]:
        def step() -> None:
            with path.open("ab") as handle:
                handle.write(data)

        return step

    script = Script(append(b"ond"), append(b"\nthird\n"))
    lines = follow_lines(path, timeout=3, poll_interval=0, sleep=script.sleep, clock=script.clock)
    assert [line.data for line in lines] == [b"first", b"second", b"third"]


def test_follow_starts_over_after_truncation_in_place(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b"one long line\n")

    def truncate_and_write() -> None:
        path.write_bytes(b"two\n")  # same inode, shorter

    script = Script(truncate_and_write)
    lines = follow_lines(path, timeout=3, poll_interval=0, sleep=script.sleep, clock=script.clock)
    assert [line.data for line in lines] == [b"one long line", b"two"]


def test_follow_without_timeout_stops_when_the_consumer_does(tmp_path: Path) -> None:
    write = writer(tmp_path)
    write(1)
    script = Script(*(lambda: write(1) for _ in range(50)))
    lines = follow_lines(tmp_path / "audit.log", poll_interval=0, sleep=script.sleep, clock=script.clock)
    taken = [next(lines) for _ in range(10)]
    lines.close()
    assert seqs(taken) == list(range(1, 11))
