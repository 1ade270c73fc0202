"""Configuration of the server, from flags or ``DRA_BRIDGE_*`` environment variables."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_POLICIES = Path(__file__).resolve().parents[2] / "policies"  # the checkout's (webhook/serving/ -> root)


def default_policies_dir() -> Path:
    """``./policies`` when run from a checkout or the image's work dir, else the one beside the package."""
    local = Path("policies")
    return local if local.is_dir() else REPO_POLICIES


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRA_BRIDGE_", extra="forbid")

    host: str = "0.0.0.0"
    port: int = Field(default=8443, ge=1, le=65535)
    cert_dir: Path = Path("/etc/dra-bridge/tls")
    client_ca_file: Path | None = None  # verify the apiserver's client certificate when set
    policies_dir: Path = Field(default_factory=default_policies_dir)
    namespace: str = "dra-bridge"  # where policy and catalogue ConfigMaps live
    max_body_bytes: int = Field(default=3 * 1024 * 1024, ge=1024)
    # A template no Pod references and nobody used for this long is deleted at the next sweep: one
    # made for a Pod that was then refused lingers at most grace + interval (15 minutes by default).
    template_gc_grace_seconds: float = Field(default=600.0, ge=0)
    template_gc_interval_seconds: float = Field(default=300.0, gt=0)
    cert_reload_interval_seconds: float = Field(default=5.0, gt=0)
    quota_coordination: Literal["local", "lease"] = "lease"  # lease: exact across replicas (one write per batch)
    quota_reservation_ttl_seconds: float = Field(default=30.0, gt=0)
    # How long admissions wait for the coordination Lease (conflicts, a slow apiserver) before the
    # failurePolicy decides; never longer than the request's own timeout.
    quota_coordination_wait_seconds: float = Field(default=2.0, gt=0)
    replica: str = Field(default_factory=lambda: os.environ.get("POD_NAME") or socket.gethostname())
    # Where the other replicas reach this one (https://<pod IP>:<port>). Set, each tenant's reserving
    # admissions are decided by one replica (webhook/quota/replicas.py), the others forward them;
    # empty, every replica decides what reaches it (still exact through the Lease, with more conflicts).
    peer_address: str = ""
    # A replica that forwards and servers that verify client certificates (client_ca_file): the
    # certificate and key it presents to its peers. Without one there, reviews are not forwarded.
    peer_client_cert_file: Path | None = None
    peer_client_key_file: Path | None = None
    # At most this long (and half the apiserver's remaining wait) for the owning replica's answer.
    peer_timeout_seconds: float = Field(default=1.0, gt=0)
    replica_lease_seconds: float = Field(default=15.0, ge=3)
    leave_native_extended_resources: bool = True
    require_conversion: bool = True
    # Who may move a namespace between tenants (change the labels that decide its tenant).
    tenant_admin_groups: tuple[str, ...] = ("system:masters",)
    audit_file: str = "/var/log/dra-bridge/audit.log"  # "-": JSON lines on stdout, for log collectors
    audit_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    audit_max_files: int = Field(default=10, ge=0)  # rotated files kept beside the current one
    audit_fsync: bool = False
    # Collect and freeze long-lived objects once synced, then again at this interval (webhook/serving/collector.py);
    # 0 leaves the interpreter's collector as it is.
    gc_settle_interval_seconds: float = Field(default=600.0, ge=0)
    dev: bool = False
    # With dev: ResourceSlice and DeviceClass YAML files (a folder) for the in-memory cluster's inventory.
    inventory_dir: Path | None = None
    log_level: str = "info"
    workers_threads: int = Field(default=16, ge=1, description="threads for decisions that touch the cluster")
    # A memory bound: past this many open connections or requests in flight, new requests get 503.
    # Unbounded, an overload held 1.4 GiB (bench/). uvicorn counts idle keep-alive connections too,
    # and Go clients open several per request in flight when a burst starts (vegeta: 170 for 32
    # workers), so this stays well above what a healthy replica sees; shed_after_seconds sheds first.
    max_concurrency: int = Field(default=2048, ge=1)
    # Requests are shed with 503 while the event loop runs this many seconds behind (webhook/serving/http.py):
    # below the apiserver's 3 s mutate timeout, so what is still decided is still awaited. 0: never.
    shed_after_seconds: float = Field(default=1.0, ge=0)
    # Slow clients (webhook/serving/guard.py): a connection is closed when its TLS handshake, its request
    # headers (from the connection or the previous response) or its body (from the headers) take longer.
    # The apiserver sends a review at once and gives up after the webhook's timeoutSeconds (3-5 s).
    tls_handshake_timeout_seconds: float = Field(default=5.0, gt=0)
    header_timeout_seconds: float = Field(default=5.0, gt=0)
    body_timeout_seconds: float = Field(default=5.0, gt=0)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)  # request line and headers; past it: 400, closed
    # The work one review may cost: Pods with more containers are refused (413) with a message, and bodies
    # over inline_max_bytes are decided on a thread, so the event loop keeps answering small reviews.
    max_pod_containers: int = Field(default=500, ge=1)
    inline_max_bytes: int = Field(default=256 * 1024, ge=0)
    # How long a thread holds the interpreter before one waiting is let in (0: the interpreter's own,
    # 5 ms). Decisions run on the event loop while watch threads decode the cluster's events; a
    # shorter interval let reviews in sooner in one run and made no difference in another
    # (bench/e2e.py, README "Pod creation side by side"), so it is left to the operator.
    gil_switch_interval_seconds: float = Field(default=0.0, ge=0, le=0.1)

    @field_validator("peer_address")
    @classmethod
    def _peer_url(cls, value: str) -> str:
        """``https://host:port``; an IPv6 address (what ``status.podIP`` is on an IPv6 cluster) gets its brackets."""
        if not value:
            return value
        scheme, sep, rest = value.partition("://")
        host, colon, port = rest.rstrip("/").rpartition(":")
        if scheme != "https" or not sep or not colon or not host or not port.isdigit() or "/" in rest.rstrip("/"):
            raise ValueError(f"peer_address {value!r}: expected https://<host or IP>:<port>")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"https://{host}:{port}"
