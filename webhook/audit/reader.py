"""Reading the decision log back: files in order, filters, following, sequence checks, summaries.

The writer is ``webhook.audit.log``; this module only reads, and never trusts a line: a line that is
not a JSON object with a ``time`` and a ``decision`` is reported (file and line number) and skipped.

Files come oldest first: ``audit.log.<highest n>`` ... ``audit.log.1``, then ``audit.log`` (the
naming rule is ``webhook.audit.files``). They are
opened newest first and de-duplicated by inode, so a rotation in the middle of a read neither
repeats nor reorders records (it can only leave out records written after the read began).

``follow_lines`` is ``tail -f`` across rotations: when ``audit.log`` names a new file, the old one
(which gets no more writes once its successor exists) is read to its end, then any rotated files
written in between, then the new one.

Summary figures (``summarise``), per tenant (``-`` for records without one, which includes every
mutate record: the mutating webhook does not resolve tenants):

- ``outcomes``: records by decision (allowed, patched, denied, error); ``dry_run`` counts how many
  of them were dry runs; ``denials``: denied records by reason. Every selected record counts here.
- ``gpus`` and ``memory`` count only what was admitted: decision ``allowed`` or ``patched``, not a
  dry run (a dry run stores nothing and reserves nothing). ``gpus`` counts devices: a whole GPU, a
  partition and a share each count one. One object passes several admissions (a Pod through
  mutate and validate, then each of its claims through validate), so the two sources are never
  added together; per tenant the source is:

  * ``quota`` when the tenant has a *charged claim*: a validate record of kind ``ResourceClaim``
    whose quota figures include ``devices/<pattern>``, ``perClaim.devices`` or ``memory``. That is
    where the quota engine reserves; Pod and template records only preview the same claims and
    are not counted. Per charged claim, devices are ``perClaim.devices`` when present (the claim's
    total), else the largest ``devices/<pattern>`` (patterns may overlap, ``*`` covers them all;
    without one covering every class this is a lower bound); memory is the ``memory`` figure, in
    which the quota engine counts whole GPUs at their class's memory.
  * ``conversions`` otherwise: the conversions of admitted mutate records, added up from the
    numbers each conversion carries (the summary phrase is for people and is never parsed):
    ``devices``, every device its container asked for, and ``memory``, the bytes asked for in
    absolute units (``N`` shared devices of 8Gi add N x 8Gi). Whole GPUs, partitions and
    percentages of memory add no memory: their size is known only on allocation.

Sequence checks run over every record in the time window, whatever the other filters: for each
(replica, process), consecutive records must have consecutive ``seq``; a jump is reported as
``n records missing between seq a and b``, a repeat or step back as out of order. Records missing
before the first one read are not reported (rotation deletes old files by design); a new
``process`` on a replica is a restart.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

from webhook.audit.files import rotated_indexes, rotated_name
from webhook.translate.quantity import QuantityError, parse_quantity

OUTCOMES = ("allowed", "patched", "denied", "error")
ADMITTED = frozenset({"allowed", "patched"})
_CHUNK = 64 * 1024
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


@dataclass(frozen=True)
class RawLine:
    source: str  # the file's name when it was opened
    lineno: int
    data: bytes  # without the newline


@dataclass(frozen=True)
class Entry:
    """One well-formed record and where it was read."""

    record: dict[str, Any]
    time: datetime
    source: str
    lineno: int
    text: str  # the line as written, for ``-o json``

    def get(self, key: str, default: Any = None) -> Any:
        return self.record.get(key, default)


class Malformed(ValueError):
    """A line that is not a decision record; ``str()`` says where and why."""

    def __init__(self, line: RawLine, problem: str) -> None:
        super().__init__(f"{line.source}:{line.lineno}: {problem}")
        self.line = line


# -- lines and records ---------------------------------------------------------------------------
def log_files(path: Path) -> list[Path]:
    """The existing files of the log, oldest first."""
    try:
        rotated = rotated_indexes(path)
    except FileNotFoundError:
        rotated = []
    files = [rotated_name(path, n) for n in reversed(rotated)]
    return [*files, path] if path.exists() else files


def read_lines(path: Path) -> Iterator[RawLine]:
    """Every line of the log, oldest first. Raises ``OSError`` when no file of the log can be read."""
    opened = _open_snapshot(path)
    try:
        for handle, source in opened:
            yield from _drain(handle, source, _Position(), final=True)
    finally:
        for handle, _ in opened:
            handle.close()


def parse_line(line: RawLine) -> Entry:
    """The record on ``line``; raises ``Malformed``."""
    try:
        text = line.data.decode("utf-8")
        record = json.loads(text)
    except (UnicodeDecodeError, ValueError) as err:
        raise Malformed(line, f"not JSON: {err}") from None
    if not isinstance(record, dict):
        raise Malformed(line, "not a JSON object")
    if not isinstance(record.get("decision"), str):
        raise Malformed(line, "no decision")
    stamp = record.get("time")
    try:
        moment = datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise Malformed(line, f"no valid time: {stamp!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return Entry(record=record, time=moment, source=line.source, lineno=line.lineno, text=text.strip())


def parse_when(text: str, *, now: datetime) -> datetime:
    """``1h``, ``30m``, ``2d``, ``45s``, ``1h30m`` (that long before ``now``) or an RFC3339 time."""
    match = _DURATION.match(text.strip())
    if match and any(match.groups()):
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        return now - timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a duration (1h, 30m, 2d) or an RFC3339 time: {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# -- filters -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filter:
    """Empty sets match everything; several values of one field match any of them."""

    tenants: frozenset[str] = frozenset()  # "-" matches records without a tenant
    namespaces: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    decisions: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()
    webhooks: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None

    def in_window(self, entry: Entry) -> bool:
        return (self.since is None or entry.time >= self.since) and (self.until is None or entry.time <= self.until)

    def matches(self, entry: Entry) -> bool:
        checks = (
            (self.tenants, entry.get("tenant") or "-"),
            (self.namespaces, entry.get("namespace")),
            (self.users, entry.get("user")),
            (self.decisions, entry.get("decision")),
            (self.reasons, entry.get("reason")),
            (self.webhooks, entry.get("webhook")),
        )
        return self.in_window(entry) and all(not wanted or value in wanted for wanted, value in checks)


# -- sequence checks -----------------------------------------------------------------------------
@dataclass
class SequenceCheck:
    """Gaps, repeats and restarts, from records fed in file order."""

    last: dict[tuple[str, str], int] = field(default_factory=dict)
    processes: dict[str, list[str]] = field(default_factory=dict)  # replica -> processes, first seen first
    problems: list[str] = field(default_factory=list)
    missing: int = 0

    def feed(self, entry: Entry) -> None:
        replica, process, seq = entry.get("replica"), entry.get("process"), entry.get("seq")
        if not isinstance(replica, str) or not isinstance(process, str) or type(seq) is not int:
            return
        key = (replica, process)
        previous = self.last.get(key)
        if previous is None:
            self.processes.setdefault(replica, []).append(process)
        elif seq > previous + 1:
            gap = seq - previous - 1
            self.missing += gap
            self.problems.append(
                f"{gap} record{'s' if gap != 1 else ''} missing between seq {previous} and {seq} "
                f"on replica {replica} (process {process})"
            )
        elif seq <= previous:
            self.problems.append(
                f"seq {seq} after {previous} on replica {replica} (process {process}): "
                f"repeated or out of order at {entry.source}:{entry.lineno}"
            )
        self.last[key] = max(seq, previous or 0)

    @property
    def restarts(self) -> dict[str, int]:
        return {replica: len(processes) - 1 for replica, processes in self.processes.items() if len(processes) > 1}


# -- summary -------------------------------------------------------------------------------------
@dataclass
class TenantSummary:
    tenant: str
    outcomes: Counter[str] = field(default_factory=Counter)
    denials: Counter[str] = field(default_factory=Counter)
    dry_run: int = 0
    charged_claims: int = 0
    charged_devices: Fraction = Fraction(0)
    charged_memory: Fraction = Fraction(0)
    converted_devices: int = 0
    converted_memory: Fraction = Fraction(0)
    # Observe mode (rollout: observe): Pods admitted unchanged that would have been converted, what
    # they asked for, and how many of them quota would have refused.
    observed_pods: int = 0
    observed_devices: int = 0
    observed_quota_denials: int = 0

    @property
    def source(self) -> str:
        return "quota" if self.charged_claims else "conversions"

    @property
    def gpus(self) -> Fraction:
        return self.charged_devices if self.charged_claims else Fraction(self.converted_devices)

    @property
    def memory(self) -> Fraction:
        """Bytes."""
        return self.charged_memory if self.charged_claims else self.converted_memory

    def add(self, entry: Entry) -> None:
        decision = str(entry.get("decision"))
        self.outcomes[decision] += 1
        dry_run = entry.get("dryRun") is True
        self.dry_run += dry_run
        if decision == "denied":
            self.denials[str(entry.get("reason") or "-")] += 1
        if decision not in ADMITTED or dry_run:
            return
        if entry.get("reason") == "observed":
            self._add_observed(entry)
        elif entry.get("webhook") == "mutate":
            self._add_conversions(entry.get("conversions"))
        elif (entry.get("kind") or {}).get("kind") == "ResourceClaim":
            self._add_charge(entry.get("quota"))

    def _add_charge(self, figures: Any) -> None:
        amounts: dict[str, list[Fraction]] = {}
        for figure in figures if isinstance(figures, list) else []:
            dimension = str(figure.get("dimension", "")) if isinstance(figure, dict) else ""
            kind = "devices" if dimension.startswith("devices/") else dimension
            if kind in ("devices", "perClaim.devices", "memory"):
                amount = _quantity(figure.get("requested"))
                if amount is not None:
                    amounts.setdefault(kind, []).append(amount)
        if not amounts:
            return
        self.charged_claims += 1
        devices = amounts.get("perClaim.devices") or amounts.get("devices") or [Fraction(0)]
        self.charged_devices += max(devices)
        self.charged_memory += max(amounts.get("memory") or [Fraction(0)])  # several policies: the same request

    def _add_observed(self, entry: Entry) -> None:
        self.observed_pods += 1
        before = self.converted_devices, self.converted_memory
        self._add_conversions(entry.get("conversions"))
        self.observed_devices += self.converted_devices - before[0]
        self.converted_devices, self.converted_memory = before
        figures = entry.get("quota")
        if any(isinstance(f, dict) and f.get("exceeded") is True for f in figures if isinstance(figures, list)):
            self.observed_quota_denials += 1

    def _add_conversions(self, conversions: Any) -> None:
        """The structured counts each conversion carries (``devices``, ``memory`` in bytes)."""
        for conversion in conversions if isinstance(conversions, list) else []:
            if not isinstance(conversion, dict):
                continue
            devices = conversion.get("devices")
            if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
                self.converted_devices += devices
            self.converted_memory += _quantity(conversion.get("memory")) or Fraction(0)


def _quantity(value: Any) -> Fraction | None:
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None
    try:
        return parse_quantity(value)
    except QuantityError:
        return None


@dataclass
class Summary:
    tenants: dict[str, TenantSummary] = field(default_factory=dict)
    sequence: SequenceCheck = field(default_factory=SequenceCheck)
    records: int = 0

    def add(self, entry: Entry) -> None:
        tenant = str(entry.get("tenant") or "-")
        self.tenants.setdefault(tenant, TenantSummary(tenant)).add(entry)
        self.records += 1


def summarise(entries: Iterable[Entry], selection: Filter) -> Summary:
    """Per-tenant figures of the entries ``selection`` matches; sequence checks over its time window."""
    summary = Summary()
    for entry in entries:
        if not selection.in_window(entry):
            continue
        summary.sequence.feed(entry)
        if selection.matches(entry):
            summary.add(entry)
    return summary


# -- following -----------------------------------------------------------------------------------
@dataclass
class _Position:
    lineno: int = 0
    pending: bytes = b""


def follow_lines(
    path: Path,
    *,
    timeout: float | None = None,
    poll_interval: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Generator[RawLine, None, None]:
    """Every line of the log, then lines as they are appended, across rotations, until ``timeout``."""
    deadline = None if timeout is None else clock() + timeout
    opened = _open_snapshot(path)
    for handle, source in opened[:-1]:
        yield from _drain(handle, source, _Position(), final=True)
        handle.close()
    handle, source = opened[-1]
    position = _Position()
    try:
        while True:
            yield from _drain(handle, source, position, final=False)
            successor = _identity(path)
            newer = [] if successor in (None, _identity_of(handle)) else _newer_files(path, _identity_of(handle))
            if newer:  # rotated: the old file gets no more writes once its successor exists
                yield from _drain(handle, source, position, final=True)
                handle.close()
                for older_handle, older_source in newer[:-1]:
                    yield from _drain(older_handle, older_source, _Position(), final=True)
                    older_handle.close()
                handle, source = newer[-1]
                position = _Position()
                continue
            if os.fstat(handle.fileno()).st_size < handle.tell():  # truncated in place
                handle.seek(0)
            if deadline is not None and clock() >= deadline:
                return
            sleep(poll_interval)
    finally:
        handle.close()


def _open_snapshot(path: Path) -> list[tuple[BinaryIO, str]]:
    """The log's files opened newest first, de-duplicated by inode, returned oldest first."""
    opened: list[tuple[BinaryIO, str]] = []
    seen: set[tuple[int, int]] = set()
    try:
        for candidate in reversed(log_files(path)):
            try:
                handle = open(candidate, "rb")  # noqa: SIM115 -- closed by the caller
            except FileNotFoundError:
                continue  # rotated away between listing and opening: the next name holds it
            identity = _identity_of(handle)
            if identity in seen:
                handle.close()
                continue
            seen.add(identity)
            opened.append((handle, str(candidate)))
    except OSError:
        for opened_handle, _ in opened:
            opened_handle.close()
        raise
    if not opened:
        raise FileNotFoundError(f"{path}: no such audit log (nor rotated files)")
    return opened[::-1]


def _newer_files(path: Path, identity: tuple[int, int]) -> list[tuple[BinaryIO, str]]:
    """The files written after the one of ``identity``, oldest first (all of them if it was deleted)."""
    opened = _open_snapshot(path)
    identities = [_identity_of(handle) for handle, _ in opened]
    start = identities.index(identity) + 1 if identity in identities else 0
    for handle, _ in opened[:start]:
        handle.close()
    return opened[start:]


def _drain(handle: BinaryIO, source: str, position: _Position, *, final: bool) -> Iterator[RawLine]:
    """Complete lines from the handle's position to its end; with ``final`` also an unterminated last one."""
    while chunk := handle.read(_CHUNK):
        *lines, position.pending = (position.pending + chunk).split(b"\n")
        for data in lines:
            position.lineno += 1
            if data.strip():
                yield RawLine(source, position.lineno, data)
    if final and position.pending:
        position.lineno += 1
        data, position.pending = position.pending, b""
        if data.strip():
            yield RawLine(source, position.lineno, data)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _identity_of(handle: BinaryIO) -> tuple[int, int]:
    status = os.fstat(handle.fileno())
    return status.st_dev, status.st_ino
