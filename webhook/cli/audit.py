"""``dra-bridge audit``: read, filter, follow and summarise the decision log.

Reads ``--file`` and its rotated files oldest first (``webhook.audit.reader``); prints a table or JSON
lines, or a per-tenant ``--summary`` (its figures are defined in ``webhook.audit.reader``). Malformed
lines go to stderr with file:line and are skipped; the exit code is 0 unless the log cannot be read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

from webhook.audit.reader import (
    OUTCOMES,
    Entry,
    Filter,
    Malformed,
    RawLine,
    SequenceCheck,
    Summary,
    follow_lines,
    parse_line,
    parse_when,
    read_lines,
    summarise,
)
from webhook.cli.common import fail
from webhook.translate.quantity import format_quantity

DEFAULT_FILE = "/var/log/dra-bridge/audit.log"  # Settings.audit_file: where a deployed server writes
DEV_FILE = ".dra-bridge/audit.log"  # where `serve --dev` writes, relative to where it runs
COLUMNS = ("TIME", "DECISION", "REASON", "TENANT", "OBJECT", "USER", "MESSAGE")
FOLLOW_WIDTHS = (24, 18, 24, 12, 36, 20)  # a stream cannot measure rows it has not seen
MAX_WIDTH = 48
MAX_MESSAGE = 60


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "audit",
        help="read, filter, follow or summarise the decision audit log",
        description="Reads the audit log and its rotated files oldest first. Filters of one kind may repeat "
        f"(any of them matches); filters of different kinds must all match. Reads by default: "
        f"$DRA_BRIDGE_AUDIT_FILE when set; else {DEFAULT_FILE} when it exists (a deployed server); else "
        f"{DEV_FILE} when it exists (what `serve --dev` writes in the folder it runs in).",
    )
    parser.add_argument(
        "--file",
        type=Path,
        default=None,
        help=f"the log (default: $DRA_BRIDGE_AUDIT_FILE, else {DEFAULT_FILE} if it exists, else {DEV_FILE})",
    )
    parser.add_argument("--tenant", action="append", help="tenant; '-' for records without one")
    parser.add_argument("--namespace", action="append")
    parser.add_argument("--user", action="append", help="user name")
    parser.add_argument("--decision", action="append", choices=OUTCOMES)
    parser.add_argument("--reason", action="append", help="reason code, e.g. converted, invalid-request")
    parser.add_argument("--webhook", action="append", choices=("mutate", "validate"))
    parser.add_argument("--since", type=_when, help="1h, 30m, 2d, 1h30m ago, or an RFC3339 time")
    parser.add_argument("--until", type=_when, help="same forms as --since")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--summary", action="store_true", help="per tenant: decisions, denials, GPUs; sequence gaps")
    mode.add_argument("--follow", "-f", action="store_true", help="keep printing new records, across rotations")
    parser.add_argument("--follow-timeout", type=float, default=None, help="stop following after SECONDS")
    parser.add_argument("--poll-interval", type=float, default=0.2, help=argparse.SUPPRESS)
    parser.set_defaults(run=run)


def _when(text: str) -> datetime:
    try:
        return parse_when(text, now=datetime.now(UTC))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def default_file() -> Path:
    """$DRA_BRIDGE_AUDIT_FILE; else the deployed server's log if present; else the dev server's if present."""
    configured = os.environ.get("DRA_BRIDGE_AUDIT_FILE")
    if configured:
        return Path(configured)
    deployed, dev = Path(DEFAULT_FILE), Path(DEV_FILE)
    if not _exists(deployed) and _exists(dev):
        return dev
    return deployed


def _exists(log: Path) -> bool:
    """The log or one of its rotated files (audit.log.1, ...) is there."""
    if not log.parent.is_dir():
        return False
    return log.exists() or any(log.parent.glob(log.name + ".[0-9]*"))


def run(args: argparse.Namespace) -> int:
    if args.file is None:
        args.file = default_file()
        if not _exists(args.file) and not args.follow:
            return fail(
                f"no audit log at {DEFAULT_FILE} (a deployed server's) nor at {DEV_FILE} (what `serve --dev` "
                "writes in the folder it runs in); give --file or set DRA_BRIDGE_AUDIT_FILE"
            )
    selection = Filter(
        tenants=frozenset(args.tenant or ()),
        namespaces=frozenset(args.namespace or ()),
        users=frozenset(args.user or ()),
        decisions=frozenset(args.decision or ()),
        reasons=frozenset(args.reason or ()),
        webhooks=frozenset(args.webhook or ()),
        since=args.since,
        until=args.until,
    )
    skipped = _Skipped()
    lines = (
        follow_lines(args.file, timeout=args.follow_timeout, poll_interval=args.poll_interval)
        if args.follow
        else read_lines(args.file)
    )
    try:
        entries = skipped.parse(lines)
        if args.summary:
            summary = summarise(entries, selection)
            _print_summary(summary, as_json=args.output == "json")
        else:
            _print_records(
                (e for e in entries if selection.matches(e)), as_json=args.output == "json", stream=args.follow
            )
    except OSError as err:
        return fail(f"cannot read the audit log: {err}")
    if skipped.count:
        print(f"dra-bridge audit: {skipped.count} malformed line(s) skipped", file=sys.stderr)
    return 0


class _Skipped:
    """Reports malformed lines on stderr as they come, and counts them."""

    count = 0

    def parse(self, lines: Iterable[RawLine]) -> Iterator[Entry]:
        for line in lines:
            try:
                yield parse_line(line)
            except Malformed as err:
                self.count += 1
                print(f"dra-bridge audit: skipped malformed line {err}", file=sys.stderr, flush=True)


# -- records -------------------------------------------------------------------------------------
def _print_records(entries: Iterable[Entry], *, as_json: bool, stream: bool) -> None:
    out = sys.stdout
    if as_json:
        for entry in entries:
            out.write(entry.text + "\n")
            if stream:
                out.flush()
        return
    if stream:  # rows as they come, at fixed widths
        out.write(_row(COLUMNS, FOLLOW_WIDTHS) + "\n")
        out.flush()
        for entry in entries:
            out.write(_row(table_row(entry), FOLLOW_WIDTHS) + "\n")
            out.flush()
        return
    rows = [table_row(entry) for entry in entries]
    out.write(render_table(rows))


def table_row(entry: Entry) -> tuple[str, ...]:
    decision = str(entry.get("decision"))
    if entry.get("dryRun") is True:
        decision += " (dry-run)"
    namespace, name = entry.get("namespace") or "", entry.get("name") or ""
    return (
        str(entry.get("time")),
        decision,
        str(entry.get("reason") or "-"),
        str(entry.get("tenant") or "-"),
        f"{namespace}/{name}" if namespace else (name or "-"),
        str(entry.get("user") or "-"),
        _cut(" ".join(str(entry.get("message") or "").split()), MAX_MESSAGE) or "-",
    )


def render_table(rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns; every column but the last (the message) is as wide as its widest cell, up to a cap."""
    widths = [min(MAX_WIDTH, max([len(COLUMNS[i]), *(len(row[i]) for row in rows)])) for i in range(len(COLUMNS) - 1)]
    return "".join(_row(row, widths) + "\n" for row in (COLUMNS, *rows))


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = [_cut(cell, width).ljust(width) for cell, width in zip(cells, widths, strict=False)]
    return "  ".join([*padded, *cells[len(widths) :]]).rstrip()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- summary -------------------------------------------------------------------------------------
