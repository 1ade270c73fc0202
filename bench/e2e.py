"""End to end: Pod creation latency through a real kube-apiserver, with dra-bridge's webhooks
registered against without them.

    .venv/bin/python bench/e2e.py [--pods 400] [--rate 40] [--reps 2] [--out bench/results/e2e.json]

Starts the control plane of the end-to-end tests (tests/e2e/controlplane.py: etcd, kube-apiserver,
kube-controller-manager with the resourceclaim controller, kube-scheduler; no nodes, so Pods are
stored and never run) and applies the project's DeviceClasses. Then, ``--reps`` times:

- phase ``without``: no webhook configuration, no dra-bridge process;
- phase ``with``: ``dra-bridge serve`` started as the e2e tests start it (real TLS) and registered
  through the shipped deploy/base/webhooks.yaml with only ``clientConfig`` changed; a dry-run probe
  Pod must come back converted before anything is measured.

Each phase creates Pods with httpx straight against the apiserver REST API (the admin client
certificate), each workload in a fresh namespace: ``gpu`` (``nvidia.com/gpu: 1``, requests =
limits) at a fixed rate (open model: every POST is sent on its schedule, however long earlier ones
take), ``gpu-seq`` (the same Pod, one request at a time), ``no-gpu`` (a Pod without GPU requests at
the same rate: the webhooks' matchConditions skip it). Latency is measured from each request's
scheduled send time to the end of the response. Every response is checked: with the webhooks a GPU
Pod must come back with ``spec.resourceClaims`` and no ``nvidia.com/gpu`` left; without them it
must come back untouched.

Between workloads the harness waits for the background work a workload leaves behind (the
resourceclaim controller creating every claim, each one admitted by the validating webhook) and
for the components to go idle, and accounts the CPU time of each process over the workload,
background work included. The apiserver's own metrics give the time it spent in each webhook.

Prints a table (p50/p90/p99/max in ms, failures, CPU per Pod) and the with/without ratios, and
writes JSON (default bench/results/e2e.json). Exit code 1 when any Pod failed its check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.run import cpu_model, loadavg  # noqa: E402
from bench.vegeta import percentile  # noqa: E402
from tests.e2e.controlplane import DRA_FEATURE_GATES, ControlPlane, build_control_plane, tail  # noqa: E402
from tests.e2e.helpers import (  # noqa: E402
    BRIDGE_NAMESPACE,
    DEVICECLASSES,
    BridgeServer,
    Kube,
    legacy_keys,
    pod,
    webhook_configurations,
)

GPU = "nvidia.com/gpu"
PHASES = ("without", "with")
CLK_TCK = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
WEBHOOK_CONFIGS = (("mutatingwebhookconfiguration", "dra-bridge"), ("validatingwebhookconfiguration", "dra-bridge"))


# -- configuration ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    gpu: bool
    pods: int
    rate: float  # 0: sequential (one request in flight)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pods", type=int, default=400, help="GPU Pods per phase at --rate (default 400)")
    p.add_argument("--rate", type=float, default=40.0, help="Pods per second, open model (default 40)")
    p.add_argument("--reps", type=int, default=2, help="A/B repetitions: without, with, without, with... (default 2)")
    p.add_argument(
        "--sequential", type=int, default=100, help="GPU Pods one at a time per phase (default 100; 0: skip)"
    )
    p.add_argument(
        "--plain", type=int, default=None, help="Pods without GPUs per phase at --rate (default --pods; 0: skip)"
    )
    p.add_argument("--warmup", type=int, default=20, help="unrecorded Pods at the start of each phase (default 20)")
    p.add_argument("--connections", type=int, default=8, help="client connection pool (default 8)")
    p.add_argument("--timeout", type=float, default=30.0, help="per request, seconds (default 30)")
    p.add_argument("--settle-timeout", type=float, default=180.0, help="wait for claims after a workload (default 180)")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each workload, wait up to this long for other processes to go idle (default 60)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "e2e.json")
    p.add_argument("--work-dir", type=Path, help="keep the control plane's and dra-bridge's files and logs here")
    args = p.parse_args(argv)
    if args.plain is None:
        args.plain = args.pods
    if args.pods < 1 or args.rate <= 0 or args.reps < 1:
        p.error("--pods and --reps must be >= 1 and --rate > 0")
    return args


def workloads(args: argparse.Namespace) -> list[Workload]:
    out = [Workload("gpu", True, args.pods, args.rate)]
    if args.sequential:
        out.append(Workload("gpu-seq", True, args.sequential, 0.0))
    if args.plain:
        out.append(Workload("no-gpu", False, args.plain, args.rate))
    return out


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- Pods --------------------------------------------------------------------------------------------


def pod_body(name: str, gpu: bool) -> bytes:
    obj = pod(name)
    if gpu:
        obj["spec"]["containers"][0]["resources"] = {"limits": {GPU: "1"}, "requests": {GPU: "1"}}
    return json.dumps(obj, separators=(",", ":")).encode()


def check(phase: str, gpu: bool, status: int, body: bytes) -> str | None:
    """Why a response is not what the phase promises, or None."""
    if status != 201:
        with contextlib.suppress(ValueError):
            return f"HTTP {status}: {json.loads(body).get('message', '')[:300]}"
        return f"HTTP {status}: {body[:300]!r}"
    created = json.loads(body)
    claims = created["spec"].get("resourceClaims") or []
    left = legacy_keys(created, [GPU])
    if phase == "with" and gpu:
        if not claims or not all(c.get("resourceClaimTemplateName") for c in claims):
            return f"not converted: resourceClaims={claims}"
        if left:
            return f"legacy request left: {left}"
    elif claims or (gpu and not left):
        return f"changed without a webhook: resourceClaims={claims}, legacy={left}"
    return None


# -- the apiserver client ----------------------------------------------------------------------------


def tls_context(cp: ControlPlane) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    ctx.load_cert_chain(str(cp.admin_cert), str(cp.admin_key))
    return ctx


@dataclass
class Sample:
    latency: float  # seconds, scheduled send -> response read
    service: float  # seconds, actual send -> response read
    lag: float  # seconds, scheduled -> actual send
    status: int
    body: bytes


async def _drive(
    cp: ControlPlane, namespace: str, bodies: list[bytes], rate: float, connections: int, timeout: float
) -> list[Sample]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    url = f"/api/v1/namespaces/{namespace}/pods"
    samples: list[Sample | None] = [None] * len(bodies)
    async with httpx.AsyncClient(base_url=cp.server, verify=tls_context(cp), limits=limits, timeout=timeout) as client:
        # Open a few keep-alive connections first, so that no measured request pays a handshake.
        await asyncio.gather(*(client.get("/version") for _ in range(min(connections, 4))))

        async def one(i: int, scheduled: float) -> None:
            started = time.perf_counter()
            try:
                response = await client.post(url, content=bodies[i], headers=JSON_HEADERS)
                status, body = response.status_code, response.content
            except httpx.HTTPError as err:
                status, body = 0, f"{type(err).__name__}: {err}".encode()
            done = time.perf_counter()
            samples[i] = Sample(done - scheduled, done - started, started - scheduled, status, body)

        if rate <= 0:
            for i in range(len(bodies)):
                await one(i, time.perf_counter())
        else:
            start = time.perf_counter() + 0.05
            tasks = []
            for i in range(len(bodies)):
                scheduled = start + i / rate
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i, scheduled)))
            await asyncio.gather(*tasks)
    return [s for s in samples if s is not None]


def create_pods(
    cp: ControlPlane, namespace: str, bodies: list[bytes], rate: float, connections: int, timeout: float
) -> list[Sample]:
    return asyncio.run(_drive(cp, namespace, bodies, rate, connections, timeout))


class Api:
    """Synchronous calls for the harness itself (probes, counts, metrics), as the admin."""

    def __init__(self, cp: ControlPlane) -> None:
        self.client = httpx.Client(base_url=cp.server, verify=tls_context(cp), timeout=30)

    def close(self) -> None:
        self.client.close()

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path)

    def probe_converted(self, namespace: str) -> bool:
        """A server-side dry-run of a legacy GPU Pod: does it come back with claims?"""
        body = pod_body(f"probe-{int(time.monotonic() * 1000)}", gpu=True)
        r = self.client.post(f"/api/v1/namespaces/{namespace}/pods?dryRun=All", content=body, headers=JSON_HEADERS)
        if r.status_code != 201:
            raise RuntimeError(f"probe Pod: HTTP {r.status_code}: {r.text[:300]}")
        return bool(r.json()["spec"].get("resourceClaims"))

    def has_default_service_account(self, namespace: str) -> bool:
        return self.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/default").status_code == 200

    def claim_count(self, namespace: str) -> int:
        r = self.get(f"/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims")
        r.raise_for_status()
        return len(r.json()["items"])

    def version(self) -> str:
        return str(self.get("/version").json().get("gitVersion", ""))

    def metrics(self) -> dict[str, float]:
        r = self.get("/metrics")
        r.raise_for_status()
        return parse_metrics(r.text)


def wait(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> float:
    """Poll until ``predicate`` is true; the seconds it took. Raises on timeout."""
    started = time.monotonic()
    last = ""
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except Exception as err:  # a "not yet", reported on timeout
            last = f"{type(err).__name__}: {err}"
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{'; last: ' + last if last else ''}")
        time.sleep(interval)


# -- apiserver metrics -------------------------------------------------------------------------------

METRIC_FAMILIES = (
    "apiserver_admission_webhook_admission_duration_seconds",
    "apiserver_request_duration_seconds",
    "apiserver_request_sli_duration_seconds",
)
_SAMPLE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, float]:
    """The _sum and _count series of METRIC_FAMILIES, keyed 'name{labels}'."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(METRIC_FAMILIES):
            continue
        m = _SAMPLE.match(line)
        if m and m.group(1).endswith(("_sum", "_count")):
            out[f"{m.group(1)}{{{m.group(2)}}}"] = float(m.group(3))
    return out


