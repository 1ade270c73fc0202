"""``dra-bridge certs create|ca-bundle|patch|rotate``: the webhook's certificates, by hand or on a schedule.

A thin shell over :mod:`webhook.certs.issue`, :mod:`~webhook.certs.rotate`, :mod:`~webhook.certs.files` and
:mod:`~webhook.certs.manifests`; this module only reads and writes a certificate folder:

==================  =====================================================================
``ca.crt``          the CA that signed ``tls.crt`` (what :func:`files.write_pair` writes)
``ca.key``          its private key (0600), so ``rotate`` can sign the next leaf
``tls.crt/tls.key`` the serving pair the server loads (``tls.key`` 0600)
``ca-bundle.crt``   every CA the API server must trust: publish it as ``caBundle``
``next-ca.*``       the CA being rolled in, only between the two phases of a CA rollover
==================  =====================================================================

Data (manifests, the base64 bundle) goes to stdout, reports go to stderr. Every input is read and
every certificate computed before the first byte is written, so a failed command changes nothing.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from webhook.certs.files import BUNDLE_FILE, CA_FILE, CERT_FILE, KEY_FILE, atomic_write, trusted_cas_file, write_pair
from webhook.certs.issue import CertificateError, KeyPair, create_ca, create_serving_cert, service_dns_names
from webhook.certs.manifests import patch_ca_bundle, secret_manifest
from webhook.certs.rotate import RotationPhase, RotationResult, ca_bundle, rotate
from webhook.cli.common import dump_yaml, fail

CA_KEY_FILE = "ca.key"
NEXT_CA_FILE = "next-ca.crt"
NEXT_CA_KEY_FILE = "next-ca.key"
DEFAULT_SERVICE = "dra-bridge"
DEFAULT_NAMESPACE = "dra-bridge"
DEFAULT_SECRET = "dra-bridge-tls"
_PEM_MARK = b"-----BEGIN CERTIFICATE-----"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


class UsageError(Exception):
    """Bad input from the command line or the certificate folder; the message names the field and value."""


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "certs",
        help="create, publish and rotate the webhook's CA and serving certificate",
        description="Manage the certificate folder the server loads (ca.crt, tls.crt, tls.key) plus ca.key and "
        "ca-bundle.crt. Manifests and the caBundle go to stdout, reports to stderr; on error nothing is written.",
    )
    actions = parser.add_subparsers(dest="certs_action", required=True, metavar="ACTION")
    _add_create(actions)
    _add_ca_bundle(actions)
    _add_patch(actions)
    _add_rotate(actions)


def _add_create(actions: Any) -> None:
    p = actions.add_parser(
        "create",
        help="a new CA and serving certificate for the webhook Service",
        description="Reads nothing: makes a new CA and serving certificate and writes them to the folder --out "
        "(refused when it already holds a CA, unless --force), or prints them as a Secret with --secret.",
    )
    p.add_argument("--service", default=DEFAULT_SERVICE, help="Service name (default: %(default)s)")
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="its namespace (default: %(default)s)")
    p.add_argument("--ip", action="append", default=[], help="extra IP SAN, for URL webhooks (repeatable)")
    p.add_argument("--out", type=Path, help="folder to write ca.crt, ca.key, tls.crt, tls.key, ca-bundle.crt to")
    p.add_argument("--force", action="store_true", help="replace an existing CA in --out (re-publish caBundle!)")
    p.add_argument("--ca-days", type=int, default=3650, help="CA validity in days (default: %(default)s)")
    p.add_argument("--days", type=int, default=365, help="serving certificate validity in days (default: %(default)s)")
    _add_secret_flags(p)
    p.set_defaults(run=run_create)


def _add_ca_bundle(actions: Any) -> None:
    p = actions.add_parser(
        "ca-bundle",
        help="print the base64 caBundle for the webhook configurations",
        description="Reads ca-bundle.crt (else ca.crt) in the folder --dir and prints it base64-encoded.",
    )
    p.add_argument("--dir", type=Path, required=True, help="certificate folder")
    p.set_defaults(run=run_ca_bundle)


def _add_patch(actions: Any) -> None:
    p = actions.add_parser(
        "patch",
        help="print webhook configurations with their caBundle set",
        description="Reads the webhook configurations from -f (a file, or - for stdin: `kubectl get ... -o yaml`) "
        "and the bundle from the folder --dir; prints them with every caBundle set.",
    )
    p.add_argument("--dir", type=Path, required=True, help="certificate folder")
    p.add_argument("-f", "--filename", required=True, help="YAML file (multi-document, or a List), or - for stdin")
    p.add_argument(
        "--all-documents",
        action="store_true",
        help="also print the other documents unchanged (pipe a whole `kubectl kustomize` render through)",
    )
    p.set_defaults(run=run_patch)


def _add_rotate(actions: Any) -> None:
    p = actions.add_parser(
        "rotate",
        help="renew the serving certificate, or take one step of a two-phase CA rollover",
        description="Steady state: renew tls.crt when due. CA near expiry: phase 1 writes a new CA to next-ca.* and "
        "ca-bundle.crt with both CAs (publish it, then run rotate again); phase 2, once --published-bundle shows the "
        "new CA, signs a new leaf with it. Re-publishing ca-bundle.crt after every run is always safe. Reads the folder "
        "--dir, and the cluster's bundle only from --published-bundle (never the cluster itself).",
    )
    p.add_argument("--dir", type=Path, required=True, help="certificate folder made by `certs create`")
    p.add_argument(
        "--published-bundle",
        help="the caBundle the cluster publishes now (PEM, its base64, or the webhook configurations as YAML; - for "
        "stdin): the proof that the API server trusts the new CA",
    )
    p.add_argument("--service", help="Service name (default: the names in the current tls.crt)")
    p.add_argument("--namespace", help="its namespace (default: the names in the current tls.crt)")
    p.add_argument("--renew-before-days", type=int, default=30, help="renew the leaf this close to expiry")
    p.add_argument("--ca-renew-before-days", type=int, default=90, help="start a CA rollover this close to expiry")
    p.add_argument("--now", help="pretend it is this time (ISO 8601 with offset), to rehearse a rotation")
    _add_secret_flags(p)
    p.set_defaults(run=run_rotate)


def _add_secret_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--secret", action="store_true", help="print a kubernetes.io/tls Secret manifest on stdout")
    p.add_argument("--secret-name", default=DEFAULT_SECRET, help="its name (default: %(default)s)")
    p.add_argument("--secret-namespace", help="its namespace (default: --namespace, else dra-bridge)")


def _guard(action: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Map every expected failure to one stderr line and exit code 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            code = action(args)
        except (UsageError, CertificateError, ValueError, OSError) as err:
            return fail(f"certs {args.certs_action}: {err}")
        return code

    return run


# --------------------------------------------------------------------------- create


@_guard
def run_create(args: argparse.Namespace) -> int:
    if args.out is None and not args.secret:
        raise UsageError("nothing to do: give --out DIR, --secret, or both")
    ca_days = _positive("--ca-days", args.ca_days)
    days = _positive("--days", args.days)
    names = service_dns_names(args.service, args.namespace)
    if args.out is not None and not args.force:
        existing = [name for name in (CA_FILE, CA_KEY_FILE, CERT_FILE) if (args.out / name).exists()]
        if existing:
            raise UsageError(
                f"--out {args.out}: already holds {', '.join(existing)}; use `certs rotate`, or --force to replace "
                "the CA (then re-publish caBundle before the Pods load the new certificate)"
            )
    now = datetime.now(UTC)
    ca = create_ca(valid_for=timedelta(days=ca_days), now=now)
    serving = create_serving_cert(ca=ca, dns_names=names, ip_addresses=args.ip, valid_for=timedelta(days=days), now=now)
    secret = _secret(args, namespace=args.namespace, ca=ca, serving=serving) if args.secret else None
    if args.out is not None:
        _persist(args.out, ca=ca, serving=serving, bundle=ca.cert_pem, next_ca=None)
        print(
            f"wrote {args.out}/{{ca.crt,ca.key,tls.crt,tls.key,ca-bundle.crt}}: CA valid until "
            f"{_day(ca.not_after)}, serving certificate for {', '.join(names)} until {_day(serving.not_after)}",
            file=sys.stderr,
        )
    else:
        print("warning: no --out: the CA key is not kept, so `certs rotate` cannot renew this leaf", file=sys.stderr)
    if secret is not None:
        sys.stdout.write(dump_yaml([secret]))
    return 0


# --------------------------------------------------------------------------- ca-bundle, patch


@_guard
def run_ca_bundle(args: argparse.Namespace) -> int:
    bundle = _read_bundle(args.dir)
    print(base64.b64encode(bundle).decode("ascii"))
    return 0


@_guard
def run_patch(args: argparse.Namespace) -> int:
    bundle = _read_bundle(args.dir)
    origin, documents = _read_documents(args.filename)
    out: list[Any] = []
    patched = 0
    for doc in documents:
        if isinstance(doc, dict) and doc.get("kind") in (
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ):
            out.append(_without_client_state(patch_ca_bundle(doc, bundle)))
            patched += 1
        elif args.all_documents:
            out.append(doc)
    if not patched:
        raise UsageError(f"{origin}: no MutatingWebhookConfiguration or ValidatingWebhookConfiguration found")
    sys.stdout.write(dump_yaml(out))
    print(f"patched caBundle of {patched} webhook configuration(s)", file=sys.stderr)
    return 0


def _without_client_state(config: dict[str, Any]) -> dict[str, Any]:
    """Drop what ``kubectl get`` adds that must not go back through ``kubectl replace``.

    ``replace`` rewrites an existing last-applied annotation with the whole object it sends; a
    later client-side ``kubectl apply -k deploy/`` would then try to delete the caBundle and the
    resourceVersion it finds there. Without the annotation, apply keeps both. managedFields are
    the server's bookkeeping: an update that omits them leaves the server to track the change.
    """
    metadata = config.get("metadata") or {}
    metadata.pop("managedFields", None)
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict):
        annotations.pop(LAST_APPLIED, None)
        if not annotations:
            del metadata["annotations"]
    return config


def _read_documents(filename: str) -> tuple[str, list[Any]]:
    origin, raw = _read_input(filename)
    return origin, _documents(raw, origin)


def _read_input(filename: str) -> tuple[str, bytes]:
    if filename == "-":
        return "<stdin>", sys.stdin.buffer.read()
    return filename, _read(Path(filename))


def _documents(raw: bytes, origin: str) -> list[Any]:
    """YAML documents, with the items of a ``List`` (``kubectl get a,b -o yaml``) spliced in."""
    try:
        loaded = [d for d in yaml.safe_load_all(raw.decode("utf-8")) if d is not None]
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UsageError(f"{origin}: not valid YAML: {err}") from None
    documents: list[Any] = []
    for doc in loaded:
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            documents.extend(doc["items"])
        else:
            documents.append(doc)
    return documents


# --------------------------------------------------------------------------- rotate


class _Folder(NamedTuple):
    ca: KeyPair
    serving: KeyPair | None
    next_ca: KeyPair | None
    bundle: bytes


@_guard
def run_rotate(args: argparse.Namespace) -> int:
    now = _parse_now(args.now)
    renew_before = timedelta(days=_non_negative("--renew-before-days", args.renew_before_days))
    ca_renew_before = timedelta(days=_non_negative("--ca-renew-before-days", args.ca_renew_before_days))
    folder = _load_folder(args.dir)
    dns_names, ips = _rotation_names(args, folder.serving)
    published = _read_published_bundle(args.published_bundle) if args.published_bundle is not None else b""
    result = rotate(
        ca=folder.ca,
        serving=folder.serving,
        next_ca=folder.next_ca,
        dns_names=dns_names,
        ip_addresses=ips,
        now=now,
        renew_before=renew_before,
        ca_renew_before=ca_renew_before,
        published_bundle=published,
    )
    # Keep every unexpired CA this folder already asked to publish: without --published-bundle,
    # rotate() cannot know them, and dropping the previous CA early breaks in-flight connections.
    bundle = ca_bundle(result.ca_bundle, folder.bundle, now=now)
    namespace = args.namespace or _namespace_of(dns_names)
    secret = _secret(args, namespace=namespace, ca=result.ca, serving=result.serving) if args.secret else None
    _persist(args.dir, ca=result.ca, serving=result.serving, bundle=bundle, next_ca=result.next_ca)
    for line in _report(result, bundle=bundle, published=published, ca_expired=now >= folder.ca.not_after):
        print(line, file=sys.stderr)
    if secret is not None:
        sys.stdout.write(dump_yaml([secret]))
    return 0


def _report(result: RotationResult, *, bundle: bytes, published: bytes, ca_expired: bool) -> list[str]:
    leaf = f"serving certificate valid until {_day(result.serving.not_after)}"
    lines: list[str]
    if result.phase is RotationPhase.STEADY:
        lines = [f"phase steady: {'leaf renewed' if result.serving_changed else 'nothing to renew'}; {leaf}"]
    elif result.phase is RotationPhase.PUBLISH_BUNDLE:
        assert result.next_ca is not None
        lines = [
            f"phase publish-bundle (CA rollover 1/2): the CA expires {_day(result.ca.not_after)}; new CA written to "
            f"{NEXT_CA_FILE}; {BUNDLE_FILE} now holds both CAs; the current leaf stays in use "
            f"({'renewed by the old CA, ' if result.serving_changed else ''}{leaf})",
            "next: publish ca-bundle.crt in both webhook configurations, then run `certs rotate` again with "
            "--published-bundle set to the caBundle read back from the cluster",
        ]
    else:
        how = "the CA had expired: new CA and leaf at once" if ca_expired else "the new CA is published"
        lines = [f"phase new-leaf (CA rollover 2/2): {how}; {leaf}, signed by the new CA (now ca.crt)"]
        if ca_expired:
            lines.append("warning: the API server rejects this leaf until ca-bundle.crt is published: publish it now")
    if not published:
        lines.append(
            f"publish: not compared with the cluster (no --published-bundle); the webhook configurations must carry "
            f"{BUNDLE_FILE} (`certs patch` prints them)"
        )
    elif _fingerprints(bundle) != _fingerprints(published):
        lines.append(f"publish: {BUNDLE_FILE} differs from the published caBundle (`certs patch` prints the objects)")
    if result.serving_changed or result.phase is RotationPhase.NEW_LEAF:
        lines.append("update the Secret: tls.crt/tls.key changed (pass --secret for a manifest)")
    return lines


def _rotation_names(args: argparse.Namespace, serving: KeyPair | None) -> tuple[list[str], list[str]]:
    if args.service is not None or args.namespace is not None:
        service = args.service or DEFAULT_SERVICE
        namespace = args.namespace or DEFAULT_NAMESPACE
        current_ips = _sans(serving.certificate)[1] if serving is not None else []
        return service_dns_names(service, namespace), current_ips
    if serving is None:
        raise UsageError(f"{args.dir}/{CERT_FILE}: missing, so pass --service and --namespace for the new leaf")
    dns_names, ips = _sans(serving.certificate)
    if not dns_names and not ips:
        raise UsageError(f"{args.dir}/{CERT_FILE}: has no subjectAltName; pass --service and --namespace")
    return dns_names, ips


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return list(san.get_values_for_type(x509.DNSName)), [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def _namespace_of(dns_names: Sequence[str]) -> str:
    """The namespace part of ``svc.ns.svc``, as :func:`service_dns_names` builds it."""
    for name in dns_names:
        parts = name.split(".")
        if len(parts) == 3 and parts[2] == "svc":
            return parts[1]
    return DEFAULT_NAMESPACE


def _parse_now(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"invalid --now {value!r}: expected ISO 8601, e.g. 2030-01-01T00:00:00+00:00") from None
    if parsed.tzinfo is None:
        raise UsageError(f"invalid --now {value!r}: give a UTC offset, e.g. 2030-01-01T00:00:00+00:00")
    return parsed


# --------------------------------------------------------------------------- reading the folder


def _load_folder(directory: Path) -> _Folder:
    if not directory.is_dir():
        raise UsageError(f"--dir {directory}: not a folder (make one with `certs create --out`)")
    ca = _load_ca(directory, CA_FILE, CA_KEY_FILE, required=True)
    assert ca is not None
    next_ca = _load_ca(directory, NEXT_CA_FILE, NEXT_CA_KEY_FILE, required=False)
    serving: KeyPair | None = None
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.exists() or key_path.exists():
        serving = KeyPair(cert_pem=_read(cert_path), key_pem=_read(key_path))
        try:
            serving.validate()
        except CertificateError as err:
            # An unusable leaf is replaced, not fatal: the CA is what must survive.
            print(f"warning: {cert_path}: {err}; issuing a new leaf", file=sys.stderr)
            serving = None
    bundle_path = directory / BUNDLE_FILE
    bundle = ca_bundle(_read(bundle_path)) if bundle_path.exists() else ca.cert_pem
    return _Folder(ca=ca, serving=serving, next_ca=next_ca, bundle=bundle)


def _load_ca(directory: Path, cert_name: str, key_name: str, *, required: bool) -> KeyPair | None:
    cert_path, key_path = directory / cert_name, directory / key_name
    if not required and not cert_path.exists() and not key_path.exists():
        return None
    pair = KeyPair(cert_pem=_read(cert_path), key_pem=_read(key_path))
    try:
        pair.validate()
    except CertificateError as err:
        raise UsageError(f"{key_path}: {err}") from None
    return pair


def _read_bundle(directory: Path) -> bytes:
    """``ca-bundle.crt``, or ``ca.crt`` for folders made elsewhere (``serve --dev``, a Secret)."""
    path = trusted_cas_file(directory)
    if path is None:
        raise UsageError(f"--dir {directory}: has neither {BUNDLE_FILE} nor {CA_FILE}")
    try:
        return ca_bundle(_read(path))
    except CertificateError as err:
        raise UsageError(f"{path}: {err}") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: missing") from None


def _read_published_bundle(source: str) -> bytes:
    """A caBundle as the cluster publishes it: PEM, base64 of PEM, or webhook configurations.

    From webhook configurations, only CAs present in *every* webhook's caBundle count as
    published: the API server trusts the new CA only once all of them carry it.
    """
    origin, raw = _read_input(source)
    where = f"--published-bundle {origin}"
    if _PEM_MARK in raw:
        return _checked_bundle(raw, where)
    with contextlib.suppress(binascii.Error, ValueError):
        decoded = base64.b64decode(b"".join(raw.split()), validate=True)
        if _PEM_MARK in decoded:
            return _checked_bundle(decoded, where)
    try:
        documents = _documents(raw, origin)
    except UsageError:
        documents = []
    return _common_bundle(documents, origin)


def _common_bundle(documents: list[Any], origin: str) -> bytes:
    common: dict[bytes, x509.Certificate] | None = None
    for doc in documents:
        if not isinstance(doc, dict) or doc.get("kind") not in (
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ):
            continue
        name = (doc.get("metadata") or {}).get("name", "?")
        for i, webhook in enumerate(doc.get("webhooks") or []):
            where = f"{origin}: {doc['kind']} {name} webhooks[{i}].clientConfig.caBundle"
            encoded = (webhook.get("clientConfig") or {}).get("caBundle") or ""
            try:
                pem = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise UsageError(f"{where}: not base64") from None
            found = {_fp(c): c for c in _certificates(pem, where)} if pem.strip() else {}
            common = found if common is None else {fp: c for fp, c in common.items() if fp in found}
    if common is None:
        raise UsageError(
            f"--published-bundle {origin}: neither PEM, base64 of PEM, nor webhook configurations with a caBundle"
        )
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in common.values())


def _checked_bundle(pem: bytes, where: str) -> bytes:
    _certificates(pem, where)
    return pem


def _certificates(pem: bytes, where: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as err:
        raise UsageError(f"{where}: cannot parse the certificates: {err}") from None


def _fp(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def _fingerprints(pem: bytes) -> frozenset[bytes]:
    return frozenset(_fp(c) for c in x509.load_pem_x509_certificates(pem)) if pem.strip() else frozenset()


# --------------------------------------------------------------------------- writing the folder


def _persist(
    directory: Path,
    *,
    ca: KeyPair,
    serving: KeyPair,
    bundle: bytes,
    next_ca: KeyPair | None,
) -> None:
    """Write the folder; each file is replaced atomically.

    Order: the pending CA first, then the bundle, then the serving pair with its CA certificate,
    then the CA key, and the pending CA is removed last, once it has become ``ca.*``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if next_ca is not None:
        write_ca_key(directory / NEXT_CA_KEY_FILE, next_ca)
        atomic_write(directory / NEXT_CA_FILE, next_ca.cert_pem, mode=0o644)
    atomic_write(directory / BUNDLE_FILE, bundle, mode=0o644)
    write_pair(directory, ca=ca, serving=serving)
    write_ca_key(directory / CA_KEY_FILE, ca)
    if next_ca is None:
        for name in (NEXT_CA_FILE, NEXT_CA_KEY_FILE):
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()


def write_ca_key(path: Path, ca: KeyPair) -> None:
    """Persist a CA's private key (0600) after checking it belongs to the CA certificate.

    ``webhook.certs.files`` deliberately writes only the CA *certificate* next to the serving files;
    keeping the key is this command's job (and belongs outside the cluster).
    """
    ca.validate()
    atomic_write(path, ca.key_pem, mode=0o600)


# --------------------------------------------------------------------------- small helpers


def _secret(args: argparse.Namespace, *, namespace: str, ca: KeyPair, serving: KeyPair) -> dict[str, Any]:
    return secret_manifest(name=args.secret_name, namespace=args.secret_namespace or namespace, pair=serving, ca=ca)


def _positive(flag: str, value: int) -> int:
    if value <= 0:
        raise UsageError(f"invalid {flag} {value}: must be a positive number of days")
    return value


def _non_negative(flag: str, value: int) -> int:
    if value < 0:
        raise UsageError(f"invalid {flag} {value}: must be zero or more days")
    return value


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
