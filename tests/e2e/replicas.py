"""Two dra-bridge replicas behind one address on the real control plane: the pieces that both
tests/e2e/test_replicas.py (scaled for CI) and bench/replicas.py (the full figures) use.

- ``RoundRobinProxy``: a TCP (TLS pass-through) proxy on 127.0.0.1 that hands each new connection to
  the next replica, skipping one that refuses connections, and knows per replica how many of its
  connections carry a request not answered yet (the last bytes went client -> replica): the requests
  in flight when a replica is killed.
- ``ReplicaPair``: two ``dra-bridge serve`` processes with ``DRA_BRIDGE_QUOTA_COORDINATION=lease`` and
  distinct ``DRA_BRIDGE_REPLICA`` names, one serving certificate, registered with the apiserver
  through the shipped webhook configurations pointing at the proxy.
- ``post_all``: ResourceClaims (or Pods) POSTed straight to the apiserver with httpx, paced (open
  model), back to back from N clients, or all at once.
- ``LeaseSampler``: the size of the tenant's coordination Lease annotation, sampled during a run.
- ``recount``: each replica's ``dra_bridge_quota_usage`` gauge against the claims the apiserver lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import signal
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.e2e.controlplane import LOOPBACK, ControlPlane, free_port
from tests.e2e.helpers import BRIDGE_NAMESPACE, BridgeServer, Kube, pod, wait_for, webhook_configurations
from webhook.labels import INFLIGHT_ANNOTATION
from webhook.quota.coordination import lease_name

TENANT_LABEL = "dra-bridge.io/tenant"
POLICY = "e2e-replicas"
WHOLE = "whole.example.dra-bridge.io"
DIMENSION = "devices/whole.*"
CLAIM_WEBHOOK = "resourceclaims.validate.dra-bridge.io"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


# -- the proxy ---------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Conn:
    backend: int
    writers: tuple[asyncio.StreamWriter, ...] = ()
    awaiting: bool = False  # the last bytes went client -> backend: a request not answered yet


class RoundRobinProxy:
    """TCP pass-through on 127.0.0.1, one backend per connection in turn (a dead one is skipped)."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = list(backends)
        self.port = free_port()
        self._next = itertools.count()
        self._conns: set[_Conn] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self.accepted: dict[int, int] = {}
        # Requests that reached the proxy on a connection whose replica had already gone: the client
        # sent them before it saw the connection close (its requests in flight, from its side).
        self.dropped: dict[int, int] = {}

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, self.port, backlog=1024)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self._conns):
                for w in conn.writers:
                    w.close()
            await asyncio.sleep(0.2)  # the transports close on the next iterations

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def in_flight(self, backend: int) -> int:
        return sum(1 for c in list(self._conns) if c.backend == backend and c.awaiting)

    def open_connections(self, backend: int) -> int:
        return sum(1 for c in list(self._conns) if c.backend == backend)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = next(self._next)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for k in range(len(self.backends)):
            port = self.backends[(first + k) % len(self.backends)]
            try:
                upstream = await asyncio.open_connection(LOOPBACK, port)
                break
            except OSError:
                continue
        if upstream is None:
            writer.close()
            return
        self.accepted[port] = self.accepted.get(port, 0) + 1
        up_reader, up_writer = upstream
        conn = _Conn(port, writers=(writer, up_writer))
        self._conns.add(conn)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, request: bool) -> None:
            try:
                while chunk := await src.read(65536):
                    if request and dst.is_closing():
                        self.dropped[port] = self.dropped.get(port, 0) + 1
                        break
                    conn.awaiting = request
                    dst.write(chunk)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        finally:
            self._conns.discard(conn)
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()


