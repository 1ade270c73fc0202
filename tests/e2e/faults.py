"""Faults on the real control plane (issue 14 item 5), shared by tests/e2e/test_faults.py (scaled
for CI) and bench/faults.py (the full figures):

- ``rotate_under_load``: reviews POSTed straight to one ``dra-bridge serve`` over HTTPS at a fixed
  rate (as the apiserver would send them: the apiserver itself cannot send 200 reviews per second on
  two shared cores next to everything else), while its serving certificate is renewed and its CA
  rolled over through the files it reloads; every review must be answered.
- ``restart_apiserver``: the apiserver stopped and started again (every watch breaks, and resumes
  with a 410 Gone and a relist where the new apiserver's watch cache no longer has the
  resourceVersion): /readyz must say 503 until the caches have resynced, a claim review meanwhile
  must fail rather than be decided, and the usage afterwards must equal the claims that exist.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.admission.helpers import review
from tests.e2e.controlplane import LOOPBACK
from tests.e2e.helpers import BridgeServer, pod
from tests.e2e.replicas import ReplicaPair, claim_body, claims_path, post_all, recount
from webhook.certs.files import write_pair
from webhook.certs.issue import KeyPair, create_ca, create_serving_cert


# -- certificate rotation under load -----------------------------------------------------------------
@dataclass
class Rotation:
    requests: int = 0
    answered: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    handshakes: int = 0  # requests sent on a new connection (every ``fresh_every``-th closes its own)
    steps: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    reloads: float = 0.0
    final_issuer: str = ""


def review_body() -> bytes:
    """The AdmissionReview of a Pod without GPUs to /mutate: allowed, unchanged; the cheapest
    complete review, so that the load measures the TLS layer and the server, not a decision."""
    obj = pod("rotation")
    obj["metadata"]["namespace"] = "default"
    return json.dumps(review(obj, kind="Pod", namespace="default")).encode()


def _issuer(server: BridgeServer, cadata: str) -> str:
    ctx = ssl.create_default_context(cadata=cadata)
    with httpx.Client(verify=ctx, timeout=5) as client, client.stream("GET", f"{server.url}/healthz") as r:
        cert = r.extensions["network_stream"].get_extra_info("ssl_object").getpeercert()
    return ",".join("=".join(x) for rdn in cert.get("issuer", ()) for x in rdn)


def rotate_under_load(
    server: BridgeServer, ca: KeyPair, *, rate: float, seconds: float, fresh_every: int = 10
) -> Rotation:
    """Reviews at ``rate`` for ``seconds``; at 1/4 a new leaf from the same CA, at 1/2 the client
    (the apiserver's caBundle) trusts old and new CA, at 3/4 a leaf of the new CA. Every
    ``fresh_every``-th request closes its connection, so new handshakes see each step."""
    out = Rotation()
    body = review_body()
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    new_ca = create_ca(common_name="dra-bridge-e2e-ca-next")

    def leaf(of: KeyPair) -> KeyPair:
        return create_serving_cert(ca=of, dns_names=["localhost"], ip_addresses=[LOOPBACK])

    steps = [
        (seconds / 4, "new leaf, same CA", lambda: write_pair(server.cert_dir, ca=ca, serving=leaf(ca))),
        (seconds / 2, "CA rollover 1/2: bundle old+new", lambda: ctx.load_verify_locations(cadata=new_ca.cert_pem.decode())),
        (3 * seconds / 4, "CA rollover 2/2: leaf of the new CA", lambda: write_pair(server.cert_dir, ca=new_ca, serving=leaf(new_ca))),
    ]  # fmt: skip
    latencies: list[float] = []

    async def drive() -> None:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        headers = {"Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=server.url, verify=ctx, limits=limits, timeout=10) as client:
            start = time.perf_counter() + 0.05
            pending = list(steps)

            async def one(i: int, scheduled: float) -> None:
                fresh = i % fresh_every == 0
                h = {**headers, "Connection": "close"} if fresh else headers
                try:
                    r = await client.post("/mutate", content=body, headers=h)
                    ok = r.status_code == 200 and r.json()["response"]["allowed"] is True
                    key = "" if ok else f"HTTP {r.status_code}: {r.text[:120]}"
                except httpx.HTTPError as err:
                    key = f"{type(err).__name__}: {str(err)[:120]}"
                latencies.append(time.perf_counter() - scheduled)
                if key:
                    out.failures[key] = out.failures.get(key, 0) + 1
                else:
                    out.answered += 1
                out.handshakes += fresh

            tasks = []
            total = int(rate * seconds)
            for i in range(total):
                scheduled = start + i / rate
                while pending and scheduled - start >= pending[0][0]:
                    _, what, act = pending.pop(0)
                    act()
                    out.steps.append({"at_s": round(time.perf_counter() - start, 2), "step": what})
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i, scheduled)))
            await asyncio.gather(*tasks)
            out.requests = total
            out.seconds = round(time.perf_counter() - start, 2)

    asyncio.run(drive())
    latencies.sort()
    for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        out.latency_ms[name] = round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1)
    server.ca_pem = new_ca.cert_pem  # what the client trusts from now on
    status, text = server.get("/metrics")
    m = re.search(r"^dra_bridge_certificate_reloads_total (\S+)$", text, re.M) if status == 200 else None
    out.reloads = float(m.group(1)) if m else -1.0
    out.final_issuer = _issuer(server, new_ca.cert_pem.decode())
    return out


# -- the apiserver restarted -----------------------------------------------------------------------
def _ready(server: BridgeServer) -> int:
    try:
        return server.get("/readyz")[0]
    except OSError:
        return 0


def claim_review(namespace: str, name: str) -> bytes:
    obj = json.loads(claim_body(name))
    obj["metadata"]["namespace"] = namespace
    return json.dumps(review(obj, kind="ResourceClaim", namespace=namespace)).encode()


def direct_review(server: BridgeServer, body: bytes) -> tuple[int, str]:
    """POST a review to one replica's /validate, as the apiserver would."""
    ctx = ssl.create_default_context(cadata=server.ca_pem.decode())
    try:
        with httpx.Client(verify=ctx, timeout=10) as client:
            r = client.post(f"{server.url}/validate", content=body, headers={"Content-Type": "application/json"})
    except httpx.HTTPError as err:
        return 0, f"{type(err).__name__}: {err}"
    if r.status_code == 200:
        return 200, "allowed" if r.json()["response"]["allowed"] else "denied"
    return r.status_code, r.text[:200]


def restart_apiserver(pair: ReplicaPair, tenant: str, namespace: str, *, claims: int, down: float) -> dict[str, Any]:
    """Claims created; the apiserver stopped for ``down`` seconds and started again; readiness
    sampled every 50 ms on every replica meanwhile; a claim review sent to each replica while
    it is not ready; claims created and deleted afterwards; the usage recounted."""
    kube, cp = pair.kube, pair.kube.cp
    first = post_all(cp, claims_path(namespace), [claim_body(f"pre-{i:04d}") for i in range(claims)], rate=0, clients=4)
    assert all(o.status == 201 for o in first), [o.message for o in first if o.status != 201][:3]
    recount(pair, tenant, [namespace])
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in pair.servers}
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not stop.wait(0.05):
            for name, server in pair.servers.items():
                samples[name].append((round(time.monotonic() - t0, 2), _ready(server)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cp.stop_apiserver()
    stopped = time.monotonic() - t0
    reviews_while_down: dict[str, tuple[int, str]] = {}
    deadline = time.monotonic() + max(down, 15.0)
    for name, server in pair.servers.items():
        while time.monotonic() < deadline and _ready(server) == 200:
            time.sleep(0.05)
        reviews_while_down[name] = direct_review(server, claim_review(namespace, f"while-down-{name}"))
    time.sleep(max(0.0, down - (time.monotonic() - t0 - stopped)))
    starting = time.monotonic() - t0  # the apiserver serves watches before its /readyz says ok
    restarted_in = cp.start_apiserver()
    up = time.monotonic() - t0
    ready_at: dict[str, float | None] = {}
    for name, server in pair.servers.items():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _ready(server) != 200:
            time.sleep(0.05)
        ready_at[name] = round(time.monotonic() - t0, 2) if _ready(server) == 200 else None
    stop.set()
    sampler.join(5)
    # Afterwards: more claims, a few deleted; the usage must follow.
    after = post_all(
        cp, claims_path(namespace), [claim_body(f"post-{i:04d}") for i in range(claims)], rate=0, clients=4
    )
    for i in range(0, claims, 3):
        kube.kubectl("delete", "resourceclaim", f"pre-{i:04d}", "-n", namespace, "--wait=false")
    usage = recount(pair, tenant, [namespace])

    def not_ready(name: str) -> dict[str, Any]:
        bad = [t for t, status in samples[name] if status != 200]
        changes = [(t, st) for i, (t, st) in enumerate(samples[name]) if i == 0 or samples[name][i - 1][1] != st]
        return {
            "first_s": min(bad) if bad else None,
            "last_s": max(bad) if bad else None,
            "samples": len(bad),
            "changes": changes[:12],
        }

    return {
        "stopped_at_s": round(stopped, 2),
        "apiserver_started_at_s": round(starting, 2),
        "apiserver_up_at_s": round(up, 2),
        "apiserver_restart_s": round(restarted_in, 2),
        "replicas_ready_at_s": ready_at,
        "not_ready": {name: not_ready(name) for name in pair.servers},
        "ready_while_apiserver_down": {
            name: sum(1 for t, status in samples[name] if stopped + 1.0 < t < starting and status == 200)
            for name in pair.servers
        },
        "claim_review_while_not_ready": reviews_while_down,
        "created_after": sum(1 for o in after if o.status == 201),
        "recount": usage,
    }