SUMMARY_COLUMNS = ("TENANT", *(o.upper() for o in OUTCOMES), "DRY-RUN", "GPUS", "MEMORY", "SOURCE", "DENIALS")


def _print_summary(summary: Summary, *, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(summary_document(summary), sort_keys=True) + "\n")
        return
    rows = []
    for tenant in sorted(summary.tenants.values(), key=lambda t: t.tenant):
        denials = ", ".join(f"{reason}={n}" for reason, n in sorted(tenant.denials.items())) or "-"
        rows.append(
            (
                tenant.tenant,
                *(str(tenant.outcomes[o]) for o in OUTCOMES),
                str(tenant.dry_run),
                _number(tenant.gpus),
                format_quantity(tenant.memory) if tenant.memory else "0",
                tenant.source,
                denials,
            )
        )
    widths = [max([len(SUMMARY_COLUMNS[i]), *(len(r[i]) for r in rows)]) for i in range(len(SUMMARY_COLUMNS) - 1)]
    out = sys.stdout
    out.write(f"{summary.records} record(s)\n")
    out.write("".join(_row(row, widths) + "\n" for row in (SUMMARY_COLUMNS, *rows)))
    observed = [t for t in summary.tenants.values() if t.observed_pods]
    for tenant in sorted(observed, key=lambda t: t.tenant):
        out.write(
            f"observe: tenant {tenant.tenant}: {tenant.observed_pods} Pod(s) admitted unchanged would have been "
            f"converted ({tenant.observed_devices} device(s)); quota would have refused {tenant.observed_quota_denials}\n"
        )
    out.write(_sequence_report(summary.sequence))


def _sequence_report(check: SequenceCheck) -> str:
    lines = [f"sequence: {problem}" for problem in check.problems]
    lines += [f"restarts: replica {replica} started {n} more time(s)" for replica, n in sorted(check.restarts.items())]
    if not check.problems:
        lines.append("sequence: no gaps")
    return "".join(line + "\n" for line in lines)


def summary_document(summary: Summary) -> dict[str, Any]:
    return {
        "records": summary.records,
        "tenants": {
            t.tenant: {
                "outcomes": {o: t.outcomes[o] for o in OUTCOMES},
                "dryRun": t.dry_run,
                "denials": dict(t.denials),
                "gpus": _number(t.gpus),
                "memory": format_quantity(t.memory) if t.memory else "0",
                "source": t.source,
                "chargedClaims": t.charged_claims,
                "observed": {
                    "pods": t.observed_pods,
                    "devices": t.observed_devices,
                    "quotaWouldDeny": t.observed_quota_denials,
                },
            }
            for t in summary.tenants.values()
        },
        "missingRecords": summary.sequence.missing,
        "sequenceProblems": summary.sequence.problems,
        "restarts": summary.sequence.restarts,
    }


def _number(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{float(value):g}"
