"""``dra-bridge audit`` as an admin runs it, on a hand-built log spread over rotated files."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from webhook.admission.decision import Decision
from webhook.admission.review import AdmissionRequest, allowed
from webhook.audit.log import AuditLog, RotatingFileSink
from webhook.cli import main

BASE = datetime(2025, 11, 22, 10, 0, tzinfo=UTC)
LONG = "tenant team-a: devices/whole.nvidia.dra-bridge.io 8 requested, 6 used of 8 (gpu-quota@12); ask your admin"


def at(minutes: float) -> str:
    return (BASE + timedelta(minutes=minutes)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rec(seq: int, minute: float, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "time": at(minute),
        "webhook": "validate",
        "uid": f"uid-{seq}-{minute}",
        "operation": "CREATE",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "namespace": "team-a",
        "name": "trainer-*",
        "user": "alice",
        "groups": ["devs"],
        "tenant": "team-a",
        "dryRun": False,
        "decision": "allowed",
        "reason": "within-quota",
        "message": "",
        "conversions": [],
        "templatesCreated": [],
        "quota": [],
        "policyVersion": "rv-1",
        "extra": {},
        "latencyMs": 1.5,
        "replica": "r1",
        "process": "p1",
        "seq": seq,
        "schema": "dra-bridge.io/audit/v1",
    }
    record.update(fields)
    return record


def figure(dimension: str, requested: str) -> dict[str, str]:
    return {"dimension": dimension, "requested": requested, "used": "0", "limit": "64", "policy": "gpu-quota@12"}


def conversion(summary: str, devices: int, memory: str = "0") -> dict[str, Any]:
    return {
        "container": "c", "claim": "gpu-c", "template": "dra-bridge-0", "legacy": {}, "summary": summary,
        "devices": devices, "memory": memory,
    }  # fmt: skip


CLAIM = {"group": "resource.k8s.io", "version": "v1", "kind": "ResourceClaim"}
TEAM_B = {"tenant": "team-b", "namespace": "ml", "user": "bob", "webhook": "mutate", "name": "infer-0"}
FILES: dict[str, list[dict[str, Any] | str]] = {
    "audit.log.2": [
        rec(
            1,
            0,
            webhook="mutate",
            decision="patched",
            reason="converted",
            conversions=[conversion("2 whole devices (nvidia)", 2)],
        ),
        rec(
            2,
            1,
            kind=CLAIM,
            quota=[
                figure("devices/whole.*.dra-bridge.io", "2"),
                figure("devices/*", "2"),
                figure("memory", "160Gi"),
                figure("perClaim.memory", "160Gi"),
            ],
        ),
        "this is not json",
    ],
    "audit.log.1": [
        rec(3, 2, kind=CLAIM, dryRun=True, quota=[figure("devices/*", "4")]),
        rec(
            4, 3, kind=CLAIM, decision="denied", reason="quota-exceeded", message=LONG, quota=[figure("devices/*", "8")]
        ),
        rec(
            5,
            4,
            kind=CLAIM,
            quota=[
                figure("perClaim.devices", "1"),
                figure("devices/*", "1"),
                figure("devices/partition.nvidia.dra-bridge.io", "1"),
                figure("memory", "4Gi"),
                figure("memory", "4Gi"),
            ],
        ),
        rec(6, 5, quota=[figure("devices/*", "3"), figure("memory", "164Gi")]),  # the Pod's preview: no charge
        rec(
            10,
            6,
            **TEAM_B,
            decision="patched",
            reason="converted",
            conversions=[
                conversion("1 whole device (nvidia)", 1),
                conversion(
                    "2 shared devices (nvidia, 8Gi, 30% compute); 1 partition 1g.5gb (nvidia)", 3, str(16 * 2**30)
                ),
            ],
        ),
    ],
    "audit.log": [
        rec(11, 7, **TEAM_B, decision="denied", reason="invalid-request", message="container 'c': bad\ncount"),
        rec(
            12,
            8,
            **TEAM_B,
            decision="patched",
            reason="converted",
            dryRun=True,
            conversions=[conversion("4 whole devices (nvidia)", 4)],
        ),
        rec(
            13,
            9,
            **TEAM_B,
            decision="patched",
            reason="converted",
            conversions=[conversion("1 shared device (nvidia, 50% memory)", 1)],
        ),
        "[1, 2]",
        rec(
            14,
            10,
            tenant=None,
            namespace="kube-system",
            user="system:serviceaccount:x",
            decision="error",
            reason="internal-error",
            message="RuntimeError: boom",
        ),
        rec(15, 11, tenant=None, webhook="mutate", reason="no-legacy-request"),
        rec(1, 12, tenant="team-c", replica="r2", process="q1"),
        rec(2, 13, tenant="team-c", replica="r2", process="q1"),
        rec(1, 14, tenant="team-c", replica="r2", process="q2", decision="denied", reason="template-tampered"),
    ],
}


@pytest.fixture
def log(tmp_path: Path) -> Path:
    for name, lines in FILES.items():
        text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
        (tmp_path / name).write_text(text)
    return tmp_path / "audit.log"


def audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", *args])
    out, err = capsys.readouterr()
    return code, out, err


def keys(out: str) -> list[tuple[str, int]]:
    return [(r["replica"], r["seq"]) for r in map(json.loads, out.splitlines())]


def r1(*seqs: int) -> list[tuple[str, int]]:
    return [("r1", s) for s in seqs]


# -- reading and filtering -----------------------------------------------------------------------
def test_json_output_is_every_record_oldest_file_first_as_written(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = audit(capsys, "--file", str(log), "-o", "json")
    assert code == 0
    written = [json.dumps(line) for lines in FILES.values() for line in lines if not isinstance(line, str)]
    assert out.splitlines() == written


def test_malformed_lines_are_reported_with_file_and_line_and_skipped(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = audit(capsys, "--file", str(log), "-o", "json")
    assert code == 0 and len(out.splitlines()) == 15
    assert f"{log}.2:3: not JSON" in err
    assert f"{log}:4: not a JSON object" in err
    assert "2 malformed line(s) skipped" in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tenant", "team-b"], r1(10, 11, 12, 13)),
        (["--tenant", "-"], r1(14, 15)),
        (["--tenant", "team-c", "--tenant", "-"], [*r1(14, 15), ("r2", 1), ("r2", 2), ("r2", 1)]),
        (["--namespace", "ml"], r1(10, 11, 12, 13)),
        (["--namespace", "kube-system"], r1(14)),
        (["--user", "bob"], r1(10, 11, 12, 13)),
        (["--user", "nobody"], []),
        (["--decision", "denied"], [*r1(4, 11), ("r2", 1)]),
        (["--decision", "denied", "--decision", "error"], [*r1(4, 11, 14), ("r2", 1)]),
        (["--decision", "patched"], r1(1, 10, 12, 13)),
        (["--reason", "quota-exceeded"], r1(4)),
        (["--reason", "converted", "--tenant", "team-b"], r1(10, 12, 13)),
        (["--webhook", "mutate"], r1(1, 10, 11, 12, 13, 15)),
        (["--since", at(12)], [("r2", 1), ("r2", 2), ("r2", 1)]),
        (["--until", at(1)], r1(1, 2)),
        (["--since", at(2), "--until", at(3)], r1(3, 4)),
        (["--since", "2025-11-22T12:02:30+02:00", "--until", "2025-11-22T10:04:00"], r1(4, 5)),
        (["--tenant", "team-a", "--decision", "denied"], r1(4)),
    ],
)
def test_filters(log: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: list[Any]) -> None:
    code, out, _ = audit(capsys, "--file", str(log), "-o", "json", *args)
    assert code == 0
    assert keys(out) == expected


def test_relative_times_count_back_from_now(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(UTC)
    lines = [
        rec(seq, 0, time=(now - ago).isoformat().replace("+00:00", "Z"))
        for seq, ago in enumerate(
            (timedelta(days=3), timedelta(hours=3), timedelta(minutes=90), timedelta(minutes=5)), 1
        )
    ]
    (tmp_path / "audit.log").write_text("".join(json.dumps(line) + "\n" for line in lines))
    file = str(tmp_path / "audit.log")
    assert keys(audit(capsys, "--file", file, "-o", "json", "--since", "1h")[1]) == r1(4)
    assert keys(audit(capsys, "--file", file, "-o", "json", "--since", "2h", "--until", "30m")[1]) == r1(3)
    assert keys(audit(capsys, "--file", file, "-o", "json", "--since", "2d")[1]) == r1(2, 3, 4)
    assert keys(audit(capsys, "--file", file, "-o", "json", "--until", "1d12h")[1]) == r1(1)


def test_the_default_file_comes_from_the_environment(
    log: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRA_BRIDGE_AUDIT_FILE", str(log))
    code, out, _ = audit(capsys, "-o", "json", "--reason", "template-tampered")
    assert code == 0 and keys(out) == [("r2", 1)]


# -- errors --------------------------------------------------------------------------------------
def test_a_missing_log_is_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = audit(capsys, "--file", str(tmp_path / "nope" / "audit.log"))
    assert code == 1 and out == ""
    assert "cannot read the audit log" in err and "no such audit log" in err


def test_a_log_that_is_a_directory_is_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = audit(capsys, "--file", str(tmp_path))
    assert code == 1 and "Is a directory" in err


@pytest.mark.parametrize(
    "args",
    [
        ["--since", "yesterday"],
        ["--until", "1w"],
        ["--decision", "maybe"],
        ["--webhook", "both"],
        ["--summary", "--follow"],
        ["-o", "yaml"],
    ],
)
def test_bad_arguments_are_usage_errors(log: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["audit", "--file", str(log), *args])
    assert caught.value.code == 2
    assert "usage:" in capsys.readouterr().err


# -- the table -----------------------------------------------------------------------------------
def test_the_table_is_aligned_readable_and_cuts_long_messages(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = audit(capsys, "--file", str(log))
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["TIME", "DECISION", "REASON", "TENANT", "OBJECT", "USER", "MESSAGE"]
    assert len(rows) == 15
    starts = [header.index(column) for column in ("DECISION", "REASON", "TENANT", "OBJECT", "USER", "MESSAGE")]
    for row in rows:
        for start in starts:
            assert row[start - 2 : start] == "  " and row[start] != " ", f"column not aligned at {start}: {row!r}"
    denial = next(row for row in rows if at(3) in row)
    assert denial.split()[:6] == [at(3), "denied", "quota-exceeded", "team-a", "team-a/trainer-*", "alice"]
    message = denial[starts[-1] :]
    assert message.endswith("...") and len(message) == 60 and message.startswith("tenant team-a: devices/")
    assert "allowed (dry-run)" in next(row for row in rows if at(2) in row)
    assert "container 'c': bad count" in next(row for row in rows if at(7) in row)  # one line per record
    assert next(row for row in rows if at(10) in row).split()[3:5] == ["-", "kube-system/trainer-*"]


# -- the summary ---------------------------------------------------------------------------------
def test_summary_numbers_per_tenant(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = audit(capsys, "--file", str(log), "--summary", "-o", "json")
    assert code == 0 and "2 malformed line(s) skipped" in err
    document = json.loads(out)
    assert document["records"] == 15
    assert document["tenants"] == {
        "team-a": {
            "outcomes": {"allowed": 4, "patched": 1, "denied": 1, "error": 0},
            "dryRun": 1,
            "denials": {"quota-exceeded": 1},
            "gpus": "3",
            "memory": "164Gi",
            "source": "quota",
            "chargedClaims": 2,
            "observed": {"pods": 0, "devices": 0, "quotaWouldDeny": 0},
        },
        "team-b": {
            "outcomes": {"allowed": 0, "patched": 3, "denied": 1, "error": 0},
            "dryRun": 1,
            "denials": {"invalid-request": 1},
            "gpus": "5",
            "memory": "16Gi",
            "source": "conversions",
            "chargedClaims": 0,
            "observed": {"pods": 0, "devices": 0, "quotaWouldDeny": 0},
        },
        "-": {
            "outcomes": {"allowed": 1, "patched": 0, "denied": 0, "error": 1},
            "dryRun": 0,
            "denials": {},
            "gpus": "0",
            "memory": "0",
            "source": "conversions",
            "chargedClaims": 0,
            "observed": {"pods": 0, "devices": 0, "quotaWouldDeny": 0},
        },
        "team-c": {
            "outcomes": {"allowed": 2, "patched": 0, "denied": 1, "error": 0},
            "dryRun": 0,
            "denials": {"template-tampered": 1},
            "gpus": "0",
            "memory": "0",
            "source": "conversions",
            "chargedClaims": 0,
            "observed": {"pods": 0, "devices": 0, "quotaWouldDeny": 0},
        },
    }
    assert document["missingRecords"] == 3
    assert document["sequenceProblems"] == ["3 records missing between seq 6 and 10 on replica r1 (process p1)"]
    assert document["restarts"] == {"r2": 1}


def test_summary_as_a_table_reports_gaps_and_restarts(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = audit(capsys, "--file", str(log), "--summary")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "15 record(s)"
    assert lines[1].split() == [
        "TENANT",
        "ALLOWED",
        "PATCHED",
        "DENIED",
        "ERROR",
        "DRY-RUN",
        "GPUS",
        "MEMORY",
        "SOURCE",
        "DENIALS",
    ]
    rows = {line.split()[0]: line.split() for line in lines[2:6]}
    assert rows["team-a"] == ["team-a", "4", "1", "1", "0", "1", "3", "164Gi", "quota", "quota-exceeded=1"]
    assert rows["team-b"] == ["team-b", "0", "3", "1", "0", "1", "5", "16Gi", "conversions", "invalid-request=1"]
    assert "sequence: 3 records missing between seq 6 and 10 on replica r1 (process p1)" in lines
    assert "restarts: replica r2 started 1 more time(s)" in lines


def test_summary_respects_filters_but_checks_sequences_over_the_whole_window(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = audit(capsys, "--file", str(log), "--summary", "-o", "json", "--tenant", "team-c")
    document = json.loads(out)
    assert code == 0 and list(document["tenants"]) == ["team-c"] and document["records"] == 3
    assert document["missingRecords"] == 3
    _, out, _ = audit(capsys, "--file", str(log), "--summary", "-o", "json", "--since", at(6))
    assert json.loads(out)["missingRecords"] == 0  # the gap lies before the window


def test_a_clean_log_says_no_gaps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "audit.log").write_text("".join(json.dumps(rec(s, s)) + "\n" for s in (1, 2, 3)))
    _, out, _ = audit(capsys, "--file", str(tmp_path / "audit.log"), "--summary")
    assert "sequence: no gaps" in out.splitlines()


# -- following -----------------------------------------------------------------------------------
def writer(path: Path) -> AuditLog:
    return AuditLog(RotatingFileSink(path, max_bytes=1500, max_files=1000), replica="r", process="p")


def record_one(log: AuditLog, reason: str = "no-legacy-request") -> None:
    req = AdmissionRequest.model_validate({"uid": "u", "kind": {"kind": "Pod"}, "operation": "CREATE"})
    log.record(Decision(webhook="mutate", response=allowed("u"), outcome="allowed", reason=reason), req, 0.0)


def test_follow_picks_up_records_written_after_it_started_across_rotations(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = writer(path)
    record_one(log)
    command = [
        sys.executable,
        "-m",
        "webhook",
        "audit",
        "--file",
        str(path),
        "--follow",
        "-o",
        "json",
        "--follow-timeout",
        "3",
        "--poll-interval",
        "0.05",
        "--reason",
        "no-legacy-request",
    ]
    follower = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()  # the history is printed: the follower holds the current file now
        assert json.loads(first)["seq"] == 1
        for n in range(20):
            record_one(log, "no-legacy-request" if n != 7 else "opt-out")
        assert len(list(tmp_path.glob("audit.log.*"))) >= 5
        out, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
        follower.wait()
    assert follower.returncode == 0, err
    assert [json.loads(line)["seq"] for line in [first, *out.splitlines()]] == [s for s in range(1, 22) if s != 9]


def test_follow_as_a_table_prints_a_header_and_rows(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = audit(capsys, "--file", str(log), "--follow", "--follow-timeout", "0.2", "--poll-interval", "0.05")
    header, *rows = out.splitlines()
    assert code == 0 and header.split()[:3] == ["TIME", "DECISION", "REASON"] and len(rows) == 15
    assert rows[0].startswith(at(0))
