"""The decision log: one JSON line per admission decision, written before the response leaves.

``AuditLog.audited(webhook, handler)`` wraps an admission handler (``AuditLog.record`` writes the
record of one decision directly): each decision becomes a plain dict, one ``json.dumps`` and one
write to a sink, before the response leaves. If the line cannot be written, ``AuditWriteError`` propagates
and the request fails with 500, so the cluster's failurePolicy decides; a decision is never answered
without its record. ``audit_annotations`` gives the short facts for the cluster's own audit log.

A record (schema ``dra-bridge.io/audit/v1``; keys always present, lists may be empty)::

    {"time": "2025-11-22T10:55:01.123Z",          RFC3339 UTC, milliseconds, taken when written
     "webhook": "mutate", "uid": "...", "operation": "CREATE",
     "kind": {"group": "", "version": "v1", "kind": "Pod"},
     "namespace": "team-a", "name": "trainer",     name, or generateName followed by "*"
     "user": "alice", "groups": ["devs", "system:authenticated"],
     "tenant": "team-a" | null, "dryRun": false,
     "decision": "allowed" | "patched" | "denied" | "error", "reason": "converted", "message": "...",
     "conversions": [{"container", "claim", "template", "legacy": {name: value}, "summary",
                      "devices": 2, "memory": "8589934592"}],   memory in bytes; percentages of a card add 0
     "templatesCreated": ["dra-bridge-93ce8af22336"],
     "quota": [{"dimension", "requested", "used", "limit", "policy"}],
     "policyVersion": "..." | null, "extra": {}, "latencyMs": 1.234,
     "replica": "dra-bridge-7c9d-x2", "process": "5f0c2a9e41d7", "seq": 42, "schema": "dra-bridge.io/audit/v1"}

A request the HTTP layer answers without a decision (a malformed body: 400; too large: 413;
overloaded: 503) is recorded too, as decision ``error`` with the reason, ``extra.httpStatus`` and
the uid when one could be read from the body (``rejection_fields``); so is an internal failure
(``error_fields``). Every answered review has exactly one record.

``seq`` grows by one per record within a process, ``process`` is random per process start: a gap in
``seq`` for one (replica, process) is a lost record (a failed write consumes its number, so a
request answered with 500 for want of its record shows as a gap); a new ``process`` is a restart.
Records of one process appear in the file in ``seq`` order (numbering and writing share a lock).

Sinks: ``RotatingFileSink`` (size-based rotation ``audit.log`` -> ``audit.log.1`` -> ... like
logrotate; one writer per file; the names follow ``webhook.audit.files``) and ``StreamSink`` (stdout
for log collectors). Reading the log back is ``webhook.audit.reader``.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

import pydantic_core

from webhook.admission.decision import Decision
from webhook.admission.review import AdmissionRequest, with_audit_annotations
from webhook.audit.files import rotated_indexes, rotated_name
from webhook.errors import AuditWriteError, BridgeError, failure_of
from webhook.inline import DecidedElsewhere, WouldBlock
from webhook.quota.figure import QuotaFigure
from webhook.translate.rewrite import Conversion

SCHEMA = "dra-bridge.io/audit/v1"
DEFAULT_MAX_BYTES = 100 * 1024 * 1024  # the usual advice for audit logs: 10 files of 100 MB
DEFAULT_MAX_FILES = 10
MAX_MESSAGE = 2048  # keeps a line bounded whatever an exception says
MAX_ANNOTATION = 256
Webhook = Literal["mutate", "validate"]
Handler = Callable[[AdmissionRequest], Decision]


class Sink(Protocol):
    """Where records go: ``write`` gets one whole line (ending in a newline) and returns once it is written."""

    def write(self, line: str) -> None: ...

    def close(self) -> None: ...


# -- records -------------------------------------------------------------------------------------
def decision_fields(decision: Decision, request: AdmissionRequest, elapsed: float) -> dict[str, Any]:
    """Everything a record says about one decision, except the writer's time, replica, process and seq."""
    return {
        **_request_fields(decision.webhook, request),
        "tenant": decision.tenant,
        "dryRun": request.dry_run,
        "decision": decision.outcome,
        "reason": decision.reason,
        "message": _cut(decision.message, MAX_MESSAGE),
        "conversions": [_conversion(c) for c in decision.conversions],
        "templatesCreated": list(decision.templates_created),
        "quota": [_figure(q) for q in decision.quota],
        "policyVersion": decision.policy_version,
        "extra": dict(decision.extra),
        "latencyMs": round(elapsed * 1000, 3),
    }