# -- two replicas ------------------------------------------------------------------------------------
class ReplicaPair:
    """Two ``serve`` processes sharing one certificate, behind a ``RoundRobinProxy``."""

    def __init__(
        self,
        kube: Kube,
        work_dir: Path,
        *,
        names: tuple[str, str] = ("replica-a", "replica-b"),
        forwarding: bool = True,
    ) -> None:
        """``forwarding``: each replica gets a peer address, so each tenant is decided by one of them
        (the deploy default); without, both decide what reaches them and meet at the Lease."""
        self.kube = kube
        self.forwarding = forwarding
        self.servers: dict[str, BridgeServer] = {}
        first: BridgeServer | None = None
        for name in names:
            (work_dir / name).mkdir(parents=True, exist_ok=True)
            env = {
                "DRA_BRIDGE_QUOTA_COORDINATION": "lease",
                "DRA_BRIDGE_REPLICA": name,
                "DRA_BRIDGE_AUDIT_FILE": str(work_dir / name / "audit.log"),
            }
            server = BridgeServer(work_dir=work_dir / name, kubeconfig=kube.kubeconfig, env=env, tls_from=first)
            if forwarding:
                server.env["DRA_BRIDGE_PEER_ADDRESS"] = server.url
            first = first or server
            self.servers[name] = server
        self.proxy = RoundRobinProxy([s.port for s in self.servers.values()])

    @property
    def ca_pem(self) -> bytes:
        return next(iter(self.servers.values())).ca_pem

    def start(self) -> None:
        self.proxy.start()
        for server in self.servers.values():
            server.start()

    def register(self) -> None:
        """Point the shipped webhook configurations at the proxy."""
        self.kube.apply(webhook_configurations(port=self.proxy.port, ca_pem=self.ca_pem))

    def stop(self) -> None:
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                server.stop()
        self.proxy.stop()

    def pids(self) -> dict[str, int]:
        return {n: s.proc.pid for n, s in self.servers.items() if s.proc is not None and s.proc.poll() is None}

    def wait_policy(self, timeout: float = 30.0) -> None:
        for name, server in self.servers.items():
            wait_for(lambda s=server: f"{POLICY}@" in s.get("/readyz")[1], timeout, what=f"{name} to load the policy")
        if self.forwarding:  # and each knows the other: until then, each decides every tenant itself
            for name, server in self.servers.items():
                wait_for(
                    lambda s=server: "\ndra_bridge_replicas 2\n" in s.get("/metrics")[1],
                    timeout,
                    what=f"{name} to see both replicas",
                )

    def forwards(self) -> dict[str, dict[str, float]]:
        """Per live replica: reviews it forwarded by outcome, and those it received (``received``)."""
        return counters(self, _FORWARDS)


@contextlib.contextmanager
def serving_pair(bridge: BridgeServer, kube: Kube, folder: Path, limits: Mapping[str, int]) -> Iterator[ReplicaPair]:
    """Two replicas registered as the webhooks with a policy of ``limits``; afterwards the session's
    single server takes the webhooks back for the tests that follow, and the policy goes."""
    replicas = ReplicaPair(kube, folder)
    try:
        replicas.start()
        replicas.register()
        kube.apply(policy_configmap(limits))
        replicas.wait_policy()
        yield replicas
    finally:
        kube.apply(webhook_configurations(port=bridge.port, ca_pem=bridge.ca_pem))
        replicas.stop()
        kube.kubectl("delete", "configmap", POLICY, "-n", BRIDGE_NAMESPACE, "--ignore-not-found")


def policy_configmap(limits: Mapping[str, int]) -> dict[str, Any]:
    """One tenant per entry, limited to that many whole devices; a namespace joins by its label."""
    document = {
        "apiVersion": "dra-bridge.io/v1alpha1",
        "kind": "QuotaPolicy",
        "tenantLabel": TENANT_LABEL,
        "tenants": [{"name": name, "limits": {"devices": {"whole.*": limit}}} for name, limit in limits.items()],
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": POLICY, "namespace": BRIDGE_NAMESPACE, "labels": {"dra-bridge.io/policy": "true"}},
        "data": {"policy.yaml": yaml.safe_dump(document)},
    }


def claim_body(name: str) -> bytes:
    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": WHOLE, "count": 1}}]}},
    }
    return json.dumps(claim, separators=(",", ":")).encode()


