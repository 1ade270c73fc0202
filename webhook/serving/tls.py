"""Server-side TLS for the webhook: the SSLContext and its live certificate reload.

The server serves one ``ssl.SSLContext`` object for its whole life (the
connection protocol of ``webhook.serving.guard`` wraps each connection in TLS
with it; plain uvicorn would keep it at ``config.ssl`` when passed through
``ssl_context_factory``).  Calling ``load_cert_chain`` on it later
changes the certificate offered on *new* handshakes without a restart, which is
how rotated Secret files (kubelet swaps them atomically via a symlink) or
``webhook.certs.files.write_pair`` output reach clients.  :class:`CertificateReloader` does
that safely: it only ever applies a cert/key pair it has parsed and matched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from cryptography import x509

from webhook.certs.issue import CertificateError, validate_pair

__all__ = ["CertificateReloader", "server_ssl_context"]

log = logging.getLogger(__name__)

# (st_mtime_ns, st_size, st_ino) of one file; st_ino catches atomic renames
# that keep size and (coarse) mtime identical.
_Stamp = tuple[int, int, int]


def server_ssl_context(
    *,
    cert_file: Path,
    key_file: Path,
    client_ca_file: Path | None = None,
) -> ssl.SSLContext:
    """Build the webhook's server context: TLS 1.2+, the serving pair loaded.

    With ``client_ca_file`` the server requires a client certificate signed by
    one of those CAs (for API servers configured to authenticate to webhooks).
    The pair is validated first so a mismatch fails with a readable
    :class:`~webhook.certs.issue.CertificateError` instead of an OpenSSL code.
    """
    validate_pair(cert_file.read_bytes(), key_file.read_bytes())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    if client_ca_file is not None:
        context.load_verify_locations(cadata=_read_ca(client_ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _read_ca(path: Path) -> str:
    data = path.read_bytes()
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"cannot parse client CA file {path}: {exc}") from exc
    if not certs:  # pragma: no cover - cryptography raises on empty input already
        raise CertificateError(f"no certificate in client CA file {path}")
    return data.decode("ascii")


def _stamp(path: Path) -> _Stamp:
    st = path.stat()  # follows symlinks: kubelet's ..data swap changes the inode
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@contextlib.contextmanager
def _pem_paths(cert_pem: bytes, key_pem: bytes) -> Iterator[tuple[str, str]]:
    """Expose exact bytes as file paths for ``load_cert_chain`` (which only takes paths).

    Loading from the validated bytes, not from the watched files, closes the
    window where the files change between validation and loading: OpenSSL
    would then install the new certificate and drop the key, breaking every
    handshake.  Linux memfds keep the key off disk and work on read-only
    root filesystems; elsewhere a private temporary directory is used.
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fds: list[int] = []
        try:
            for name, data in (("tls.crt", cert_pem), ("tls.key", key_pem)):
                fd = memfd_create(name, getattr(os, "MFD_CLOEXEC", 0))
                fds.append(fd)
                os.write(fd, data)
            yield (f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    tmpdir = tempfile.mkdtemp(prefix="dra-bridge-tls-")  # pragma: no cover - non-Linux
    try:  # pragma: no cover - non-Linux
        cert_path = os.path.join(tmpdir, "tls.crt")
        key_path = os.path.join(tmpdir, "tls.key")
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        yield (cert_path, key_path)
    finally:  # pragma: no cover - non-Linux
        shutil.rmtree(tmpdir, ignore_errors=True)


class CertificateReloader:
    """Poll the serving cert/key (and client CA) files and reload them into a live context.

    A change is detected by (mtime_ns, size, inode) of either file.  The new
    pair is applied only if both files parse and the key matches the
    certificate; a half-written or mismatched pair is skipped with a warning and
    retried on every later check until it becomes consistent.

    :meth:`check` mutates the shared ``SSLContext``; call it (or run
    :meth:`run`) on the event loop thread that serves the connections.
    ``load_cert_chain`` replaces certificate and key in two steps, and a
    handshake starting on another thread in between would get a certificate
    without its key.

    Attributes for metrics: ``reloads`` (successful reloads of the serving
    pair or the client CA), ``failures``
    (distinct on-disk states that could not be applied, so a bad file sitting
    there counts once), ``not_after`` (expiry of the certificate being served),
    ``last_error``.  A changed client CA file adds its CAs to the trust store;
    CAs removed from it stay trusted until restart (OpenSSL cannot remove
    them), which is harmless for CA rollover.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        cert_file: Path,
        key_file: Path,
        client_ca_file: Path | None = None,
        interval: float = 5.0,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.context = context
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self.interval = interval
        self.reloads = 0
        self.failures = 0
        self.not_after: datetime | None = None
        self.last_error: str | None = None
        # The context is assumed to have been built from these files just now
        # (create the reloader right after server_ssl_context); their current
        # state is the baseline, so the first check() does not reload.
        self._applied: tuple[_Stamp, _Stamp] | None = None
        self._applied_pem: tuple[bytes, bytes] | None = None
        # Last failed on-disk state per kind ("pair", "client-ca"), so each bad
        # state is counted once even while the other kind is failing too.
        self._failed: dict[str, object] = {}
        self._ca_applied: _Stamp | None = None
        try:
            stamps = (_stamp(cert_file), _stamp(key_file))
            cert_pem, key_pem = cert_file.read_bytes(), key_file.read_bytes()
            cert = validate_pair(cert_pem, key_pem)
        except (OSError, CertificateError) as exc:
            # Leave the baseline empty: the next consistent pair will be applied.
            log.warning("TLS reloader: initial certificate files unusable: %s", exc)
        else:
            self._applied = stamps
            self._applied_pem = (cert_pem, key_pem)
            self.not_after = cert.not_valid_after_utc
        if client_ca_file is not None:
            with contextlib.suppress(OSError):
                self._ca_applied = _stamp(client_ca_file)

    def check(self) -> bool:
        """Reload the serving pair (and client CA) if their files changed and are consistent.

        Returns True when a new serving certificate or client CA was loaded.
        """
        ca_reloaded = self._check_client_ca()
        return self._check_pair() or ca_reloaded

    def _check_pair(self) -> bool:
        try:
            stamps = (_stamp(self.cert_file), _stamp(self.key_file))
        except OSError as exc:
            # A file briefly missing mid-rotation: keep serving, retry later.
            self._record_failure("pair", state=None, message=f"cannot stat certificate files: {exc}")
            return False
        if stamps == self._applied:
            return False
        try:
            cert_pem = self.cert_file.read_bytes()
            key_pem = self.key_file.read_bytes()
            cert = validate_pair(cert_pem, key_pem)
            # The files may have changed again since stat(); stamp what we read
            # only if it is still what is on disk, otherwise retry next check.
            if (_stamp(self.cert_file), _stamp(self.key_file)) != stamps:
                log.debug("TLS reloader: certificate files changed while reading; retrying later")
                return False
        except (OSError, CertificateError) as exc:
            self._record_failure("pair", state=stamps, message=str(exc))
            return False
        if self._applied_pem == (cert_pem, key_pem):
            # Same content rewritten (e.g. touched): nothing to load.
            self._applied = stamps
            self._failed.pop("pair", None)
            self.last_error = None
            return False
        try:
            self._load(cert_pem, key_pem)
        except (OSError, ssl.SSLError) as exc:
            self._record_failure("pair", state=stamps, message=f"load_cert_chain failed: {exc}")
            self._restore()
            return False
        self._applied = stamps
        self._applied_pem = (cert_pem, key_pem)
        self._failed.pop("pair", None)
        self.reloads += 1
        self.not_after = cert.not_valid_after_utc
        self.last_error = None
        log.info(
            "TLS reloader: serving certificate reloaded (serial %x, expires %s)",
            cert.serial_number,
            cert.not_valid_after_utc.isoformat(),
        )
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Call :meth:`check` every ``interval`` seconds until ``stop`` is set.

        Runs check() on the calling loop's thread on purpose (see class doc).
        An unexpected error is logged and the loop continues, since a dead
        reloader would silently serve an expiring certificate.
        """
        while not stop.is_set():
            try:
                self.check()
            except Exception:
                self.failures += 1
                log.exception("TLS reloader: unexpected error during check")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)

    def _load(self, cert_pem: bytes, key_pem: bytes) -> None:
        with _pem_paths(cert_pem, key_pem) as (cert_path, key_path):
            self.context.load_cert_chain(certfile=cert_path, keyfile=key_path)

    def _restore(self) -> None:
        # A failed load_cert_chain may have installed the certificate without
        # its key; put the last good pair back so handshakes keep working.
        if self._applied_pem is None:
            return
        try:
            self._load(*self._applied_pem)
        except (OSError, ssl.SSLError):  # pragma: no cover - last good pair loaded before
            log.exception("TLS reloader: could not restore the previous certificate")

    def _record_failure(self, kind: str, *, state: object, message: str) -> None:
        # Retries happen on every check, but a bad on-disk state that merely
        # persists is counted and logged at WARNING once, not every interval.
        self.last_error = message
        if kind in self._failed and self._failed[kind] == state:
            log.debug("TLS reloader: still not reloading: %s", message)
            return
        self._failed[kind] = state
        self.failures += 1
        log.warning("TLS reloader: not reloading, will retry: %s", message)

    def _check_client_ca(self) -> bool:
        if self.client_ca_file is None:
            return False
        try:
            stamp = _stamp(self.client_ca_file)
        except OSError as exc:
            self._record_failure("client-ca", state=None, message=f"cannot stat client CA file: {exc}")
            return False
        if stamp == self._ca_applied:
            return False
        try:
            cadata = _read_ca(self.client_ca_file)
            if _stamp(self.client_ca_file) != stamp:
                return False  # changed while reading; the next check picks it up
            self.context.load_verify_locations(cadata=cadata)
        except (OSError, CertificateError, ssl.SSLError) as exc:
            self._record_failure("client-ca", state=stamp, message=f"client CA: {exc}")
            return False
        self._ca_applied = stamp
        self._failed.pop("client-ca", None)
        self.reloads += 1
        log.info("TLS reloader: client CA file reloaded")
        return True
