"""Unit tests for webhook.certs.files: atomic writes of the certificate folder, reading it back, dev certificates."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from tests.unit.certs.support import T0, sans
from webhook.certs.files import ensure_dev_certs, load_pair, write_pair
from webhook.certs.issue import CertificateError, KeyPair, create_ca, create_serving_cert

# --------------------------------------------------------------------------
# Files and dev certs


def test_write_pair_and_load_pair_round_trip(tmp_path: Path) -> None:
    ca = create_ca(now=T0)
    leaf = create_serving_cert(ca=ca, dns_names=["a"], now=T0)
    target = tmp_path / "tls"
    write_pair(target, ca=ca, serving=leaf)
    assert sorted(p.name for p in target.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]  # no temp files left
    assert stat.S_IMODE((target / "tls.key").stat().st_mode) == 0o600
    assert (target / "ca.crt").read_bytes() == ca.cert_pem  # the CA key is never written
    stored = load_pair(target)
    assert stored.ca_cert_pem == ca.cert_pem
    assert stored.serving == leaf

    # Overwriting replaces files (new inode: readers never see a partial file).
    inode = (target / "tls.crt").stat().st_ino
    leaf2 = create_serving_cert(ca=ca, dns_names=["a"], now=T0)
    write_pair(target, ca=ca, serving=leaf2)
    assert (target / "tls.crt").stat().st_ino != inode
    assert load_pair(target).serving == leaf2


def test_write_pair_refuses_mismatched_pair_and_load_pair_detects_one(tmp_path: Path) -> None:
    ca = create_ca(now=T0)
    a = create_serving_cert(ca=ca, dns_names=["a"], now=T0)
    b = create_serving_cert(ca=ca, dns_names=["b"], now=T0)
    with pytest.raises(CertificateError, match="does not match"):
        write_pair(tmp_path, ca=ca, serving=KeyPair(cert_pem=a.cert_pem, key_pem=b.key_pem))
    assert list(tmp_path.iterdir()) == []
    write_pair(tmp_path, ca=ca, serving=a)
    (tmp_path / "tls.key").write_bytes(b.key_pem)
    with pytest.raises(CertificateError, match="does not match"):
        load_pair(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_pair(tmp_path / "missing")


def test_ensure_dev_certs_creates_then_reuses(tmp_path: Path) -> None:
    target = tmp_path / "dev"
    assert ensure_dev_certs(target, now=T0) == target
    first = load_pair(target)
    assert sans(first.serving) == (["localhost"], ["127.0.0.1", "::1"])
    ca_cert = x509.load_pem_x509_certificate(first.ca_cert_pem)
    first.serving.certificate.verify_directly_issued_by(ca_cert)
    assert stat.S_IMODE((target / "tls.key").stat().st_mode) == 0o600

    ensure_dev_certs(target, now=T0 + timedelta(days=30))
    assert load_pair(target) == first

    # Less than a day left: regenerated.
    ensure_dev_certs(target, now=first.serving.not_after - timedelta(hours=12))
    second = load_pair(target)
    assert second.serving != first.serving and second.ca_cert_pem != first.ca_cert_pem


@pytest.mark.parametrize("damage", ["hosts", "ips", "corrupt-key", "mismatched-key", "foreign-ca", "missing"])
def test_ensure_dev_certs_regenerates_unusable_files(tmp_path: Path, damage: str) -> None:
    ensure_dev_certs(tmp_path, now=T0)
    first = load_pair(tmp_path)
    hosts: tuple[str, ...] = ("localhost",)
    ips: tuple[str, ...] = ("127.0.0.1", "::1")
    if damage == "hosts":
        hosts = ("localhost", "dev.example")
    elif damage == "ips":
        ips = ("127.0.0.1",)
    elif damage == "corrupt-key":
        (tmp_path / "tls.key").write_bytes(first.serving.key_pem[:40])
    elif damage == "mismatched-key":
        other = create_serving_cert(ca=create_ca(now=T0), dns_names=["localhost"], now=T0)
        (tmp_path / "tls.key").write_bytes(other.key_pem)
    elif damage == "foreign-ca":
        (tmp_path / "ca.crt").write_bytes(create_ca(now=T0).cert_pem)
    else:
        os.remove(tmp_path / "ca.crt")
    ensure_dev_certs(tmp_path, hosts=hosts, ips=ips, now=T0)
    again = load_pair(tmp_path)
    assert again.serving != first.serving
    dns, addrs = sans(again.serving)
    assert dns == list(hosts) and addrs == list(ips)
    again.serving.certificate.verify_directly_issued_by(x509.load_pem_x509_certificate(again.ca_cert_pem))