def gpu_pod_body(name: str) -> bytes:
    obj = pod(name)
    obj["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}
    return json.dumps(obj, separators=(",", ":")).encode()


# -- driving the apiserver ---------------------------------------------------------------------------
def tls_context(cp: ControlPlane) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    ctx.load_cert_chain(str(cp.admin_cert), str(cp.admin_key))
    return ctx


@dataclass
class Outcome:
    latency: float  # seconds: scheduled send (paced) or send -> response read
    status: int
    message: str
    sent: float  # perf_counter at send
    done: float


def claims_path(namespace: str) -> str:
    return f"/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims"


def pods_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"


async def _post_all(
    cp: ControlPlane, path: str, bodies: list[bytes], *, rate: float, clients: int, timeout: float
) -> list[Outcome]:
    """rate > 0: paced (open model, latency from each request's schedule); rate == 0: ``clients``
    workers back to back; rate < 0: all at once (one connection each)."""
    connections = len(bodies) if rate < 0 else clients
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    out: list[Outcome | None] = [None] * len(bodies)
    async with httpx.AsyncClient(base_url=cp.server, verify=tls_context(cp), limits=limits, timeout=timeout) as client:
        await asyncio.gather(*(client.get("/version") for _ in range(min(connections, 8))))

        async def one(i: int, scheduled: float | None) -> None:
            sent = time.perf_counter()
            try:
                r = await client.post(path, content=bodies[i], headers=JSON_HEADERS)
                status, message = r.status_code, ("" if r.status_code == 201 else _message(r.content))
            except httpx.HTTPError as err:
                status, message = 0, f"{type(err).__name__}: {err}"
            done = time.perf_counter()
            out[i] = Outcome(done - (scheduled if scheduled is not None else sent), status, message, sent, done)

        if rate > 0:
            start = time.perf_counter() + 0.05
            tasks = []
            for i in range(len(bodies)):
                scheduled = start + i / rate
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i, scheduled)))
            await asyncio.gather(*tasks)
        elif rate == 0:
            queue = iter(range(len(bodies)))

            async def worker() -> None:
                for i in queue:
                    await one(i, None)

            await asyncio.gather(*(worker() for _ in range(clients)))
        else:
            await asyncio.gather(*(one(i, None) for i in range(len(bodies))))
    return [o for o in out if o is not None]


def _message(body: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body).get("message", ""))[:400]
    return body[:400].decode(errors="replace")


def post_all(
    cp: ControlPlane, path: str, bodies: list[bytes], *, rate: float, clients: int = 32, timeout: float = 30.0
) -> list[Outcome]:
    return asyncio.run(_post_all(cp, path, bodies, rate=rate, clients=clients, timeout=timeout))


# -- the Lease ---------------------------------------------------------------------------------------
class LeaseSampler:
    """Samples the byte size of a tenant's in-flight annotation (and its group count) in a thread."""

    def __init__(self, cp: ControlPlane, tenant: str, interval: float = 0.25) -> None:
        self._client = httpx.Client(base_url=cp.server, verify=tls_context(cp), timeout=10)
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{BRIDGE_NAMESPACE}/leases/{lease_name(tenant)}"
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-sampler", daemon=True)
        self.samples: list[tuple[float, int, int]] = []  # (seconds since start, annotation bytes, groups)

    def __enter__(self) -> LeaseSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = self._client.get(self._path)
                if r.status_code != 200:
                    continue
                text = (r.json()["metadata"].get("annotations") or {}).get(INFLIGHT_ANNOTATION, "{}")
                groups = sum(len(gs) for gs in json.loads(text).values())
                self.samples.append((time.monotonic() - self._started, len(text.encode()), groups))

    def summary(self) -> dict[str, Any]:
        sizes = [b for _, b, _ in self.samples]
        if not sizes:
            return {"samples": 0}
        half = len(sizes) // 2 or 1
        return {
            "samples": len(sizes),
            "bytes_min": min(sizes),
            "bytes_max": max(sizes),
            "bytes_max_first_half": max(sizes[:half]),
            "bytes_max_second_half": max(sizes[half:] or sizes),
            "groups_max": max(g for _, _, g in self.samples),
        }


# -- figures -----------------------------------------------------------------------------------------
def percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    k = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


