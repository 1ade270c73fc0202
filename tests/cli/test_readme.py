"""Every ``dra-bridge`` command in README.md and deploy/README.md runs as written.

The fenced shell blocks (and ``$ dra-bridge ...`` lines of sample outputs) are parsed; each
``dra-bridge`` command in them, including those inside pipelines, is run in-process through
``webhook.cli.main`` in a scratch copy of the repository's layout (``policies/`` and ``tests/``
linked), after a real ``serve --dev`` (a subprocess, as a newcomer starts it) has answered the
Quick start's ``curl`` commands. Deviations from "as written", and only these: the dev server
listens on a free port instead of 8443; ``audit --follow`` gets ``--follow-timeout``; stdin and
``<(live)`` that come from ``kubectl`` in a real cluster come from ``deploy/base/webhooks.yaml``;
commands that read a cluster are run without one and must fail with one line, not a traceback.
A command no case below knows fails the test, so the README cannot grow a command nobody runs.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT
from webhook.cli import main

READMES = (ROOT / "README.md", ROOT / "deploy" / "README.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Command:
    readme: str
    line: str  # the dra-bridge segment as written
    argv: tuple[str, ...]  # after "dra-bridge"
    stdin_from_cluster: bool  # something (kubectl) pipes into it

    @property
    def id(self) -> str:
        return f"{self.readme}: dra-bridge {' '.join(self.argv)}"


def fenced_blocks(text: str) -> Iterator[tuple[str, str]]:
    for match in FENCE.finditer(text):
        yield match.group(1), match.group(2)


def logical_lines(body: str) -> Iterator[str]:
    """Lines with backslash continuations joined and trailing comments (two spaces, #) dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    for line in joined.splitlines():
        line = re.sub(r"\s{2,}#.*$", "", line).strip()
        if line and not line.startswith("#"):
            yield line


def readme_commands() -> list[Command]:
    commands = []
    for readme in READMES:
        name = str(readme.relative_to(ROOT))
        for lang, body in fenced_blocks(readme.read_text(encoding="utf-8")):
            for line in logical_lines(body):
                if lang == "" and not line.startswith("$ "):
                    continue  # sample output
                if lang not in ("sh", "bash", "") or line.startswith("live() {"):
                    continue
                line = line.removeprefix("$ ")
                segments = [s.strip() for s in re.split(r"\s*(?:\|\s*|&&\s*)", line)]
                for position, segment in enumerate(segments):
                    words = segment.split(maxsplit=1)
                    if words and words[0] in ("dra-bridge", ".venv/bin/dra-bridge"):
                        argv = tuple(shlex.split(segment.replace("<(live)", "LIVE")))[1:]
                        commands.append(Command(name, segment, argv, stdin_from_cluster=position > 0))
    return commands


COMMANDS = readme_commands()


def test_the_readmes_have_commands_to_test() -> None:
    """The parser still finds what newcomers type (a parser that finds nothing would pass anything)."""
    found = {c.argv[:2] for c in COMMANDS}
    assert ("serve", "--dev") in found
    assert {("audit", "--summary"), ("policy", "check"), ("policy", "usage"), ("certs", "create")} <= found
    assert any(c.argv[0] == "report" and "--out" in c.argv for c in COMMANDS)
    assert any(c.argv[:2] == ("certs", "rotate") and "LIVE" in c.argv for c in COMMANDS)


# -- a scratch checkout with a dev server ----------------------------------------------------------
@dataclass
class DevServer:
    home: Path
    port: int
    answers: dict[str, dict[str, Any]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _quick_start_curls() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [
        line
        for lang, body in fenced_blocks(text)
        if lang == "sh"
        for line in logical_lines(body)
        if line.startswith("curl ")
    ]


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    home = tmp_path_factory.mktemp("checkout")
    for name in ("policies", "tests", "deploy"):
        (home / name).symlink_to(ROOT / name)
    port = _free_port()
    log = (home / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "webhook", "serve", "--dev", "--port", str(port)],
        cwd=home,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("DRA_BRIDGE_")},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (home / "serve.log").read_text()
            try:
                context = ssl.create_default_context(cafile=str(home / "certs" / "dev" / "ca.crt"))
                if httpx.get(f"https://localhost:{port}/readyz", verify=context, timeout=2).status_code == 200:
                    break
            except (OSError, httpx.HTTPError, ssl.SSLError):
                pass
            assert time.monotonic() < deadline, "serve --dev did not become ready:\n" + (home / "serve.log").read_text()
            time.sleep(0.2)
        answers = {}
        assert shutil.which("curl"), "the Quick start uses curl"
        for curl in _quick_start_curls():
            out = subprocess.run(
                ["bash", "-c", curl.replace("localhost:8443", f"localhost:{port}")],
                cwd=home,
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            answers[curl.split()[4].rsplit("/", 1)[1]] = json.loads(out)
        yield DevServer(home=home, port=port, answers=answers)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_the_quick_start_answers_are_as_shown(dev_server: DevServer) -> None:
    mutate = dev_server.answers["mutate"]["response"]
    assert mutate["allowed"] is True and mutate["patchType"] == "JSONPatch"
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = next(body for lang, body in fenced_blocks(text) if lang == "json")
    expected = json.loads(shown.replace(", ...}", "}"))  # abridged in the README
    validate = dev_server.answers["validate"]["response"]
    assert {k: validate[k] for k in expected} == expected


# -- every command --------------------------------------------------------------------------------
@dataclass
class Ran:
    code: int
    out: str
    err: str


def run(argv: list[str], *, cwd: Path, stdin: str = "", monkeypatch: pytest.MonkeyPatch) -> Ran:
    """``dra-bridge argv`` in-process, in ``cwd``, with the shell's glob expansion."""
    expanded: list[str] = []
    for word in argv:
        matches = sorted(glob.glob(word, root_dir=cwd)) if any(ch in word for ch in "*?[") else []
        expanded.extend(matches or [word])
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        patch.setattr(sys, "stdout", out)
        patch.setattr(sys, "stderr", err)
        try:
            code = main(expanded)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return Ran(code, out.getvalue(), err.getvalue())


def webhook_configurations() -> str:
    """What ``kubectl get mutatingwebhookconfiguration/... validatingwebhookconfiguration/... -o yaml`` gives."""
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "base" / "webhooks.yaml").read_text()) if d]
    return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs})


