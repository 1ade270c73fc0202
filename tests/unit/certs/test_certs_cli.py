"""``dra-bridge certs``: create, ca-bundle, patch and rotate as an operator runs them.

Each action is called through ``webhook.cli.main`` on a temporary folder. Errors must name the
field or file and the value, exit non-zero, and leave the folder exactly as it was.
"""

from __future__ import annotations

import base64
import io
import stat
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tests.conftest import ROOT, assert_valid
from webhook.certs.files import ensure_dev_certs, load_pair
from webhook.certs.issue import service_dns_names, validate_pair
from webhook.cli import main

SERVICE_NAMES = service_dns_names("dra-bridge", "dra-bridge")
WEBHOOKS_YAML = ROOT / "deploy" / "base" / "webhooks.yaml"

Snapshot = dict[str, tuple[bytes, int]]


def snapshot(directory: Path) -> Snapshot:
    return {p.name: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in sorted(directory.iterdir())}


def create(directory: Path, *extra: str) -> None:
    assert main(["certs", "create", "--out", str(directory), *extra]) == 0


def certificates(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def fingerprints(pem: bytes) -> list[bytes]:
    return [c.fingerprint(hashes.SHA256()) for c in certificates(pem)]


def sans(cert_pem: bytes) -> list[str]:
    cert = certificates(cert_pem)[0]
    names: list[str] = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    return names


def issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    try:
        certificates(cert_pem)[0].verify_directly_issued_by(certificates(ca_pem)[0])
    except Exception:
        return False
    return True


def later(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def webhook_configs(bundle_b64: str | None = None) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(WEBHOOKS_YAML.read_text("utf-8")) if d]
    if bundle_b64 is not None:
        for doc in docs:
            for webhook in doc["webhooks"]:
                webhook["clientConfig"]["caBundle"] = bundle_b64
    return docs


def stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


# --------------------------------------------------------------------------- create


def test_create_writes_ca_key_and_serving_pair_with_safe_modes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certs"
    create(out)
    files = snapshot(out)
    assert sorted(files) == ["ca-bundle.crt", "ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert files["ca.key"][1] == 0o600 and files["tls.key"][1] == 0o600
    assert files["ca.crt"][1] == 0o644
    stored = load_pair(out)
    assert sans(stored.serving.cert_pem) == SERVICE_NAMES
    assert issued_by(stored.serving.cert_pem, stored.ca_cert_pem)
    validate_pair(files["ca.crt"][0], files["ca.key"][0])  # the CA key belongs to ca.crt
    assert files["ca-bundle.crt"][0] == files["ca.crt"][0]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "dra-bridge.dra-bridge.svc" in captured.err


def test_create_for_another_service_and_ip(tmp_path: Path) -> None:
    create(tmp_path, "--service", "gpu-hook", "--namespace", "platform", "--ip", "10.0.0.7", "--days", "30")
    leaf = certificates((tmp_path / "tls.crt").read_bytes())[0]
    assert sans(leaf.public_bytes(serialization.Encoding.PEM)) == service_dns_names("gpu-hook", "platform")
    ips = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    assert [str(ip) for ip in ips] == ["10.0.0.7"]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc < timedelta(days=31)


def test_create_with_secret_prints_a_valid_tls_secret_matching_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    create(tmp_path, "--secret")
    [secret] = list(yaml.safe_load_all(capsys.readouterr().out))
    assert_valid(secret)
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"] == {"name": "dra-bridge-tls", "namespace": "dra-bridge"}
    for key in ("tls.crt", "tls.key", "ca.crt"):
        assert base64.b64decode(secret["data"][key]) == (tmp_path / key).read_bytes()
    assert "ca.key" not in secret["data"], "the CA key never goes to the cluster"


def test_create_secret_only_warns_that_the_ca_key_is_not_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["certs", "create", "--secret", "--secret-name", "hook-tls", "--namespace", "platform"]) == 0
    captured = capsys.readouterr()
    secret = yaml.safe_load(captured.out)
    assert secret["metadata"] == {"name": "hook-tls", "namespace": "platform"}
    assert "CA key is not kept" in captured.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--service", "Bad_Name"], "invalid service 'Bad_Name'"),
        (["--namespace=-x"], "invalid namespace '-x'"),
        (["--ca-days", "0"], "invalid --ca-days 0"),
        (["--days", "-5"], "invalid --days -5"),
        (["--ip", "not-an-ip"], "'not-an-ip'"),
    ],
)
def test_create_errors_name_the_value_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "certs"
    assert main(["certs", "create", "--out", str(out), *args]) == 1
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.startswith("dra-bridge: certs create:")
    assert captured.out == ""
    assert not out.exists()