def latency_ms(outcomes: list[Outcome]) -> dict[str, float | None]:
    ordered = sorted(o.latency * 1000 for o in outcomes)

    def q(x: float) -> float | None:
        v = percentile(ordered, x)
        return None if v is None else round(v, 1)

    return {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": q(1.0)}


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    ok = [o for o in outcomes if o.status == 201]
    span = (max(o.done for o in outcomes) - min(o.sent for o in outcomes)) if outcomes else 0.0
    failures: dict[str, int] = {}
    for o in outcomes:
        if o.status != 201:
            key = f"{o.status}: {o.message[:160]}"
            failures[key] = failures.get(key, 0) + 1
    return {
        "requests": len(outcomes),
        "created": len(ok),
        "failed": len(outcomes) - len(ok),
        "seconds": round(span, 2),
        "rate": round(len(outcomes) / span, 1) if span else None,
        "latency_ms": latency_ms(outcomes),
        "failures": dict(sorted(failures.items(), key=lambda kv: -kv[1])[:5]),
    }


_BUCKET = re.compile(r"^apiserver_admission_webhook_admission_duration_seconds_bucket\{(.*)\} (\S+)$")


def webhook_buckets(cp: ControlPlane, webhook: str = CLAIM_WEBHOOK) -> dict[float, float]:
    """The apiserver's cumulative histogram of its calls to one webhook (all labels summed)."""
    with httpx.Client(base_url=cp.server, verify=tls_context(cp), timeout=30) as client:
        text = client.get("/metrics").text
    return add_buckets({}, text, _BUCKET, f'name="{webhook}"')


def add_buckets(out: dict[float, float], text: str, pattern: re.Pattern[str], label: str) -> dict[float, float]:
    """Add to ``out`` (upper bound -> count) the histogram buckets in the metrics ``text`` whose
    line ``pattern`` matches (group 1 the labels, group 2 the count) and whose labels hold ``label``."""
    for line in text.splitlines():
        m = pattern.match(line)
        if not m or label not in m.group(1):
            continue
        le = re.search(r'le="([^"]+)"', m.group(1))
        if le:
            bound = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
            out[bound] = out.get(bound, 0.0) + float(m.group(2))
    return out


def webhook_view(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Calls between two scrapes, the share answered within 100 ms, and the bucket holding the p99."""
    delta = {b: after[b] - before.get(b, 0.0) for b in sorted(after)}
    total = delta.get(float("inf"), 0.0)
    if not total:
        return {"calls": 0}
    p99 = next((b for b, n in delta.items() if n >= 0.99 * total), float("inf"))
    return {
        "calls": int(total),
        "within_100ms": round(delta.get(0.1, 0.0) / total, 4),
        "p99_at_most_s": p99,
    }


# -- usage -------------------------------------------------------------------------------------------
_USAGE = re.compile(r"^dra_bridge_quota_usage\{(.*)\} (\S+)$")


def gauge_usage(server: BridgeServer, tenant: str, dimension: str = DIMENSION) -> float | None:
    status, text = server.get("/metrics")
    if status != 200:
        return None
    for line in text.splitlines():
        m = _USAGE.match(line)
        if m and f'tenant="{tenant}"' in m.group(1) and f'dimension="{dimension}"' in m.group(1):
            return float(m.group(2))
    return 0.0


_DECISION = re.compile(r"^dra_bridge_admission_duration_seconds_bucket\{(.*)\} (\S+)$")


def decision_buckets(pair: ReplicaPair, webhook: str = "validate") -> dict[float, float]:
    """The replicas' own cumulative histogram of the time to decide a review, summed."""
    out: dict[float, float] = {}
    for _, text in live_metrics(pair):
        add_buckets(out, text, _DECISION, f'webhook="{webhook}"')
    return out


def live_metrics(pair: ReplicaPair) -> Iterator[tuple[str, str]]:
    """(name, /metrics text) of each replica that is running and answers."""
    for name, server in pair.servers.items():
        if server.proc is None or server.proc.poll() is not None:
            continue
        status, text = server.get("/metrics")
        if status == 200:
            yield name, text


_FORWARDS = re.compile(r'^dra_bridge_quota_forwards_total\{webhook="\w+",outcome="([\w-]+)"\} (\S+)$')
_LEASE_OPS = re.compile(r'^dra_bridge_quota_lease_operations_total\{operation="(\w+)"\} (\S+)$')


_DECIDED = re.compile(r'^dra_bridge_admission_duration_seconds_count\{webhook="(validate)"\} (\S+)$')


def counters(pair: ReplicaPair, pattern: re.Pattern[str]) -> dict[str, dict[str, float]]:
    """Per live replica: the values of the metric lines ``pattern`` matches (group 1 the label that
    tells them apart, group 2 the value), summed per label; an empty mapping for a replica where
    none is counted yet (a counter renders no line before its first count)."""
    out: dict[str, dict[str, float]] = {}
    for name, text in live_metrics(pair):
        found = out[name] = {}
        for line in text.splitlines():
            m = pattern.match(line)
            if m:
                found[m.group(1)] = found.get(m.group(1), 0.0) + float(m.group(2))
    return out


def decided_by(pair: ReplicaPair) -> dict[str, dict[str, float]]:
    """Per live replica: the validations it decided since it started, under its own name."""
    return {name: {name: v.get("validate", 0.0)} for name, v in counters(pair, _DECIDED).items()}


def lease_operations(pair: ReplicaPair) -> dict[str, dict[str, float]]:
    """Per live replica: batches, Lease reads, writes and conflicts since it started."""
    return counters(pair, _LEASE_OPS)


def operations_between(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, int]:
    """Summed over the replicas alive at both ends (a killed replica's counters are gone)."""
    out: dict[str, int] = {}
    for name in set(before) & set(after):
        for op, value in after[name].items():
            out[op] = out.get(op, 0) + int(value - before[name].get(op, 0.0))
    return dict(sorted(out.items()))


def listed_charge(kube: Kube, namespaces: list[str]) -> tuple[int, int]:
    """(claims, whole devices they request) as the apiserver lists them."""
    claims = devices = 0
    for ns in namespaces:
        for c in kube.items("resourceclaims", "-n", ns):
            claims += 1
            for r in c["spec"]["devices"]["requests"]:
                exactly = r.get("exactly") or {}
                if str(exactly.get("deviceClassName", "")).startswith("whole."):
                    devices += int(exactly.get("count", 1))
    return claims, devices


def recount(pair: ReplicaPair, tenant: str, namespaces: list[str], timeout: float = 60.0) -> dict[str, Any]:
    """Wait until every live replica's usage gauge equals the charges of the claims that exist."""
    started = time.monotonic()
    seen: dict[str, Any] = {}

    def equal() -> bool:
        claims, devices = listed_charge(pair.kube, namespaces)
        gauges = {n: gauge_usage(s, tenant) for n, s in pair.servers.items() if s.proc is not None}
        seen.update(claims=claims, expected=devices, replicas=gauges)
        return all(v == devices for v in gauges.values())

    ok = True
    try:
        wait_for(equal, timeout, interval=0.5, what="usage gauges equal to the listed claims")
    except AssertionError:
        ok = False
    return {**seen, "equal": ok, "seconds": round(time.monotonic() - started, 1)}


# -- a replica killed mid-stream -------------------------------------------------------------------
@dataclass
class Kill:
    at: float  # seconds after the stream starts
    in_flight: int = -1  # requests the proxy had sent to the replica and not seen answered
    open_connections: int = -1
    killed_at: float = 0.0  # perf_counter
    done: threading.Event = field(default_factory=threading.Event)


def kill_during(pair: ReplicaPair, name: str, kill: Kill) -> threading.Thread:
    """Start a thread that SIGKILLs replica ``name`` ``kill.at`` seconds from now, and counts what the
    proxy had in flight to it at that moment."""
    server = pair.servers[name]

    def run() -> None:
        time.sleep(kill.at)
        assert server.proc is not None
        # Kill while the replica has a request in flight (up to 2 s later), so that the loss is shown.
        busy_until = time.monotonic() + 2.0
        while pair.proxy.in_flight(server.port) == 0 and time.monotonic() < busy_until:
            time.sleep(0.0005)
        kill.open_connections = pair.proxy.open_connections(server.port)
        kill.in_flight = pair.proxy.in_flight(server.port)
        server.proc.send_signal(signal.SIGKILL)
        kill.killed_at = time.perf_counter()
        kill.in_flight = max(kill.in_flight, pair.proxy.in_flight(server.port))
        server.proc.wait(10)
        server.proc = None
        kill.done.set()

    thread = threading.Thread(target=run, name="kill", daemon=True)
    thread.start()
    return thread


def namespaces_ready(kube: Kube, cp: ControlPlane, names: list[str]) -> None:
    """Pods need the namespace's default ServiceAccount (the ServiceAccount admission plugin)."""
    with httpx.Client(base_url=cp.server, verify=tls_context(cp), timeout=10) as client:
        for ns in names:
            wait_for(
                lambda ns=ns: client.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default").status_code == 200,
                60,
                what=f"the default ServiceAccount in {ns}",
            )


# -- the scenarios -----------------------------------------------------------------------------------
def load(
    pair: ReplicaPair, namespace: str, tenant: str, *, claims: int, rate: float, clients: int, prefix: str
) -> dict[str, Any]:
    """``claims`` ResourceClaims of one tenant: paced at ``rate`` per second, or back to back (rate 0)
    from ``clients`` clients; the Lease sampled meanwhile, the apiserver's view of the webhook."""
    cp = pair.kube.cp
    bodies = [claim_body(f"{prefix}-{i:05d}") for i in range(claims)]
    before, decided = webhook_buckets(cp), decision_buckets(pair)
    with LeaseSampler(cp, tenant) as sampler:
        outcomes = post_all(cp, claims_path(namespace), bodies, rate=rate, clients=clients)
    return {
        "replicas_decision": webhook_view(decided, decision_buckets(pair)),
        **summarize(outcomes),
        "paced_rate": rate or "back to back",
        "clients": clients,
        "lease": sampler.summary(),
        "apiserver_webhook": webhook_view(before, webhook_buckets(cp)),
    }


def race(pair: ReplicaPair, namespace: str, *, limit: int, left: int, racers: int) -> dict[str, Any]:
    """Fill the tenant to ``limit - left``, then ``racers`` claims at once for the last ``left`` units."""
    cp = pair.kube.cp
    fill = post_all(
        cp, claims_path(namespace), [claim_body(f"fill-{i:04d}") for i in range(limit - left)], rate=0, clients=4
    )
    bad = [o for o in fill if o.status != 201]
    assert not bad, f"filling the tenant failed: {bad[:3]}"
    outcomes = post_all(cp, claims_path(namespace), [claim_body(f"race-{i:04d}") for i in range(racers)], rate=-1)
    refused = [o for o in outcomes if o.status == 403 and "over by" in o.message]
    return {
        **summarize(outcomes),
        "limit": limit,
        "left": left,
        "racers": racers,
        "refused_by_quota": len(refused),
        "other_errors": len(outcomes) - len(refused) - sum(1 for o in outcomes if o.status == 201),
    }


def kill_stream(
    pair: ReplicaPair,
    namespace: str,
    *,
    kind: str,
    rate: float,
    seconds: float,
    victim: str,
    kill_at: float,
    prefix: str,
) -> dict[str, Any]:
    """Objects (``claims`` or GPU ``pods``) at ``rate`` per second; replica ``victim`` SIGKILLed
    ``kill_at`` seconds in. Returns the outcomes around the kill and what was in flight then."""
    cp = pair.kube.cp
    count = int(rate * seconds)
    if kind == "claims":
        path, bodies = claims_path(namespace), [claim_body(f"{prefix}-{i:05d}") for i in range(count)]
    else:
        path, bodies = pods_path(namespace), [gpu_pod_body(f"{prefix}-{i:05d}") for i in range(count)]
    pair.proxy.dropped.pop(pair.servers[victim].port, None)
    kill = Kill(at=kill_at)
    thread = kill_during(pair, victim, kill)
    outcomes = post_all(cp, path, bodies, rate=rate, clients=32)
    thread.join(30)
    failed = [o for o in outcomes if o.status != 201]
    return {
        **summarize(outcomes),
        "kind": kind,
        "victim": victim,
        "kill_at_s": kill_at,
        "in_flight_at_kill": kill.in_flight,
        "sent_to_the_dead_replica_after_kill": pair.proxy.dropped.get(pair.servers[victim].port, 0),
        "open_connections_at_kill": kill.open_connections,
        "failed_sent_before_kill": sum(1 for o in failed if o.sent <= kill.killed_at),
        "failed_after_kill_s": sorted(round(o.sent - kill.killed_at, 3) for o in failed)[:20],
    }
