"""The certificate folder the server loads: ``ca.crt``, ``tls.crt`` and ``tls.key``.

:func:`write_pair` replaces the files atomically (temporary file, fsync,
rename, then an fsync of the folder) so readers such as
``webhook.serving.tls.CertificateReloader`` never see a partial file;
:func:`load_pair` reads them back and checks them; :func:`ensure_dev_certs`
keeps a throwaway local-development CA and serving pair for
``dra-bridge serve --dev``.  These functions touch only the directory they are
given.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from webhook.certs.issue import (
    CertificateError,
    KeyPair,
    create_ca,
    create_serving_cert,
    issued_by,
    load_certs,
    resolve_now,
    san_set,
    validate_pair,
    wanted_sans,
)

__all__ = [
    "BUNDLE_FILE",
    "CA_FILE",
    "CERT_FILE",
    "KEY_FILE",
    "StoredPair",
    "atomic_write",
    "ensure_dev_certs",
    "load_pair",
    "trusted_cas_file",
    "write_pair",
]

CA_FILE = "ca.crt"
BUNDLE_FILE = "ca-bundle.crt"  # every CA to trust: during a CA rollover, the current and the next
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"

# ensure_dev_certs reuses files only if they stay valid at least this long,
# so a dev server started now does not hit an expiry mid-session.
_DEV_MIN_REMAINING = timedelta(days=1)
_DEV_CA_VALIDITY = timedelta(days=365)
_DEV_SERVING_VALIDITY = timedelta(days=90)


class StoredPair(NamedTuple):
    """What :func:`load_pair` reads back: the CA certificate and the serving pair."""

    ca_cert_pem: bytes
    serving: KeyPair


def atomic_write(path: Path, data: bytes, *, mode: int) -> None:
    # Readers (the TLS reloader, kubelet-style consumers) must see either the
    # old or the new file, never a prefix: write a temp file in the same
    # directory (same filesystem, so os.replace is atomic), fsync, rename.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; set the final mode before any byte is written
        # so a key is never briefly readable by others.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(directory: Path) -> None:
    # Makes the renames themselves durable across a crash.
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass
    finally:
        os.close(dir_fd)


def trusted_cas_file(directory: Path) -> Path | None:
    """``ca-bundle.crt`` (during a rollover: both CAs), else ``ca.crt`` (folders made elsewhere:
    ``serve --dev``, a Secret); None when the folder has neither."""
    for name in (BUNDLE_FILE, CA_FILE):
        if (directory / name).exists():
            return directory / name
    return None


def write_pair(directory: Path, *, ca: KeyPair, serving: KeyPair) -> None:
    """Atomically write ``ca.crt``, ``tls.crt`` and ``tls.key`` (0600) into ``directory``.

    Only the CA *certificate* is written: the CA key never needs to be next to
    the serving files.  Each file is replaced atomically, but the three are not
    one transaction, so readers must tolerate a momentarily mismatched
    cert/key (``webhook.serving.tls.CertificateReloader`` does).  ``tls.crt`` is written before
    ``tls.key``; the pair is validated first so a bad pair never reaches disk.
    """
    validate_pair(serving.cert_pem, serving.key_pem)
    load_certs(ca.cert_pem, what="CA certificate")
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / CA_FILE, ca.cert_pem, mode=0o644)
    atomic_write(directory / CERT_FILE, serving.cert_pem, mode=0o644)
    atomic_write(directory / KEY_FILE, serving.key_pem, mode=0o600)
    _fsync_dir(directory)


def load_pair(directory: Path) -> StoredPair:
    """Read back what :func:`write_pair` wrote; raise :class:`CertificateError` if unusable.

    Missing files raise :class:`FileNotFoundError`.
    """
    ca_pem = (directory / CA_FILE).read_bytes()
    cert_pem = (directory / CERT_FILE).read_bytes()
    key_pem = (directory / KEY_FILE).read_bytes()
    load_certs(ca_pem, what=f"{directory / CA_FILE}")
    serving = KeyPair(cert_pem=cert_pem, key_pem=key_pem)
    serving.validate()
    return StoredPair(ca_cert_pem=ca_pem, serving=serving)


def ensure_dev_certs(
    directory: Path,
    *,
    hosts: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1", "::1"),
    now: datetime | None = None,
) -> Path:
    """Make sure ``directory`` holds a usable local-development CA and serving pair.

    Used by ``dra-bridge serve --dev``.  Existing files are reused when they
    parse, the key matches, the leaf is signed by ``ca.crt``, its names are
    exactly ``hosts`` + ``ips``, and leaf and CA stay valid for at least one
    more day; otherwise a throwaway CA and serving certificate are created and
    written.  Returns ``directory``.
    """
    now = resolve_now(now)
    wanted = wanted_sans(hosts, ips)
    if _dev_certs_reusable(directory, wanted=wanted, now=now):
        return directory
    ca = create_ca(common_name="dra-bridge-dev-ca", valid_for=_DEV_CA_VALIDITY, now=now)
    serving = create_serving_cert(ca=ca, dns_names=hosts, ip_addresses=ips, valid_for=_DEV_SERVING_VALIDITY, now=now)
    write_pair(directory, ca=ca, serving=serving)
    return directory


def _dev_certs_reusable(directory: Path, *, wanted: frozenset[str], now: datetime) -> bool:
    try:
        stored = load_pair(directory)
        ca_cert = load_certs(stored.ca_cert_pem, what="CA")[0]
    except (OSError, CertificateError):
        return False
    leaf = stored.serving.certificate
    horizon = now + _DEV_MIN_REMAINING
    return (
        san_set(leaf) == wanted
        and issued_by(leaf, ca_cert)
        and leaf.not_valid_before_utc <= now
        and leaf.not_valid_after_utc >= horizon
        and ca_cert.not_valid_after_utc >= horizon
    )