def error_fields(webhook: Webhook, request: AdmissionRequest, elapsed: float, error: BaseException) -> dict[str, Any]:
    """The record of an internal failure: no decision was made, the failurePolicy decides."""
    reason = _kebab(type(error).__name__) if isinstance(error, BridgeError) else "internal-error"
    return {
        **_request_fields(webhook, request),
        "tenant": None,
        "dryRun": request.dry_run,
        "decision": "error",
        "reason": reason,
        "message": _cut(f"{type(error).__name__}: {error}", MAX_MESSAGE),
        "conversions": [],
        "templatesCreated": [],
        "quota": [],
        "policyVersion": None,
        "extra": {"httpStatus": failure_of(error).status},
        "latencyMs": round(elapsed * 1000, 3),
    }


def rejection_fields(
    webhook: Webhook,
    *,
    uid: str | None,
    status: int,
    reason: str,
    message: str,
    elapsed: float,
    request: AdmissionRequest | None = None,
) -> dict[str, Any]:
    """The record of a request answered before any decision (400, 413, 503, ...): what could be read of it.

    ``uid`` is the review's uid when one could be read from the body, else ``""``; the request's other
    facts are filled in only when the envelope itself was read.
    """
    known = (
        _request_fields(webhook, request)
        if request is not None
        else {
            "webhook": webhook,
            "uid": uid or "",
            "operation": "",
            "kind": {"group": "", "version": "", "kind": ""},
            "namespace": "",
            "name": "",
            "user": "",
            "groups": [],
        }
    )
    return {
        **known,
        "tenant": None,
        "dryRun": request.dry_run if request is not None else False,
        "decision": "error",
        "reason": reason,
        "message": _cut(message, MAX_MESSAGE),
        "conversions": [],
        "templatesCreated": [],
        "quota": [],
        "policyVersion": None,
        "extra": {"httpStatus": status},
        "latencyMs": round(elapsed * 1000, 3),
    }


def _request_fields(webhook: Webhook, request: AdmissionRequest) -> dict[str, Any]:
    return {
        "webhook": webhook,
        "uid": request.uid,
        "operation": request.operation,
        "kind": {"group": request.kind.group, "version": request.kind.version, "kind": request.kind.kind},
        "namespace": request.namespace,
        "name": request.object_name,
        "user": request.user_info.username,
        "groups": list(request.user_info.groups),
    }


def _conversion(c: Conversion) -> dict[str, Any]:
    return {
        "container": c.container,
        "claim": c.claim,
        "template": c.template,
        "legacy": dict(c.legacy),
        "summary": c.summary,
        "devices": c.devices,
        "memory": str(math.ceil(c.memory)),
    }


def _figure(q: QuotaFigure) -> dict[str, str | bool]:
    return {
        "dimension": q.dimension,
        "requested": q.requested,
        "used": q.used,
        "limit": q.limit,
        "policy": q.policy,
        "exceeded": q.exceeded,
    }


