"""What a newcomer types in the first hour: defaults that find what the dev server wrote, one-line
errors instead of tracebacks, no abbreviated options, every ``--help`` saying what it reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import POLICIES, ROOT
from webhook.cli import audit as audit_cli
from webhook.cli import build_parser, main

MANIFESTS = ROOT / "tests" / "fixtures" / "manifests"
CLAIMS = """\
apiVersion: v1
kind: Namespace
metadata: {name: ml-research}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: two, namespace: ml-research}
spec:
  devices:
    requests:
    - name: gpu
      exactly: {deviceClassName: whole.nvidia.dra-bridge.io, count: 2}
"""


def subcommands() -> list[list[str]]:
    """Every command path of the parser: ["serve"], ["policy", "check"], ..."""
    paths: list[list[str]] = []

    def walk(parser: object, prefix: list[str]) -> None:
        for action in getattr(parser, "_actions", []):
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):
                for name, sub in choices.items():
                    paths.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return paths


@pytest.fixture
def no_kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    missing = tmp_path / "no-such-kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return missing


# -- no abbreviations ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", subcommands(), ids=" ".join)
def test_no_command_accepts_an_abbreviated_option(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    node = parser
    for name in path:
        node = next(a for a in node._actions if isinstance(getattr(a, "choices", None), dict)).choices[name]
    assert node.allow_abbrev is False, path


def test_report_out_is_not_read_as_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["report", "-f", str(MANIFESTS), "--outp", str(tmp_path / "x")])
    assert "unrecognized arguments: --outp" in capsys.readouterr().err


def test_report_writes_the_html_page_to_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "report.html"
    assert main(["report", "-f", str(MANIFESTS), "--policies", str(POLICIES), "--out", str(page)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"wrote the html report to {page}" in captured.err
    text = page.read_text()
    assert text.startswith("<!doctype html>") and "Deployment/llm-finetune" in text
    as_json = tmp_path / "report.txt"
    assert main(["report", "-f", str(MANIFESTS), "-o", "json", "--out", str(as_json)]) == 0
    assert json.loads(as_json.read_text())


# -- report: the policies of ./policies by default ------------------------------------------------
def test_report_from_files_uses_the_policies_folder_by_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["report", "-f", str(MANIFESTS), "-o", "json"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert main(["report", "-f", str(MANIFESTS), "--policies", "policies", "-o", "json"]) == 0
    explicit = json.loads(capsys.readouterr().out)
    assert default == explicit
    tenants = {w["tenant"] for w in default["workloads"]}
    assert "research" in tenants and "-" not in tenants, tenants


# -- policy check on a whole folder ----------------------------------------------------------------
def test_policy_check_takes_the_catalogue_in_the_same_folder(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    files = sorted(str(p.relative_to(ROOT)) for p in POLICIES.glob("*.yaml"))
    assert "policies/catalogue.yaml" in files
    assert main(["policy", "check", *files]) == 0
    out = capsys.readouterr().out
    assert "ok: 1 catalogue file(s)" in out and "ok: 1 file(s), 2 tenant(s)" in out


def test_policy_check_reports_a_broken_catalogue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "catalogue-extra.yaml"
    broken.write_text(
        "apiVersion: dra-bridge.io/v1alpha1\nkind: TranslationCatalogue\n"
        "sources: [{name: x, resources: [{name: x.com/gpu, meaning: gpus}]}]\n"
    )
    assert main(["policy", "check", "--policies", str(POLICIES), str(broken)]) == 1
    assert "meaning" in capsys.readouterr().err


# -- no traceback without a cluster ---------------------------------------------------------------
@pytest.mark.parametrize(
    "argv", [["policy", "usage"], ["policy", "usage", "--tenant", "research"], ["report", "--cluster"]], ids=" ".join
)
def test_cluster_commands_without_kubeconfig_say_what_is_missing(argv: list[str], no_kubeconfig: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "webhook", *argv], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dra-bridge: no Kubernetes credentials")
    assert str(no_kubeconfig) in lines[0]


def test_policy_usage_without_a_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    claims = tmp_path / "claims.yaml"
    claims.write_text(CLAIMS)
    args = ["policy", "usage", "--dev", "--policies", str(POLICIES), "--tenant", "research", "-o", "json"]
    assert main([*args, "--claims", str(claims)]) == 0
    rows = {r["dimension"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["devices/whole.*.dra-bridge.io"]["used"] == "2"
    assert rows["memory"]["used"] == "160Gi" and rows["memory"]["limit"] == "640Gi"
    assert rows["claims"]["namespaces"] == "ml-research"
    assert main(args) == 0
    rows = {r["dimension"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["claims"]["used"] == "0" and rows["claims"]["limit"] == "40"


def test_claims_need_dev(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "usage", "--claims", "x.yaml"]) == 1
    assert "--claims needs --dev" in capsys.readouterr().err


# -- audit: reads what the dev server writes -------------------------------------------------------
def test_audit_reads_the_dev_log_when_no_deployed_log_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.cli.test_audit_cli import rec

    monkeypatch.delenv("DRA_BRIDGE_AUDIT_FILE", raising=False)
    monkeypatch.setattr(audit_cli, "DEFAULT_FILE", str(tmp_path / "var" / "audit.log"))
    monkeypatch.chdir(tmp_path)
    assert main(["audit", "--summary"]) == 1
    err = capsys.readouterr().err
    assert "no audit log at" in err and ".dra-bridge/audit.log" in err
    (tmp_path / ".dra-bridge").mkdir()
    (tmp_path / ".dra-bridge" / "audit.log").write_text(json.dumps(rec(1, 0)) + "\n")
    assert main(["audit", "--summary"]) == 0
    assert "1 record(s)" in capsys.readouterr().out
    deployed = tmp_path / "var" / "audit.log"  # a deployed server's log wins when both exist
    deployed.parent.mkdir()
    deployed.write_text(json.dumps(rec(1, 0)) + "\n" + json.dumps(rec(2, 1)) + "\n")
    assert main(["audit", "--summary"]) == 0
    assert "2 record(s)" in capsys.readouterr().out


# -- every --help says what it reads ---------------------------------------------------------------
READS = {
    ("serve",): ["DRA_BRIDGE_", "./policies"],
    ("convert",): ["./policies", "stdin"],
    ("deviceclasses",): ["./policies"],
    ("policy", "check"): ["./policies", "files"],
    ("policy", "usage"): ["kubeconfig", "--dev", "./policies"],
    ("audit",): ["DRA_BRIDGE_AUDIT_FILE", "/var/log/dra-bridge/audit.log", ".dra-bridge/audit.log"],
    ("report",): ["kubeconfig", "./policies"],
    ("certs", "create"): ["--out"],
    ("certs", "ca-bundle"): ["--dir"],
    ("certs", "patch"): ["stdin"],
    ("certs", "rotate"): ["--published-bundle"],
}


def test_every_command_has_a_help_entry() -> None:
    leaves = {tuple(p) for p in subcommands() if not any(q[: len(p)] == p and len(q) > len(p) for q in subcommands())}
    assert leaves == set(READS)


@pytest.mark.parametrize("path", sorted(READS), ids=" ".join)
def test_help_says_what_the_command_reads_by_default(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at hyphens: keep paths whole
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in READS[path]:
        assert needle in text, f"`dra-bridge {' '.join(path)} --help` does not mention {needle!r}"


def test_outside_the_checkout_the_shipped_policies_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./policies here
    assert main(["convert", "-f", str(MANIFESTS / "01-nvidia-training-deployment.yaml")]) == 0
    assert "resourceClaimTemplateName" in capsys.readouterr().out