def test_create_needs_out_or_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "create"]) == 1
    assert "--out DIR, --secret" in capsys.readouterr().err


def test_create_refuses_to_replace_a_ca_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create(tmp_path)
    before = snapshot(tmp_path)
    assert main(["certs", "create", "--out", str(tmp_path)]) == 1
    assert "already holds ca.crt, ca.key, tls.crt" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
    create(tmp_path, "--force")
    assert snapshot(tmp_path)["ca.crt"] != before["ca.crt"]


# --------------------------------------------------------------------------- ca-bundle


def test_ca_bundle_prints_base64_of_the_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create(tmp_path)
    capsys.readouterr()
    assert main(["certs", "ca-bundle", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1
    assert base64.b64decode(out) == (tmp_path / "ca.crt").read_bytes()


def test_ca_bundle_of_a_folder_without_ca_bundle_crt_uses_ca_crt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_dev_certs(tmp_path)  # what `serve --dev` writes: ca.crt, tls.crt, tls.key
    assert main(["certs", "ca-bundle", "--dir", str(tmp_path)]) == 0
    assert base64.b64decode(capsys.readouterr().out) == (tmp_path / "ca.crt").read_bytes()


def test_ca_bundle_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "ca-bundle", "--dir", str(tmp_path)]) == 1
    assert "has neither ca-bundle.crt nor ca.crt" in capsys.readouterr().err
    (tmp_path / "ca.crt").write_text("garbage")
    assert main(["certs", "ca-bundle", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'ca.crt'}" in err and "cannot parse" in err


# --------------------------------------------------------------------------- patch


def test_patch_sets_every_ca_bundle_of_the_shipped_configurations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    create(tmp_path / "c")
    capsys.readouterr()
    assert main(["certs", "patch", "--dir", str(tmp_path / "c"), "-f", str(WEBHOOKS_YAML)]) == 0
    captured = capsys.readouterr()
    docs = list(yaml.safe_load_all(captured.out))
    assert [d["kind"] for d in docs] == ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
    expected = base64.b64encode((tmp_path / "c" / "ca-bundle.crt").read_bytes()).decode()
    for doc in docs:
        assert_valid(doc)
        assert {w["clientConfig"]["caBundle"] for w in doc["webhooks"]} == {expected}
    assert sum(len(d["webhooks"]) for d in docs) == 7  # every webhook of both configurations
    assert "patched caBundle of 2 webhook configuration(s)" in captured.err


def test_patch_all_documents_passes_other_objects_through(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    create(tmp_path / "c")
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 1}]}}
    render = yaml.safe_dump_all([service, *webhook_configs()]).encode()
    stdin(monkeypatch, render)
    capsys.readouterr()
    assert main(["certs", "patch", "--dir", str(tmp_path / "c"), "-f", "-", "--all-documents"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert docs[0] == service
    assert [d["kind"] for d in docs[1:]] == ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


def test_patch_reads_a_kubectl_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create(tmp_path / "c")
    listing = tmp_path / "live.yaml"
    listing.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": webhook_configs()}))
    capsys.readouterr()
    assert main(["certs", "patch", "--dir", str(tmp_path / "c"), "-f", str(listing)]) == 0
    assert len(list(yaml.safe_load_all(capsys.readouterr().out))) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
            "no MutatingWebhookConfiguration or ValidatingWebhookConfiguration",
        ),
        ("kind: [unclosed\n", "not valid YAML"),
    ],
)
def test_patch_errors_print_nothing_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    create(tmp_path / "c")
    source = tmp_path / "in.yaml"
    source.write_text(content)
    capsys.readouterr()
    assert main(["certs", "patch", "--dir", str(tmp_path / "c"), "-f", str(source)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err and str(source) in captured.err


def test_patch_with_a_missing_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create(tmp_path / "c")
    capsys.readouterr()
    assert main(["certs", "patch", "--dir", str(tmp_path / "c"), "-f", str(tmp_path / "nope.yaml")]) == 1
    assert f"{tmp_path / 'nope.yaml'}: missing" in capsys.readouterr().err


# --------------------------------------------------------------------------- rotate


def test_rotate_in_steady_state_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create(tmp_path)
    before = snapshot(tmp_path)
    published = tmp_path.parent / "published.pem"
    published.write_bytes((tmp_path / "ca.crt").read_bytes())
    capsys.readouterr()
    assert main(["certs", "rotate", "--dir", str(tmp_path), "--published-bundle", str(published)]) == 0
    err = capsys.readouterr().err
    assert "phase steady: nothing to renew" in err
    assert "publish:" not in err and "update the Secret" not in err
    assert {k: v[0] for k, v in snapshot(tmp_path).items()} == {k: v[0] for k, v in before.items()}


def test_rotate_renews_a_leaf_that_is_due_with_the_same_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(["certs", "rotate", "--dir", str(tmp_path), "--now", later(300), "--secret"]) == 0
    captured = capsys.readouterr()
    assert "phase steady: leaf renewed" in captured.err
    assert "update the Secret" in captured.err
    after = snapshot(tmp_path)
    assert after["tls.crt"] != before["tls.crt"] and after["tls.key"] != before["tls.key"]
    assert after["ca.crt"] == before["ca.crt"] and after["ca.key"] == before["ca.key"]
    assert issued_by(after["tls.crt"][0], after["ca.crt"][0])
    assert sans(after["tls.crt"][0]) == SERVICE_NAMES
    secret = yaml.safe_load(captured.out)
    assert base64.b64decode(secret["data"]["tls.crt"]) == after["tls.crt"][0]


def test_rotate_ca_rollover_in_two_phases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create(tmp_path, "--ca-days", "60")  # within the 90-day CA renewal window from the start
    initial = snapshot(tmp_path)
    old_ca = initial["ca.crt"][0]

    # Phase 1: a new CA is written beside the old one; the bundle holds both; the leaf stays.
    capsys.readouterr()
    assert main(["certs", "rotate", "--dir", str(tmp_path)]) == 0
    assert "phase publish-bundle (CA rollover 1/2)" in capsys.readouterr().err
    phase1 = snapshot(tmp_path)
    next_ca = phase1["next-ca.crt"][0]
    assert phase1["next-ca.key"][1] == 0o600
    validate_pair(next_ca, phase1["next-ca.key"][0])
    assert phase1["tls.crt"] == initial["tls.crt"] and phase1["ca.crt"] == initial["ca.crt"]
    bundle = phase1["ca-bundle.crt"][0]
    assert fingerprints(bundle) == fingerprints(old_ca) + fingerprints(next_ca)

    # Not yet published everywhere: still phase 1, with the same pending CA.
    half = webhook_configs(base64.b64encode(bundle).decode())
    half[0]["webhooks"][0]["clientConfig"]["caBundle"] = base64.b64encode(old_ca).decode()
    live = tmp_path.parent / "live.yaml"
    live.write_text(yaml.safe_dump_all(half))
    assert main(["certs", "rotate", "--dir", str(tmp_path), "--published-bundle", str(live)]) == 0
    assert "phase publish-bundle" in capsys.readouterr().err
    assert snapshot(tmp_path)["next-ca.crt"] == phase1["next-ca.crt"]

    # Phase 2: every webhook publishes both CAs, read back as the cluster shows them.
    live.write_text(yaml.safe_dump_all(webhook_configs(base64.b64encode(bundle).decode())))
    assert main(["certs", "rotate", "--dir", str(tmp_path), "--published-bundle", str(live)]) == 0
    assert "phase new-leaf (CA rollover 2/2): the new CA is published" in capsys.readouterr().err
    phase2 = snapshot(tmp_path)
    assert "next-ca.crt" not in phase2 and "next-ca.key" not in phase2
    assert phase2["ca.crt"][0] == next_ca
    validate_pair(phase2["ca.crt"][0], phase2["ca.key"][0])
    assert issued_by(phase2["tls.crt"][0], next_ca)
    # The old CA stays trusted until it expires.
    assert set(fingerprints(phase2["ca-bundle.crt"][0])) == set(fingerprints(old_ca) + fingerprints(next_ca))

    # And the next run is steady again.
    published = tmp_path.parent / "published.b64"
    published.write_text(base64.b64encode(phase2["ca-bundle.crt"][0]).decode() + "\n")
    assert main(["certs", "rotate", "--dir", str(tmp_path), "--published-bundle", str(published)]) == 0
    assert "phase steady: nothing to renew" in capsys.readouterr().err


def test_rotate_reads_the_published_bundle_from_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    create(tmp_path, "--ca-days", "60")
    assert main(["certs", "rotate", "--dir", str(tmp_path)]) == 0
    stdin(monkeypatch, (tmp_path / "ca-bundle.crt").read_bytes())
    capsys.readouterr()
    assert main(["certs", "rotate", "--dir", str(tmp_path), "--published-bundle", "-"]) == 0
    assert "phase new-leaf" in capsys.readouterr().err


def test_rotate_with_an_expired_ca_replaces_it_and_says_to_publish(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    create(tmp_path, "--ca-days", "1")
    old_ca = (tmp_path / "ca.crt").read_bytes()
    capsys.readouterr()
    assert main(["certs", "rotate", "--dir", str(tmp_path), "--now", later(3)]) == 0
    err = capsys.readouterr().err
    assert "the CA had expired" in err and "publish it now" in err
    new_ca = (tmp_path / "ca.crt").read_bytes()
    assert new_ca != old_ca
    assert fingerprints((tmp_path / "ca-bundle.crt").read_bytes()) == fingerprints(new_ca)  # the expired CA is gone


def test_rotate_issues_a_missing_leaf_for_the_named_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create(tmp_path)
    (tmp_path / "tls.crt").unlink()
    (tmp_path / "tls.key").unlink()
    assert main(["certs", "rotate", "--dir", str(tmp_path)]) == 1
    assert "tls.crt: missing, so pass --service and --namespace" in capsys.readouterr().err
    assert main(["certs", "rotate", "--dir", str(tmp_path), "--service", "hook", "--namespace", "gpu"]) == 0
    assert sans((tmp_path / "tls.crt").read_bytes()) == service_dns_names("hook", "gpu")


def test_rotate_errors_change_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create(tmp_path)
    garbage = tmp_path.parent / "garbage.txt"
    garbage.write_text("not a bundle")
    before = snapshot(tmp_path)
    cases = [
        (["--now", "2030-01-01"], "invalid --now '2030-01-01': give a UTC offset"),
        (["--now", "tomorrow"], "invalid --now 'tomorrow'"),
        (["--renew-before-days", "-1"], "invalid --renew-before-days -1"),
        (["--published-bundle", str(garbage)], f"--published-bundle {garbage}: neither PEM"),
        (["--published-bundle", str(tmp_path.parent / "absent.pem")], "absent.pem: missing"),
        (["--service", "UPPER"], "invalid service 'UPPER'"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(["certs", "rotate", "--dir", str(tmp_path), *args]) == 1, args
        captured = capsys.readouterr()
        assert message in captured.err, (args, captured.err)
        assert captured.out == ""
        assert snapshot(tmp_path) == before, args


def test_rotate_refuses_a_ca_key_that_does_not_match(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create(tmp_path / "a")
    create(tmp_path / "b")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    before = snapshot(tmp_path / "a")
    assert main(["certs", "rotate", "--dir", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'a' / 'ca.key'}" in err and "does not match" in err
    assert snapshot(tmp_path / "a") == before


def test_rotate_of_a_folder_that_is_not_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "rotate", "--dir", str(tmp_path / "nope")]) == 1
    assert "not a folder" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()


def test_rotate_replaces_an_unreadable_leaf_and_keeps_the_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    create(tmp_path)
    ca = (tmp_path / "ca.crt").read_bytes()
    (tmp_path / "tls.key").write_text("half-written")
    assert (
        main(["certs", "rotate", "--dir", str(tmp_path), "--service", "dra-bridge", "--namespace", "dra-bridge"]) == 0
    )
    assert "issuing a new leaf" in capsys.readouterr().err
    assert (tmp_path / "ca.crt").read_bytes() == ca
    stored = load_pair(tmp_path)
    assert issued_by(stored.serving.cert_pem, ca)


def test_certs_needs_an_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["certs"])
    assert exit_info.value.code == 2
    assert "ACTION" in capsys.readouterr().err