def _split(key: str) -> tuple[str, dict[str, str]]:
    name, _, labels = key.partition("{")
    return name, dict(_LABEL.findall(labels))


def admission_view(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What the apiserver measured between two scrapes: per webhook, and Pod POSTs with and without them."""
    groups: dict[tuple[str, str], dict[str, float]] = {}

    def add(group: str, label: str, kind: str, value: float) -> None:
        entry = groups.setdefault((group, label), {"sum": 0.0, "count": 0.0})
        entry[kind] += value

    for key, value in after.items():
        delta = value - before.get(key, 0.0)
        if delta <= 0:
            continue
        name, labels = _split(key)
        family, _, kind = name.rpartition("_")
        if family == "apiserver_admission_webhook_admission_duration_seconds":
            add("webhooks", f"{labels.get('name')} {labels.get('type')} {labels.get('operation')}", kind, delta)
        elif family in ("apiserver_request_duration_seconds", "apiserver_request_sli_duration_seconds"):
            post = (
                labels.get("resource"),
                labels.get("verb"),
                labels.get("subresource", ""),
                labels.get("dry_run", ""),
            )
            if post == ("pods", "POST", "", ""):
                label = "total" if family == "apiserver_request_duration_seconds" else "sli (without webhooks)"
                add("pod_post", label, kind, delta)
    view: dict[str, Any] = {}
    for (group, label), entry in sorted(groups.items()):
        count = int(entry["count"])
        view.setdefault(group, {})[label] = {
            "count": count,
            "mean_ms": round(entry["sum"] / count * 1000, 3) if count else None,
        }
    return view


# -- CPU accounting ---------------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a live process; 0 when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """CPU seconds all CPUs spent not idle since boot."""
    # user nice system idle iowait irq softirq [steal ...]: steal is not time this machine used.
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


class CpuMeter:
    def __init__(self, pids: Callable[[], dict[str, int]]) -> None:
        self._pids = pids

    def snapshot(self) -> dict[str, float]:
        snap = {name: process_cpu(pid) for name, pid in self._pids().items()}
        snap["_machine"] = machine_busy()
        return snap

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        out = {name: after[name] - before.get(name, after[name]) for name in after if name != "_machine"}
        machine = after["_machine"] - before["_machine"]
        out["other"] = max(0.0, machine - sum(out.values()))
        return out

    def wait_idle(self, *, quiet_wait: float, cores: float = 0.2, window: float = 1.0, timeout: float = 30.0) -> float:
        """Wait until the measured processes use under ``cores`` for a whole ``window`` (up to ``timeout``),
        and other processes too (up to ``quiet_wait``: a shared machine may never be quiet)."""
        started = time.monotonic()
        while True:
            before = self.snapshot()
            time.sleep(window)
            delta = self.delta(before, self.snapshot())
            other = delta.pop("other")
            elapsed = time.monotonic() - started
            ours_idle = sum(delta.values()) < cores * window or elapsed > timeout
            if ours_idle and (other < cores * window or elapsed > quiet_wait):
                return elapsed


# -- figures ----------------------------------------------------------------------------------------


def stats(values_s: list[float]) -> dict[str, float | None]:
    ordered = sorted(v * 1000 for v in values_s)

    def q(x: float) -> float | None:
        value = percentile(ordered, x)
        return None if value is None else round(value, 2)

    return {
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "max": round(ordered[-1], 2) if ordered else None,
        "mean": round(sum(ordered) / len(ordered), 2) if ordered else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


@dataclass
class Row:
    phase: str
    workload: str
    rep: int
    namespace: str
    pods: int
    rate: float
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    wall: float = 0.0  # creating, then settling: what the CPU figures cover
    settle_seconds: float = 0.0
    settle_error: str | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    apiserver: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        per_pod = {k: round(v / max(1, self.pods) * 1000, 3) for k, v in sorted(self.cpu.items())}
        return {
            "phase": self.phase,
            "workload": self.workload,
            "rep": self.rep,
            "namespace": self.namespace,
            "pods": self.pods,
            "rate": self.rate or "sequential",
            "created": sum(1 for s in self.samples if s.status == 201),
            "failures": len(self.failures),
            "failure_samples": self.failures[:5],
            "seconds": round(self.seconds, 2),
            "achieved_rate": round(len(self.samples) / self.seconds, 1) if self.seconds else None,
            "latency_ms": stats([s.latency for s in self.samples]),
            "service_ms": stats([s.service for s in self.samples]),
            "dispatch_lag_ms_max": round(max((s.lag for s in self.samples), default=0) * 1000, 2),
            "settle_seconds": round(self.settle_seconds, 2),
            "settle_error": self.settle_error,
            "cpu_ms_per_pod": per_pod,
            "other_share": round(self.cpu.get("other", 0.0) / (self.wall * CPUS), 3) if self.wall else None,
            "apiserver": self.apiserver,
        }


def summarize(rows: list[Row], names: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in names:
        entry: dict[str, Any] = {}
        for phase in PHASES:
            mine = [r for r in rows if r.workload == name and r.phase == phase]
            entry[phase] = {
                "pods": sum(r.pods for r in mine),
                "failures": sum(len(r.failures) for r in mine),
                "latency_ms": stats([s.latency for r in mine for s in r.samples]),
                "apiserver_post_mean_ms": mean_of(mine, "pod_post", "total"),
                "apiserver_post_mean_ms_without_webhooks": mean_of(mine, "pod_post", "sli (without webhooks)"),
            }
        without, with_ = entry["without"]["latency_ms"], entry["with"]["latency_ms"]
        entry["ratio_p50"] = ratio(with_["p50"], without["p50"])
        entry["ratio_p99"] = ratio(with_["p99"], without["p99"])
        entry["added_ms_p50"] = round(with_["p50"] - without["p50"], 2) if with_["p50"] and without["p50"] else None
        entry["added_ms_p99"] = round(with_["p99"] - without["p99"], 2) if with_["p99"] and without["p99"] else None
        per_rep = []
        for rep in sorted({r.rep for r in rows}):
            pair = {p: next((r for r in rows if (r.workload, r.phase, r.rep) == (name, p, rep)), None) for p in PHASES}
            if pair["with"] and pair["without"]:
                w, wo = pair["with"].to_json()["latency_ms"], pair["without"].to_json()["latency_ms"]
                per_rep.append(
                    {"rep": rep, "ratio_p50": ratio(w["p50"], wo["p50"]), "ratio_p99": ratio(w["p99"], wo["p99"])}
                )
        entry["per_rep"] = per_rep
        summary[name] = entry
    return summary


def mean_of(rows: list[Row], group: str, label: str) -> float | None:
    """The count-weighted mean of one apiserver series over several rows."""
    entries = [r.apiserver.get(group, {}).get(label) for r in rows]
    pairs = [(e["count"], e["mean_ms"]) for e in entries if e and e["count"] and e["mean_ms"] is not None]
    total = sum(c for c, _ in pairs)
    return round(sum(c * m for c, m in pairs) / total, 2) if total else None


def other_share(rows: list[Row]) -> float | None:
    """Share of the machine's CPU that processes outside the benchmark used during the workloads."""
    wall = sum(r.wall for r in rows)
    return round(sum(r.cpu.get("other", 0.0) for r in rows) / (wall * CPUS), 3) if wall else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(result: dict[str, Any]) -> str:
    cpu_cols = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "dra-bridge", "client")
    short = {
        "kube-apiserver": "apisrv",
        "kube-controller-manager": "kcm",
        "kube-scheduler": "sched",
        "dra-bridge": "bridge",
    }
    lines = [
        f"control plane {result['control_plane']['version']}, {result['machine']['nproc']} CPUs "
        f"({result['machine']['cpu_model']}), Python {result['machine']['python']}",
        "latency: scheduled send -> response read, ms; gpu-seq: one request at a time, back to back; "
        "cpu: ms per Pod over the workload and the work it left behind (claims); other: share of the "
        "machine's CPU used by other processes meanwhile",
        "",
        f"{'phase':8} {'workload':8} {'rep':>3} {'pods':>5} {'fail':>4} {'rate/s':>6} "
        f"{'p50':>7} {'p90':>7} {'p99':>7} {'max':>8}  "
        + " ".join(f"{short.get(c, c):>6}" for c in cpu_cols)
        + f" {'other':>6} {'settle s':>8}",
    ]
    for row in result["rows"]:
        lat, cpu = row["latency_ms"], row["cpu_ms_per_pod"]
        rate = "seq" if row["rate"] == "sequential" else fmt(row["achieved_rate"])
        lines.append(
            f"{row['phase']:8} {row['workload']:8} {row['rep']:>3} {row['pods']:>5} {row['failures']:>4} {rate:>6} "
            f"{fmt(lat['p50'], 2):>7} {fmt(lat['p90'], 2):>7} {fmt(lat['p99'], 2):>7} {fmt(lat['max'], 2):>8}  "
            + " ".join(f"{fmt(cpu.get(c), 2):>6}" for c in cpu_cols)
            + f" {fmt((row['other_share'] or 0) * 100, 0) + '%':>6} {fmt(row['settle_seconds']):>8}"
        )
    lines += [
        "",
        f"{'workload':8} {'without p50/p99':>17} {'with p50/p99':>17} {'x p50':>6} {'x p99':>6} "
        f"{'+ms p50':>8} {'+ms p99':>8} {'fail':>5}  per rep (x p50/x p99)",
    ]
    for name, s in result["summary"].items():
        wo, w = s["without"]["latency_ms"], s["with"]["latency_ms"]
        reps = ", ".join(f"{fmt(r['ratio_p50'], 2)}/{fmt(r['ratio_p99'], 2)}" for r in s["per_rep"])
        lines.append(
            f"{name:8} {fmt(wo['p50'], 2) + ' / ' + fmt(wo['p99'], 2):>17} {fmt(w['p50'], 2) + ' / ' + fmt(w['p99'], 2):>17} "
            f"{fmt(s['ratio_p50'], 2):>6} {fmt(s['ratio_p99'], 2):>6} {fmt(s['added_ms_p50'], 2):>8} "
            f"{fmt(s['added_ms_p99'], 2):>8} {s['without']['failures'] + s['with']['failures']:>5}  {reps}"
        )
    lines += ["", "the apiserver's own mean per Pod POST, ms: without | with (of which outside webhooks)"]
    for name, s in result["summary"].items():
        wo, w = s["without"], s["with"]
        lines.append(
            f"  {name:8} {fmt(wo['apiserver_post_mean_ms'], 2):>7} | {fmt(w['apiserver_post_mean_ms'], 2):>7} "
            f"({fmt(w['apiserver_post_mean_ms_without_webhooks'], 2)})"
        )
    noise = result["noise"]["other_share_mean"]
    if noise is not None and noise > 0.05:
        lines += ["", f"NOISY: other processes used {noise:.0%} of the machine's CPU during the workloads"]
    hooks = result["apiserver_webhooks"]
    if hooks:
        lines += ["", "the apiserver's view, phase 'with' (mean ms per call, calls):"]
        for label, entry in hooks.items():
            lines.append(f"  {label:60} {fmt(entry['mean_ms'], 2):>7} ms  {entry['count']:>6}")
    return "\n".join(lines)


