"""Two replicas over real TLS: a tenant's claims are decided by the replica that owns its quota.

Both servers share one in-memory cluster (the Leases, the claims) and one serving certificate, as
the replicas of one Deployment share the apiserver and the Secret. Each review is posted to the
replica that does not own the tenant, and the answer must come from the owner: recorded there once,
never here, and exact at the limit; when the owner cannot be reached the review is decided here.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.admission.helpers import review
from tests.admission.test_quota import claim, policy_configmap
from tests.conftest import POLICIES
from tests.http.conftest import free_port
from webhook.certs.files import ensure_dev_certs
from webhook.cluster.memory import InMemoryCluster
from webhook.inline import DecidedElsewhere
from webhook.labels import FORWARDED_HEADER
from webhook.quota.replicas import Replicas, owner_among
from webhook.serving.peers import Forwarder, peer_context
from webhook.serving.server import Runtime, build_runtime, catalogue_files, uvicorn_server
from webhook.serving.settings import Settings
from webhook.serving.tls import server_ssl_context
from webhook.translate.catalogue import load_catalogue
from webhook.translate.deviceclasses import render_device_classes

TENANT = "research"
POLICY = {"tenants": [{"name": TENANT, "namespaces": ["ml-research"], "limits": {"devices": {"whole.*": 10}}}]}


@dataclass
class Replica:
    name: str
    url: str
    runtime: Runtime
    audit: Path

    @property
    def replicas(self) -> Replicas:
        assert self.runtime.replicas is not None
        return self.runtime.replicas

    def records(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def metric(self, name: str, **labels: str) -> float:
        text = self.runtime.metrics.render()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(f"{name}{{{want}}} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Replica, Replica, InMemoryCluster]]:
    certs = ensure_dev_certs(tmp_path / "certs")
    cluster = InMemoryCluster()
    for device_class in render_device_classes(load_catalogue(catalogue_files(POLICIES))):
        cluster.add_device_class(device_class)
    cluster.add_namespace("ml-research")
    cluster.put_configmap(policy_configmap(POLICY))
    servers, out = [], []
    for name in ("replica-a", "replica-b"):
        port = free_port()
        settings = Settings(
            policies_dir=POLICIES,
            cert_dir=certs,
            audit_file=str(tmp_path / name / "audit.log"),
            quota_coordination="lease",
            replica=name,
            peer_address=f"https://127.0.0.1:{port}",
        )
        runtime = build_runtime(settings, cluster=cluster)
        context = server_ssl_context(cert_file=certs / "tls.crt", key_file=certs / "tls.key")
        server = uvicorn_server(runtime.app, context, host="127.0.0.1", port=port, log_level="warning")
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        out.append(Replica(name, f"https://127.0.0.1:{port}", runtime, tmp_path / name / "audit.log"))
    for server, thread in servers:
        deadline = time.monotonic() + 15
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.02)
    for replica in (*out, *out):  # both write their membership, then both read both
        replica.replicas.renew()
    owner = out[0] if out[1].replicas.owner(TENANT) is not None else out[1]
    other = out[1] if owner is out[0] else out[0]
    assert other.replicas.owner(TENANT) is not None and owner.replicas.owner(TENANT) is None
    yield owner, other, cluster
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=15)


def client(certs: Path) -> httpx.Client:
    return httpx.Client(verify=ssl.create_default_context(cafile=str(certs / "ca.crt")), timeout=10)


def post(replica: Replica, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    certs = Path(replica.runtime.settings.cert_dir)
    with client(certs) as http:
        answer = http.post(f"{replica.url}/validate?timeout=5s", json=body, headers=headers or {})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()["response"]
    return result


def claim_review(name: str, uid: str) -> dict[str, Any]:
    return review(claim(name), kind="ResourceClaim", namespace="ml-research", uid=uid)


def test_the_owner_decides_and_records_what_reaches_the_other_replica(
    pair: tuple[Replica, Replica, InMemoryCluster],
) -> None:
    owner, other, _ = pair
    answer = post(other, claim_review("c-1", "uid-fwd-1"))
    assert answer["uid"] == "uid-fwd-1" and answer["allowed"] is True
    assert [r["uid"] for r in owner.records()] == ["uid-fwd-1"]  # recorded once, by the replica that decided
    assert other.records() == []
    assert other.metric("dra_bridge_quota_forwards_total", webhook="validate", outcome="answered") == 1
    assert owner.metric("dra_bridge_quota_forwards_total", webhook="validate", outcome="received") == 1
    assert other.runtime.quota.coordinator is not None and other.runtime.quota.coordinator.batches == 0


def test_claims_racing_through_both_replicas_admit_exactly_what_fits_with_one_writer(
    pair: tuple[Replica, Replica, InMemoryCluster],
) -> None:
    owner, other, cluster = pair
    for i in range(7):  # 3 of 10 left
        cluster.add_claim(claim(f"pre-{i}"))
    results: list[bool] = []
    lock = threading.Lock()

    def contend(i: int) -> None:
        answer = post((owner, other)[i % 2], claim_review(f"race-{i}", f"uid-race-{i}"))
        with lock:
            results.append(bool(answer["allowed"]))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [False] * 9 + [True] * 3
    assert owner.runtime.quota.coordinator is not None and owner.runtime.quota.coordinator.conflicts == 0
    assert other.runtime.quota.coordinator is not None and other.runtime.quota.coordinator.writes == 0
    assert sorted(r["uid"] for r in owner.records()) == sorted(f"uid-race-{i}" for i in range(12))


def test_a_forwarded_review_is_decided_where_it_lands(pair: tuple[Replica, Replica, InMemoryCluster]) -> None:
    owner, other, _ = pair
    answer = post(other, claim_review("c-2", "uid-here"), headers={FORWARDED_HEADER: owner.name})
    assert answer["allowed"] is True
    assert [r["uid"] for r in other.records()] == ["uid-here"] and owner.records() == []
    assert other.metric("dra_bridge_quota_forwards_total", webhook="validate", outcome="answered") == 0


def test_a_dry_run_is_not_forwarded(pair: tuple[Replica, Replica, InMemoryCluster]) -> None:
    owner, other, _ = pair
    body = review(claim("c-3"), kind="ResourceClaim", namespace="ml-research", uid="uid-dry", dry_run=True)
    assert post(other, body)["allowed"] is True
    assert [r["uid"] for r in other.records()] == ["uid-dry"] and owner.records() == []


def test_an_unreachable_owner_costs_time_never_the_answer(pair: tuple[Replica, Replica, InMemoryCluster]) -> None:
    """A peer that owns the tenant but does not listen: the review is decided here, once, and the
    peer is passed over for the next ones (which go to the owner among the replicas left)."""
    owner, other, cluster = pair
    ghost = next(
        name
        for name in (f"ghost-{i}" for i in range(1000))
        if owner_among(TENANT, [name, owner.name, other.name]) == name
    )
    Replicas(cluster, replica=ghost, address=f"https://127.0.0.1:{free_port()}").renew()
    other.replicas.renew()
    assert other.replicas.owner(TENANT) is not None and other.replicas.owner(TENANT).replica == ghost  # type: ignore[union-attr]
    first = post(other, claim_review("c-4", "uid-ghost-1"))
    second = post(other, claim_review("c-5", "uid-ghost-2"))
    assert first["allowed"] is True and second["allowed"] is True
    assert [r["uid"] for r in other.records()] == ["uid-ghost-1"]
    assert [r["uid"] for r in owner.records()] == ["uid-ghost-2"]
    assert other.metric("dra_bridge_quota_forwards_total", webhook="validate", outcome="unreachable") == 1
    assert other.metric("dra_bridge_quota_forwards_total", webhook="validate", outcome="answered") == 1


def test_the_forwarder_trusts_the_certificate_folder_as_it_is_now(
    pair: tuple[Replica, Replica, InMemoryCluster], tmp_path: Path
) -> None:
    """After a CA rollover the peers serve a leaf of the new CA: until the forwarder is told (the
    certificate reload does it), the owner is unreachable for it; once told, it is answered again."""
    owner, _, _ = pair
    stranger = ensure_dev_certs(tmp_path / "another-ca")  # a CA the owner's leaf does not chain to
    passed_over: list[str] = []
    body = json.dumps(claim_review("c-6", "uid-trust")).encode()
    moved = DecidedElsewhere(owner.name, owner.url, "test")

    async def run() -> tuple[tuple[bytes | None, str], tuple[bytes | None, str]]:
        context, name = peer_context(stranger)
        forwarder = Forwarder(replica="replica-x", context=context, server_name=name, unreachable=passed_over.append)
        try:
            before = await forwarder.forward(moved, "/validate", body, None)
            await forwarder.trust(*peer_context(Path(owner.runtime.settings.cert_dir)))
            return before, await forwarder.forward(moved, "/validate", body, None)
        finally:
            await forwarder.close()

    (before, why), (after, how) = asyncio.run(run())
    assert before is None and why == "unreachable" and passed_over == [owner.name]
    assert after is not None and how == "answered" and json.loads(after)["response"]["uid"] == "uid-trust"