def rfc3339(moment: datetime) -> str:
    """``2025-11-22T10:55:01.123Z``: UTC, milliseconds."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _kebab(name: str) -> str:
    """``ClusterError`` -> ``cluster-error``."""
    return "".join(f"-{ch.lower()}" if ch.isupper() else ch for ch in name).lstrip("-")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- annotations for the cluster's audit log -----------------------------------------------------
def audit_annotations(decision: Decision) -> dict[str, str]:
    """Short key facts for ``AdmissionResponse.auditAnnotations``.

    The apiserver stores them as ``<webhook name>/<key>`` in its own audit events, so keys are bare
    lowercase names (no slash) and values stay under ``MAX_ANNOTATION`` characters.
    """
    notes = {"decision": decision.outcome, "reason": decision.reason}
    if decision.tenant:
        notes["tenant"] = decision.tenant
    if decision.conversions:
        notes["templates"] = ", ".join(f"{c.container}={c.template}" for c in decision.conversions)
    if decision.quota:  # the figure that denied, else the first one checked
        q = next((f for f in decision.quota if f.exceeded), decision.quota[0])
        notes["quota"] = f"{q.dimension}: requested {q.requested}, used {q.used}, limit {q.limit} ({q.policy})"
    if decision.policy_version:
        notes["policy-version"] = decision.policy_version
    for key, value in notes.items():
        if len(value) > MAX_ANNOTATION:
            notes[key] = _cut(value, MAX_ANNOTATION)
    return notes


def annotated(decision: Decision) -> Decision:
    """``decision`` with ``audit_annotations`` merged into its response; keys the engine set itself win."""
    notes = audit_annotations(decision)
    if decision.response.audit_annotations:
        notes.update(decision.response.audit_annotations)
    return decision.answering(with_audit_annotations(decision.response, notes))


# -- the log -------------------------------------------------------------------------------------
def default_replica() -> str:
    """The Pod name (downward API ``POD_NAME``), else the host name, which Kubernetes sets to it."""
    return os.environ.get("POD_NAME") or socket.gethostname()


class AuditLog:
    """Numbers, stamps and writes decision records; thread-safe (decisions run on the event loop or the HTTP layer's threads)."""

    def __init__(
        self,
        sink: Sink,
        *,
        replica: str | None = None,
        process: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sink = sink
        self.replica = replica or default_replica()
        self.process = process or secrets.token_hex(6)
        self._clock = clock
        self._seq = 0
        self._lock = threading.Lock()

    @property
    def last_seq(self) -> int:
        """The number given to the latest record, written or not."""
        return self._seq

    def record(self, decision: Decision, request: AdmissionRequest, elapsed: float) -> None:
        """Write the record of ``decision``; raises ``AuditWriteError`` if it is not written."""
        self._write(lambda: decision_fields(decision, request, elapsed), webhook=decision.webhook, uid=request.uid)

    def record_error(self, webhook: Webhook, request: AdmissionRequest, elapsed: float, error: BaseException) -> None:
        """Write the record of an internal failure (decision ``error``)."""
        self._write(lambda: error_fields(webhook, request, elapsed, error), webhook=webhook, uid=request.uid)

    def record_rejection(
        self,
        webhook: Webhook,
        *,
        uid: str | None,
        status: int,
        reason: str,
        message: str,
        elapsed: float,
        request: AdmissionRequest | None = None,
    ) -> None:
        """Write the record of a request the HTTP layer answered without a decision (``rejection_fields``)."""
        self._write(
            lambda: rejection_fields(
                webhook, uid=uid, status=status, reason=reason, message=message, elapsed=elapsed, request=request
            ),
            webhook=webhook,
            uid=uid,
        )

    def audited(self, webhook: Webhook, handler: Handler, *, annotate: bool = True) -> Handler:
        """``handler`` with every decision recorded before it is returned, and every failure recorded.

        It runs where the handler runs: on the event loop for most decisions, on the HTTP layer's
        executor for those that call the cluster (webhook/inline.py); a decision moved from one to
        the other (``WouldBlock``) is recorded once, where it finishes. If the record cannot be written, ``AuditWriteError`` leaves the handler and the
        HTTP layer answers 500: the decision is not returned. The handler's own errors are recorded
        (decision ``error``) and re-raised. ``annotate`` merges ``audit_annotations`` into the response.
        """

        def decide(request: AdmissionRequest) -> Decision:
            started = time.perf_counter()
            try:
                decision = handler(request)
            except (WouldBlock, DecidedElsewhere):
                raise  # not a decision: it is made again where it may block, or by its owner, and recorded there
            except Exception as err:
                self.record_error(webhook, request, time.perf_counter() - started, err)
                raise
            if annotate:
                decision = annotated(decision)
            try:
                self.record(decision, request, time.perf_counter() - started)
            except AuditWriteError:
                if decision.release is not None:
                    decision.release()  # never answered: whatever it reserved goes back now
                raise
            return decision

        return decide

    def close(self) -> None:
        with self._lock:
            self.sink.close()

    def _write(self, build: Callable[[], dict[str, Any]], *, webhook: Webhook, uid: str | None) -> None:
        """Number, stamp and write one record.

        The number is taken first, so the only way a record goes missing is the sink failing after
        it (``AuditWriteError``), which leaves a gap in ``seq``. If the fields cannot be built, a
        record saying so is written instead; a string that is not valid Unicode (a lone surrogate)
        is written escaped.
        """
        with self._lock:  # numbering, time and writing together: the file is in seq order
            self._seq += 1
            try:
                fields = build()
            except Exception as err:
                fields = rejection_fields(
                    webhook,
                    uid=uid if isinstance(uid, str) else None,
                    status=500,
                    reason="audit-record-failed",
                    message=f"the record could not be made: {type(err).__name__}: {err}",
                    elapsed=0.0,
                )
            record = {
                "time": rfc3339(self._clock()),
                **fields,
                "replica": self.replica,
                "process": self.process,
                "seq": self._seq,
                "schema": SCHEMA,
            }
            try:  # pydantic's serialiser: a quarter of json.dumps's time for a record
                line = pydantic_core.to_json(record).decode()
            except pydantic_core.PydanticSerializationError:  # a lone surrogate: written escaped
                line = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
            self.sink.write(line + "\n")


def open_audit_log(
    target: str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    fsync: bool = False,
    replica: str | None = None,
) -> AuditLog:
    """``-`` writes to stdout; anything else is a file path with rotation. Fails now if it cannot be opened."""
    sink: Sink
    if str(target) == "-":
        sink = StreamSink(sys.stdout)
    else:
        sink = RotatingFileSink(Path(target), max_bytes=max_bytes, max_files=max_files, fsync=fsync)
    return AuditLog(sink, replica=replica)


# -- sinks ---------------------------------------------------------------------------------------
class StreamSink:
    """A text stream (stdout for log collectors): each line written whole and flushed under a lock."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError) as err:  # ValueError: the stream was closed
                raise AuditWriteError(f"cannot write the audit log to {_stream_name(self._stream)}: {err}") from err

    def close(self) -> None:
        with self._lock:
            try:
                self._stream.flush()
            except (OSError, ValueError) as err:
                raise AuditWriteError(f"cannot flush the audit log to {_stream_name(self._stream)}: {err}") from err


def _stream_name(stream: TextIO) -> str:
    return str(getattr(stream, "name", type(stream).__name__))


class RotatingFileSink:
    """An append-only file with size-based rotation and retention, like logrotate.

    Each line is one ``os.write`` on an ``O_APPEND`` descriptor, so it reaches the kernel before
    ``write`` returns (``fsync=True`` also forces it to the disk, at a cost of milliseconds). Before
    a line that would take the file over ``max_bytes`` the file rotates: ``audit.log.<n>`` becomes
    ``audit.log.<n+1>``, ``audit.log`` becomes ``audit.log.1``, files beyond ``max_files`` rotated
    ones are deleted (``max_files=0`` keeps only the current file), and a new ``audit.log`` starts.
    Rotation happens only between lines, under the lock, so no line is split, lost or duplicated.
    A line longer than ``max_bytes`` gets a file of its own.

    If the file is deleted from under the writer it is created again, rather than writing on into
    an unlinked inode nobody can read. If a write stops half-way (a full disk), the next line starts
    with a newline, so the fragment is one malformed line that readers report and skip.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_files: int = DEFAULT_MAX_FILES,
        fsync: bool = False,
        mode: int = 0o640,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        if max_files < 0:
            raise ValueError(f"max_files must not be negative, got {max_files}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.fsync = fsync
        self._mode = mode
        self._fd = -1
        self._partial = False  # the file may end in the middle of a line (a write failed half-way)
        self._lock = threading.Lock()
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
                self._open()
            except OSError as err:
                raise AuditWriteError(f"cannot open the audit log {self.path}: {err}") from err

    def write(self, line: str) -> None:
        data = line.encode()
        with self._lock:
            try:
                size = self._size()
                if size > 0 and size + len(data) > self.max_bytes:
                    self._rotate()
                self._append(data)
                if self.fsync:
                    os.fsync(self._fd)
            except OSError as err:
                raise AuditWriteError(f"cannot write the audit log {self.path}: {err}") from err

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self._mode)

    def _size(self) -> int:
        if self._fd < 0:
            self._open()
        status = os.fstat(self._fd)
        if status.st_nlink == 0:  # deleted from under us: records written now could never be read
            os.close(self._fd)
            self._fd = -1
            self._partial = False
            self._open()
            status = os.fstat(self._fd)
        return status.st_size

    def _append(self, data: bytes) -> None:
        was_partial = self._partial
        if was_partial:
            data = b"\n" + data
        view, written = memoryview(data), 0
        try:
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError:
            # the file ends on a line boundary only if nothing (or just the repairing newline) got out
            self._partial = written > 1 or (written == 1 and not was_partial) or (written == 0 and was_partial)
            raise
        self._partial = False

    def _rotate(self) -> None:
        base = self.path
        for index in reversed(rotated_indexes(base)):  # oldest first: every target is free
            if index >= self.max_files:
                os.unlink(rotated_name(base, index))
            else:
                os.rename(rotated_name(base, index), rotated_name(base, index + 1))
        if self.max_files > 0:
            os.rename(base, rotated_name(base, 1))
        else:
            os.unlink(base)
        old, self._fd = self._fd, -1
        os.close(old)  # nothing more goes to the old file; if the open below fails, the next write retries it
        self._partial = False
        self._open()
        if self.fsync:
            _fsync_dir(self.path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