# -- the run ----------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, work_dir: Path) -> None:
        self.args = args
        self.work_dir = work_dir
        self.cp: ControlPlane | None = None
        self.bridge: BridgeServer | None = None
        self.api: Api | None = None
        self.kube: Kube | None = None
        self.rows: list[Row] = []
        self.phase_log: list[dict[str, Any]] = []
        self.registered = False

    # setup / teardown

    def start(self) -> None:
        started = time.monotonic()
        bin_dir = build_control_plane()
        log(f"control plane binaries: {bin_dir}")
        self.cp = ControlPlane(bin_dir, self.work_dir / "control-plane", DRA_FEATURE_GATES)
        self.cp.start()
        self.kube = Kube(self.cp)
        self.api = Api(self.cp)
        self.kube.kubectl("apply", "--server-side", "-f", str(DEVICECLASSES))
        self.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": BRIDGE_NAMESPACE}})
        (self.work_dir / "dra-bridge").mkdir(parents=True, exist_ok=True)
        self.bridge = BridgeServer(work_dir=self.work_dir / "dra-bridge", kubeconfig=self.cp.kubeconfig)
        self.probe_namespace = self.namespace("bench-probe")
        self.meter = CpuMeter(self.pids)
        log(f"control plane up at {self.cp.server} in {time.monotonic() - started:.1f}s")

    def stop(self) -> None:
        if self.bridge is not None:
            with contextlib.suppress(Exception):
                self.bridge.stop()
        if self.api is not None:
            with contextlib.suppress(Exception):
                self.api.close()
        if self.cp is not None:
            self.cp.stop()

    def pids(self) -> dict[str, int]:
        assert self.cp is not None
        out = self.cp.pids()
        if self.bridge is not None and self.bridge.proc is not None and self.bridge.proc.poll() is None:
            out["dra-bridge"] = self.bridge.proc.pid
        out["client"] = os.getpid()
        return out

    def namespace(self, prefix: str) -> str:
        assert self.kube is not None and self.api is not None
        name = self.kube.namespace(prefix)
        api = self.api
        wait(lambda: api.has_default_service_account(name), 60, f"the default ServiceAccount in {name}")
        return name

    # phases

    def register(self) -> float:
        """Start dra-bridge, apply the shipped webhook configurations, wait until a probe is converted."""
        assert self.bridge is not None and self.kube is not None and self.api is not None
        started = time.monotonic()
        self.bridge.start()
        self.kube.apply(webhook_configurations(port=self.bridge.port, ca_pem=self.bridge.ca_pem))
        self.registered = True
        api, ns = self.api, self.probe_namespace
        wait(lambda: api.probe_converted(ns), 60, "the apiserver to call the mutating webhook")
        return time.monotonic() - started

    def unregister(self) -> float:
        assert self.bridge is not None and self.kube is not None and self.api is not None
        started = time.monotonic()
        if self.registered:
            for kind, name in WEBHOOK_CONFIGS:
                self.kube.kubectl("delete", kind, name, "--ignore-not-found")
            self.registered = False
        api, ns = self.api, self.probe_namespace
        wait(lambda: not api.probe_converted(ns), 60, "the apiserver to stop calling the mutating webhook")
        time.sleep(1.0)  # the validating configuration goes away through the same informer; be generous
        self.bridge.stop()
        return time.monotonic() - started

    def run_phase(self, phase: str, rep: int) -> None:
        assert self.api is not None
        args = self.args
        log(f"rep {rep} phase {phase}: preparing")
        switch = self.register() if phase == "with" else self.unregister()
        plan = [(w, self.namespace(f"{phase}-{w.name}-r{rep}")) for w in workloads(args)]
        if args.warmup:
            warm_ns = self.namespace(f"{phase}-warmup-r{rep}")
            bodies = [pod_body(f"warm-{i:05d}", True) for i in range(args.warmup)]
            warm = create_pods(self.cp_(), warm_ns, bodies, args.rate, args.connections, args.timeout)
            bad = [s for s in warm if check(phase, True, s.status, s.body)]
            if bad:
                log(
                    f"warm-up: {len(bad)} of {len(warm)} Pods not as expected, e.g. {check(phase, True, bad[0].status, bad[0].body)}"
                )
            self.settle(warm_ns, expected=len(warm) - len(bad) if phase == "with" else 0)
        idle = self.meter.wait_idle(quiet_wait=args.quiet_wait)
        self.phase_log.append(
            {"phase": phase, "rep": rep, "switch_seconds": round(switch, 2), "idle_wait": round(idle, 2)}
        )
        for workload, namespace in plan:
            self.run_workload(phase, rep, workload, namespace)

    def cp_(self) -> ControlPlane:
        assert self.cp is not None
        return self.cp

    def run_workload(self, phase: str, rep: int, workload: Workload, namespace: str) -> None:
        assert self.api is not None
        args = self.args
        row = Row(phase, workload.name, rep, namespace, workload.pods, workload.rate)
        bodies = [pod_body(f"p-{i:05d}", workload.gpu) for i in range(workload.pods)]
        metrics_before = self.api.metrics()
        cpu_before = self.meter.snapshot()
        started = time.monotonic()
        row.samples = create_pods(self.cp_(), namespace, bodies, workload.rate, args.connections, args.timeout)
        row.seconds = time.monotonic() - started
        for s in row.samples:
            why = check(phase, workload.gpu, s.status, s.body)
            if why:
                row.failures.append(why)
            s.body = b""  # the checked bodies are not kept
        converted = len(row.samples) - len(row.failures) if phase == "with" and workload.gpu else 0
        try:
            row.settle_seconds = self.settle(namespace, expected=converted)
        except TimeoutError as err:
            row.settle_error = str(err)
            log(f"  {err}")
        row.cpu = CpuMeter.delta(cpu_before, self.meter.snapshot())
        row.wall = time.monotonic() - started
        row.apiserver = admission_view(metrics_before, self.api.metrics())
        self.rows.append(row)
        lat = row.to_json()["latency_ms"]
        log(
            f"  {phase:7} {workload.name:8} rep {rep}: {len(row.samples)} Pods, {len(row.failures)} failures, "
            f"p50 {fmt(lat['p50'], 2)} p99 {fmt(lat['p99'], 2)} max {fmt(lat['max'], 2)} ms, "
            f"settled in {row.settle_seconds:.1f}s"
        )
        self.meter.wait_idle(quiet_wait=args.quiet_wait)

    def settle(self, namespace: str, *, expected: int) -> float:
        """Wait until the resourceclaim controller has made a claim for every converted Pod."""
        assert self.api is not None
        if not expected:
            return 0.0
        api = self.api
        return wait(
            lambda: api.claim_count(namespace) >= expected,
            self.args.settle_timeout,
            f"{expected} ResourceClaims in {namespace}",
            interval=0.5,
        )

    def run(self) -> dict[str, Any]:
        assert self.api is not None and self.cp is not None
        machine = {
            "nproc": os.cpu_count(),
            "cpu_model": cpu_model(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "loadavg_start": loadavg(),
        }
        for rep in range(1, self.args.reps + 1):
            for phase in PHASES:
                self.run_phase(phase, rep)
        if self.registered:
            self.unregister()
        machine["loadavg_end"] = loadavg()
        names = [w.name for w in workloads(self.args)]
        webhooks: dict[str, dict[str, float]] = {}
        for row in self.rows:
            if row.phase != "with":
                continue
            for label, entry in row.apiserver.get("webhooks", {}).items():
                acc = webhooks.setdefault(label, {"count": 0, "sum": 0.0})
                acc["count"] += entry["count"]
                acc["sum"] += (entry["mean_ms"] or 0) * entry["count"]
        return {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": shlex.join([sys.executable, *sys.argv]),
            "machine": machine,
            "control_plane": {
                "version": self.api.version(),
                "feature_gates": self.cp.effective_feature_gates.get("kube-apiserver", {}),
            },
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
            "workloads": [w.__dict__ for w in workloads(self.args)],
            "phases": self.phase_log,
            "rows": [r.to_json() for r in self.rows],
            "summary": summarize(self.rows, names),
            "apiserver_webhooks": {
                label: {"count": int(e["count"]), "mean_ms": round(e["sum"] / e["count"], 3) if e["count"] else None}
                for label, e in sorted(webhooks.items())
            },
            "failures": sum(len(r.failures) for r in self.rows),
            "noise": {"other_share_mean": other_share(self.rows)},
        }

    def diagnostics(self) -> str:
        parts = []
        if self.bridge is not None:
            parts.append(f"--- {self.bridge.log}:\n{tail(self.bridge.log)}")
        if self.cp is not None:
            parts.append(f"--- kube-apiserver:\n{tail(self.cp.log_path('kube-apiserver'))}")
        return "\n".join(parts)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep = args.work_dir is not None
    work_dir = args.work_dir.resolve() if keep else Path(tempfile.mkdtemp(prefix="dra-bridge-bench-e2e-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, work_dir)
    try:
        with sigterm_as_interrupt():
            bench.start()
            result = bench.run()
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except Exception:
        log(f"failed; diagnostics:\n{bench.diagnostics()}")
        raise
    finally:
        bench.stop()
        if not keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwrote {args.out}")
    if result["failures"]:
        log(f"{result['failures']} Pods failed their check")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