def ensure_certs(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (home / "dra-bridge-certs" / "ca.crt").exists():
        assert run(["certs", "create", "--out", "./dra-bridge-certs"], cwd=home, monkeypatch=monkeypatch).code == 0


def sample_rows(command: Command) -> list[list[str]]:
    """The rows a README shows under ``$ dra-bridge ...`` (lines with ``...`` abridged)."""
    text = (ROOT / command.readme).read_text(encoding="utf-8")
    for lang, body in fenced_blocks(text):
        lines = body.splitlines()
        if lang == "" and lines and lines[0] == f"$ {command.line}":
            return [re.split(r"\s{2,}", line.strip()) for line in lines[1:] if line.strip() != "..."]
    raise AssertionError(f"no sample output under {command.line}")


def matches(sample: list[str], row: list[str]) -> bool:
    if len(sample) != len(row):
        return False
    return all(
        r.startswith(s[:-3].rstrip(", ")) if s.endswith("...") else r == s for s, r in zip(sample, row, strict=True)
    )


NEEDS_A_CLUSTER = {("policy", "usage"): "--dev", ("report", "--cluster"): None}


@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_readme_command_runs_as_written(
    command: Command, dev_server: DevServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    argv, home = list(command.argv), dev_server.home
    monkeypatch.delenv("DRA_BRIDGE_AUDIT_FILE", raising=False)
    from webhook.cli import audit as audit_cli

    monkeypatch.setattr(audit_cli, "DEFAULT_FILE", str(tmp_path / "no-deployed-log" / "audit.log"))
    kind = tuple(argv[:2])

    if argv[0] == "serve":
        assert argv == ["serve", "--dev"]
        assert (home / "certs" / "dev" / "tls.crt").is_file() and (home / ".dra-bridge" / "audit.log").is_file()
        return

    if kind in NEEDS_A_CLUSTER and (NEEDS_A_CLUSTER[kind] is None or NEEDS_A_CLUSTER[kind] not in argv):
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        ran = run(argv, cwd=home, monkeypatch=monkeypatch)
        assert ran.code == 1 and "Traceback" not in ran.err
        assert ran.err.count("\n") == 1 and ran.err.startswith("dra-bridge: no Kubernetes credentials"), ran.err
        return

    if argv[0] == "audit":
        if "--follow" in argv:
            argv += ["--follow-timeout", "0.5"]
        ran = run(argv, cwd=home, monkeypatch=monkeypatch)
        assert ran.code == 0, ran.err
        if "--summary" in argv:
            assert re.search(r"^\d+ record\(s\)$", ran.out, re.M) and "namespace:default" in ran.out, ran.out
            assert "quota-exceeded=1" in ran.out, ran.out  # the Quick start's denial
        elif "--follow" in argv or ("--namespace" not in argv and "--tenant" not in argv):
            assert "quota-exceeded" in ran.out, ran.out
        return

    if argv[0] == "certs":
        stdin = webhook_configurations() if command.stdin_from_cluster or "-" in argv else ""
        if argv[1] == "create":
            shutil.rmtree(home / "dra-bridge-certs", ignore_errors=True)
        else:
            ensure_certs(home, monkeypatch)
        if "LIVE" in argv:  # <(live): the configurations as the cluster publishes them after `certs patch`
            patched = run(
                ["certs", "patch", "--dir", "./dra-bridge-certs", "-f", "-"],
                cwd=home,
                stdin=webhook_configurations(),
                monkeypatch=monkeypatch,
            )
            assert patched.code == 0, patched.err
            (home / "live.yaml").write_text(patched.out)
            argv[argv.index("LIVE")] = "live.yaml"
        ran = run(argv, cwd=home, stdin=stdin, monkeypatch=monkeypatch)
        assert ran.code == 0, ran.err
        if "--secret" in argv:
            assert yaml.safe_load(ran.out)["kind"] == "Secret"
        if argv[1] == "patch":
            items = list(yaml.safe_load_all(ran.out))
            hooks = [h for doc in items for item in doc.get("items", [doc]) for h in item["webhooks"]]
            assert hooks and all(h["clientConfig"]["caBundle"] for h in hooks)
        if argv[1] == "rotate":
            assert "phase steady" in ran.err, ran.err
        if argv[1] == "ca-bundle":
            assert ran.out.strip()
        return

    ran = run(argv, cwd=home, monkeypatch=monkeypatch)
    assert ran.code == 0, ran.err
    if argv[0] == "convert":
        assert "kind: ResourceClaimTemplate" in ran.out
    elif argv[0] == "policy" and argv[1] == "check":
        assert ran.out.startswith("ok: ")
    elif argv[0] == "policy" and argv[1] == "usage":
        assert ran.out.startswith("TENANT") and "research" in ran.out
    elif argv[0] == "report" and "--out" in argv:
        page = home / argv[argv.index("--out") + 1]
        assert page.read_text().startswith("<!doctype html>") and "Deployment/llm-finetune" in page.read_text()
    elif argv[0] == "report":
        rows = [re.split(r"\s{2,}", line.strip()) for line in ran.out.splitlines()]
        for sample in sample_rows(command):
            assert any(matches(sample, row) for row in rows), f"README row not in the output: {sample}\n{ran.out}"
    else:
        pytest.fail(f"no case in this test runs the README command `{command.line}`: add one")


def commands_table() -> list[tuple[str, list[str]]]:
    """The Commands section's table: each synopsis's command path and the options it names."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("\n## Commands\n") :]
    section = section[: section.index("\n## ", 1)]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.replace("\\|", "\0").split("|")[1].replace("\0", "|")
        previous = ""
        for synopsis in re.findall(r"`([^`]+)`", cell):
            words = synopsis.split()
            if words[0] == "dra-bridge":
                words = words[1:]
            elif previous:
                words = [previous, *words[1:]] if words[0] == previous else words
            nested = words[0] in ("policy", "certs") and re.fullmatch(r"[a-z-]+", words[1])
            path = words[:2] if nested else words[:1]
            previous = path[0]
            rows.append((" ".join(path), re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", synopsis)))
    return rows


def test_the_commands_table_names_only_real_options(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = commands_table()
    assert {path.split()[0] for path, _ in rows} >= {"serve", "convert", "deviceclasses", "policy", "audit", "report"}
    monkeypatch.setenv("COLUMNS", "1000")
    for path, options in rows:
        out = io.StringIO()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "stdout", out)
            with pytest.raises(SystemExit):
                main([*path.split(), "--help"])
        for option in options:
            assert re.search(rf"(^|[\s\[,]){re.escape(option)}\b", out.getvalue()), f"dra-bridge {path}: no {option}"
