"""Handing a review to the replica that decides it (``webhook.quota.replicas``), over TLS.

A replica that does not own a tenant's quota sends that tenant's reserving reviews to the owner:
the same body, to the same path, over HTTPS to the address in the owner's membership Lease,
verified against this replica's own CA bundle under the name its serving certificate carries
(every replica serves the same certificate), with a header that says it was forwarded, so the
owner decides it where it lands and never sends it on. The owner's answer (decision and audit
record included) is the answer.

Forwarding may only ever cost time, never an answer: when the owner cannot be reached, answers
anything but 200, or takes longer than its share of the request's time, the review is decided here
(through the Lease, exact as ever) and the owner is passed over for a few seconds. Its share is
``timeout`` seconds and at most half of what the apiserver still waits, so a local decision always
has the other half.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from cryptography import x509

from webhook.certs.files import BUNDLE_FILE, CA_FILE, CERT_FILE, trusted_cas_file
from webhook.certs.issue import dns_names
from webhook.inline import DecidedElsewhere
from webhook.labels import FORWARDED_HEADER

log = logging.getLogger(__name__)


class Forwarder:
    def __init__(
        self,
        *,
        replica: str,
        context: ssl.SSLContext,
        server_name: str,
        unreachable: Callable[[str], None],
        timeout: float = 1.0,
        connect_timeout: float = 0.25,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.replica = replica
        self.server_name = server_name
        self._unreachable = unreachable
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._transport = transport
        self._client = self._new_client(context)

    def _new_client(self, context: ssl.SSLContext) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            verify=context,
            transport=self._transport,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32, keepalive_expiry=4.0),
        )

    async def trust(self, context: ssl.SSLContext, server_name: str) -> None:
        """Verify peers with ``context`` from now on: the certificate folder changed (a new CA during
        a rollover, a leaf under another name); connections made under the old trust are closed."""
        old, self._client, self.server_name = self._client, self._new_client(context), server_name
        await old.aclose()

    async def forward(
        self, moved: DecidedElsewhere, path: str, body: bytes, answer_by: float | None
    ) -> tuple[bytes | None, str]:
        """The owner's answer (a JSON AdmissionReview) and ``"answered"``, or None and why not."""
        budget = self._timeout
        if answer_by is not None:
            budget = min(budget, (answer_by - time.monotonic()) / 2)
        if budget <= 0.05:
            return None, "no-time"
        timeout = httpx.Timeout(budget, connect=min(self._connect_timeout, budget))
        try:
            response = await self._client.post(
                f"{moved.address.rstrip('/')}{path}",
                # the owner keeps nothing reserved past the moment this replica stops waiting for it
                params={"timeout": f"{budget:.3f}s"},
                content=body,
                headers={"content-type": "application/json", FORWARDED_HEADER: self.replica},
                timeout=timeout,
                extensions={"sni_hostname": self.server_name},
            )
        except httpx.HTTPError as err:
            self._unreachable(moved.peer)
            log.warning("replica %s at %s: %s; deciding here", moved.peer, moved.address, type(err).__name__)
            return None, "unreachable"
        if response.status_code != 200:
            self._unreachable(moved.peer)
            log.warning("replica %s answered %d; deciding here", moved.peer, response.status_code)
            return None, f"status-{response.status_code}"
        return response.content, "answered"

    async def close(self) -> None:
        await self._client.aclose()


def peer_context(
    cert_dir: Path, *, client_cert: Path | None = None, client_key: Path | None = None
) -> tuple[ssl.SSLContext, str]:
    """The client TLS context that verifies a peer replica, and the name its certificate carries.

    Peers are trusted through the folder's ``ca-bundle.crt`` (during a CA rollover: both CAs), else
    ``ca.crt``, and must present the first DNS name of this replica's own ``tls.crt``. With
    ``client_cert``, this replica presents it (for servers that verify their clients)."""
    ca_file = trusted_cas_file(cert_dir)
    if ca_file is None:
        raise ValueError(f"{cert_dir}: has neither {BUNDLE_FILE} nor {CA_FILE} to verify peer replicas with")
    context = ssl.create_default_context(cafile=str(ca_file))
    if client_cert is not None:
        context.load_cert_chain(str(client_cert), str(client_key) if client_key is not None else None)
    names = dns_names(x509.load_pem_x509_certificate((cert_dir / CERT_FILE).read_bytes()))
    if not names:
        raise ValueError(f"{cert_dir / CERT_FILE}: no DNS name to verify peer replicas by")
    return context, names[0]
